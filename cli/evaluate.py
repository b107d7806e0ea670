"""`videolm eval`: every task of a model scored on held-out Shapes clips, as one JSON object."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from videolm.cli.args import Command, progress
from videolm.core.errors import UsageError
from videolm.core.models import LM_DIR, generation_defaults, resolve_model
from videolm.core.outputs import check_output_file, write_atomic
from videolm.evaluation.evaluate import EvalConfig, check_same_settings, evaluate, paired_changes
from videolm.tasks.pipeline import check_size


@dataclass
class EvalArgs(EvalConfig):
    against: str | None = None  # also score this model (or read this earlier `eval --per-clip` JSON) on the same
    #   clips with the same sampling seeds, and add 'against': each figure's change with its paired standard error
    threads: int | None = None  # CPU threads for torch
    out: str | None = None  # also write the JSON to this file (a new file unless --overwrite)
    overwrite: bool = False  # replace --out if it exists


def run(args: EvalArgs) -> int:
    if args.out:
        check_output_file(args.out, args.overwrite, inputs=(args.against, args.model))
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {name: getattr(args, name) for name in EvalConfig.__dataclass_fields__}
    if fields["cfg_scale"] is None:  # the model's own, recorded as used (and matched against --against)
        fields["cfg_scale"] = float(generation_defaults(resolve_model(args.model) / LM_DIR).get("guidance_scale", 1.0))
    cfg = EvalConfig(**{**fields, "per_clip": args.per_clip or bool(args.against)})
    base = None
    if args.against and (Path(args.against).is_file() or Path(args.against).suffix == ".json"):
        base = _against(args.against, cfg)  # an earlier evaluation, checked now
    elif args.against:  # a model, checked before the first evaluation starts
        try:
            other = resolve_model(args.against)
        except UsageError as e:
            raise UsageError(str(e).replace("--model ", "--against ", 1)) from None
        if not (other / LM_DIR / "config.json").is_file():
            raise UsageError(f"--against {args.against}: has no language model ({LM_DIR}/config.json)")
    with progress(None, "eval") as bar:
        def score(c):
            return evaluate(c, progress=lambda name, n: (bar.set_description(f"eval {name}"), bar.update(n)))

        report = score(cfg)
        if args.against and base is None:
            bar.reset()
            base = score(replace(cfg, model=args.against, tasks=tuple(report["tasks"])))
    if base is not None:
        report["against"] = paired_changes(base, report)
    if not args.per_clip:
        for block in report["tasks"].values():
            block.pop("per_clip", None)
    text = json.dumps(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.out), text + "\n")
    print(text)
    return 0


def _against(path: str, cfg: EvalConfig) -> dict:
    """An earlier evaluation read back for --against, checked to hold what the comparison needs."""
    try:
        base = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--against {path}: cannot read it as an evaluation JSON ({e})") from None
    if not isinstance(base, dict) or not isinstance(base.get("tasks"), dict):
        raise UsageError(f"--against {path}: not the JSON `videolm eval` writes")
    missing = [n for n in (cfg.tasks or ()) if "per_clip" not in base["tasks"].get(n, {})]
    if missing or not any("per_clip" in b for b in base["tasks"].values()):
        raise UsageError(f"--against {path}: no per-clip records for {', '.join(missing) or 'any task'}; "
                         "write it with `videolm eval --per-clip --out FILE`")
    # before the evaluation runs, not after it: the settings this one will record
    check_same_settings(base, {"num": cfg.num, "seed": cfg.seed, "split": cfg.split, "refined": cfg.refine,
                               "sample_seed": cfg.seed if cfg.sample_seed is None else cfg.sample_seed,
                               "cfg_scale": cfg.cfg_scale, "temperature": cfg.temperature, "top_k": cfg.top_k,
                               "batch_size": cfg.batch_size, **({"size": "x".join(map(str, check_size(cfg.size)))} if cfg.size else {}),
                               **({"frames": cfg.frames} if cfg.frames else {})})
    return base


COMMAND = Command(
    EvalArgs, run, "score a model's tasks on held-out Shapes clips, as one JSON object",
    "Run each task on held-out Shapes clips (seeds >= 1,000,000) and print one JSON object with a metrics block per "
    "task: probe attribute accuracy and fd_probe (Frechet distance in the probe's features), PSNR/SSIM against the "
    "truth beside a copy baseline where the task has one, silhouette IoU and color for stylize, tone accuracy and "
    "bounce timing for v2a, and 'loss': the true output's mean loss per token, teacher-forced.")
