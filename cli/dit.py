"""`videolm dit ...`: the command line of the DiT baseline (light to import: the work is imported
only when a command runs)."""

from __future__ import annotations


def _dit_fit(args) -> int:
    from videolm.train.dit import run_fit
    from videolm.cli.main import fit_config
    from videolm.cli.args import progress

    cfg = fit_config(args, "dit fit")
    bar = progress(cfg.data.num, "encode")

    def encoded(n: int) -> None:  # the bar goes once the clips are encoded; training has its own
        bar.update(n)
        if bar.n >= bar.total:
            bar.close()

    try:
        model_dir = run_fit(cfg, progress=encoded)
    finally:
        bar.close()
    print(f"trained DiT saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


def add_dit(sub) -> None:
    from videolm.cli.main import _fit_args

    dit = sub.add_parser("dit", help="train the diffusion transformer baseline",
                         description="Train the Sora-style DiT baseline (latent diffusion over spacetime patches).")
    dit_sub = dit.add_subparsers(dest="dit_command", metavar="{fit}", required=True)
    p = dit_sub.add_parser(
        "fit", help="train the DiT from a YAML config (resumes a stopped run)",
        description="Train the DiT a config describes (configs/dit/*.yaml) on Shapes clips, encoded once into "
        "latents cached in OUT/latents/. The run folder gets checkpoints/last.ckpt (a rerun resumes from it), "
        "metrics.jsonl and model/ (safetensors, text.model, training.json with the compute spent). "
        "Flags override the config.",
    )
    _fit_args(p, "dit fit")
    p.set_defaults(run=_dit_fit)


__all__ = ["add_dit"]
