"""`videolm probe fit`: the probe classifier that evaluation reads clips with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from videolm.cli.args import Command, progress
from videolm.core.config import check_range
from videolm.core.outputs import check_output_dir
from videolm.train.probe import fit_probe


@dataclass
class ProbeFitArgs:
    out: str  # probe folder to write (new or empty, or an earlier output of videolm with --overwrite)
    num: int = 100_000  # training seeds to draw clips from
    steps: int = 2000  # training steps
    batch_size: int = 32  # clips per step
    seed: int = 0  # first training seed and random seed
    lr: float = 3e-3  # peak learning rate
    threads: int = 1  # CPU threads for torch
    preset: Literal["default", "debug"] = "default"  # probe size
    eval_num: int = 512  # held-out clips to measure on
    overwrite: bool = False  # replace an earlier output of videolm in --out

    def __post_init__(self):
        check_range(self, 1, None, "num", "steps", "batch_size", "threads", "eval_num")
        check_range(self, 0, 2**63 - 1, "seed")
        check_range(self, 0, 10, "lr", low_open=True)


def run(args: ProbeFitArgs) -> int:
    check_output_dir(args.out, args.overwrite)
    with progress(args.steps, "probe fit", unit="step") as bar:
        metrics = fit_probe(args.out, num_clips=args.num, steps=args.steps, batch_size=args.batch_size,
                            seed=args.seed, threads=args.threads, preset=args.preset, eval_clips=args.eval_num,
                            lr=args.lr, overwrite=args.overwrite, progress=bar.update)
    print(json.dumps(metrics))
    return 0


COMMANDS = {
    "fit": Command(ProbeFitArgs, run, "train a probe on ground-truth Shapes clips",
                   "Train the probe (shape, color, size, direction of each object; background) on ground-truth Shapes "
                   "training clips, measure it on held-out clips, and write it (safetensors + JSON, metrics.json) to "
                   "--out."),
}
