"""`videolm dit fit`: the Sora-style DiT baseline trained on the video tokenizer's latents."""

from __future__ import annotations

from videolm.cli.args import Command, progress
from videolm.core.training import starting_run
from videolm.train.dit import DiTFitConfig, run_fit


def run_fit_cmd(cfg: DiTFitConfig) -> int:
    bar = progress(cfg.data.num, "encode")

    def encoded(n: int) -> None:  # the bar goes once the clips are encoded; training has its own
        bar.update(n)
        if bar.n >= bar.total:
            bar.close()

    try:
        with starting_run(cfg, "dit fit"):
            model_dir = run_fit(cfg, progress=encoded)
    finally:
        bar.close()
    print(f"trained DiT saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


COMMANDS = {
    "fit": Command(DiTFitConfig, run_fit_cmd, "train the DiT from a YAML config (a rerun resumes it)",
                   "Train the DiT a config describes (configs/dit/*.yaml) on Shapes clips, encoded once into latents "
                   "cached in OUT/latents/. The run folder gets checkpoints/last.ckpt (a rerun resumes from it "
                   "exactly), metrics.jsonl and model/ (safetensors, text.model, training.json with the compute "
                   "spent). Flags override the config.", config="dit fit"),
}
