"""`videolm compare`: the AR model against the DiT baseline on the same prompts, conditions and seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videolm.cli.args import Command, progress
from videolm.core.outputs import check_output_dir
from videolm.evaluation.compare import CompareConfig, compare, write_report


@dataclass
class CompareArgs(CompareConfig):
    out: str = field(kw_only=True)  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    threads: int | None = None  # CPU threads for torch
    overwrite: bool = False  # replace an earlier output of videolm in --out


def run(args: CompareArgs) -> int:
    check_output_dir(args.out, args.overwrite, inputs=[args.model])
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CompareConfig(**{name: getattr(args, name) for name in CompareConfig.__dataclass_fields__})
    with progress(args.num * len(args.tasks), "compare") as bar:
        results = compare(cfg, progress=lambda name, n: (bar.set_description(f"compare {name}"), bar.update(n)))
    write_report(results, args.out, overwrite=args.overwrite)
    for name, block in results["tasks"].items():
        print(f"{name}: " + ", ".join(f"{m}: {w}" for m, w in block["winner"].items()))
    print(f"wrote {args.out}/results.json, report.md and plots ({results['seconds']} s)")
    return 0


COMMAND = Command(
    CompareArgs, run, "the AR model against the DiT baseline on the same prompts, conditions and seeds",
    "Run t2v and extend on held-out Shapes clips through the AR prefix LM and the DiT baseline of a model folder "
    "(the same captions, context frames and seeds; both refined unless --no-refine) and write DIR/results.json, "
    "DIR/report.md (which system wins each metric), quality_vs_time.png, attributes.png and samples_<task>.png.")
