"""`videolm lm fit | bundle`: the prefix LM trained on a task mixture, and put in a model folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from videolm.cli.args import Command, input_folder, print_json
from videolm.core.config import check_range
from videolm.core.training import starting_run
from videolm.train.lm import LMFitConfig, bundle_lm, run_fit


def run_fit_cmd(cfg: LMFitConfig) -> int:
    for shards in [cfg.data.shards] if isinstance(cfg.data.shards, str) else cfg.data.shards or []:
        input_folder(shards, "--shards")
    with starting_run(cfg, "lm fit"):
        model_dir = run_fit(cfg)
    if model_dir is not None:
        print(f"trained LM saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


@dataclass
class BundleArgs:
    lm: str  # the trained LM folder (RUN/model)
    out: str  # the model folder (e.g. models/shapes-64)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # how the weights are stored
    guidance_scale: float = 4.0  # the model's default classifier-free guidance for tasks with text (written to
    #   lm/generation_config.json; 4 was the best t2v direction of scales 2-6 for the shipped model, docs/tasks.md)

    def __post_init__(self):
        check_range(self, 0, 100, "guidance_scale")


def run_bundle(args: BundleArgs) -> int:
    input_folder(args.lm, "--lm")
    print_json(bundle_lm(args.lm, args.out, args.dtype, guidance_scale=args.guidance_scale))
    return 0


COMMANDS = {
    "fit": Command(LMFitConfig, run_fit_cmd, "train the LM on a task mixture from a YAML config (a rerun resumes it)",
                   "Train the LM a config describes (configs/lm/*.yaml) on token shards or clips tokenized on the "
                   "fly. The run folder gets checkpoints/last.ckpt (a rerun resumes from it exactly), metrics.jsonl "
                   "(loss per task, tokens/s), samples/ and model/ (safetensors + vocab.json). Flags override the "
                   "config.", config="lm fit"),
    "bundle": Command(BundleArgs, run_bundle, "put a trained LM into a model folder, for `videolm generate --model`",
                      "Copy a trained LM (RUN/model) into OUT/lm of a model folder that holds the tokenizers its "
                      "shards came from (weights stored as float16 by default), with its vocabulary."),
}
