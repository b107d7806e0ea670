"""`videolm compare`: the autoregressive LM against the DiT baseline, on the same held-out clips.

Both systems get the same conditions (the captions of held-out Shapes clips for ``t2v``, their
first 9 frames for ``extend``) and the same per-clip seeds; both decode through the same video
decoder and, unless ``refine`` is off, go through the same refiner. Each is scored with
`videolm eval`'s own metric code (each task's `score`): probe attribute accuracy,
``fd_probe`` and, for ``extend``, PSNR/SSIM against the truth beside the copy-last-frame baseline.
Beside quality: wall-clock seconds per clip (batches of ``batch_size``, generation + decode +
refine), network evaluations per clip (AR: one forward per output token, two with guidance;
DiT: one per sampling step, two with guidance), parameters and training compute as each model's
folder records it.

Writes ``OUT/results.json``, ``OUT/report.md`` (a table per task naming the winner of each
metric), ``OUT/quality_vs_time.png``, ``OUT/attributes.png`` and ``OUT/samples_<task>.png``
(truth, AR and DiT rows side by side).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from videolm.core.config import check_range
from videolm.core.errors import UsageError
from videolm.core.outputs import atomic_output_dir
from videolm.data.media import write_grid
from videolm.data.shapes import ATTRIBUTES
from videolm.evaluation.probe import load_probe
from videolm.evaluation.scoring import Scorer
from videolm.tasks.base import Media
from videolm.evaluation.evaluate import held_out_clips
from videolm.tasks.pipeline import Pipeline, check_frames, check_size

TASKS = ("t2v", "extend")  # what the DiT baseline supports
SYSTEMS = ("ar", "dit")
LABELS = {"ar": "AR prefix LM", "dit": "DiT baseline"}
# metric -> True when higher is better
DIRECTION = {**{a: True for a in ATTRIBUTES}, "attribute_mean": True, "fd_probe": False, "psnr": True,
             "psnr_pooled": True, "ssim": True, "seconds_per_clip": False, "evaluations_per_clip": False}
SAMPLE_FRAMES = (0, 4, 8, 12, 16)  # the frames each row of a sample grid shows


@dataclass
class CompareConfig:
    model: str = "shapes-64"  # a model folder with lm/ and dit/
    tasks: tuple[str, ...] = field(default=TASKS, metadata={"comma": True})  # t2v, extend
    num: int = 64  # held-out clips per task
    seed: int = 0  # offset among the held-out seeds; clip i is drawn with seed + i by both systems
    batch_size: int = 16  # clips generated at once
    cfg_scale: float | None = None  # the AR model's guidance (t2v; None: its generation_config.json)
    dit_cfg_scale: float | None = None  # the DiT's guidance (None: its own default)
    dit_steps: int | None = None  # the DiT's sampling steps (None: its own default)
    refine: bool | None = None  # both systems' frames through the refiner (default: when the model folder has one)
    samples: int = 4  # clips per task in the sample grid
    size: str | None = None  # frame size HxW of the held-out clips (default: the model's); both systems make it
    frames: int | None = None  # their length, 1 + 4k (default: the model's)

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        check_size(self.size)
        check_frames(self.frames)
        check_range(self, 1, None, "num", "batch_size", "samples")
        check_range(self, 1, 10_000, "dit_steps")
        check_range(self, 0, 2**63 - 1, "seed")
        check_range(self, 0, 100, "cfg_scale", "dit_cfg_scale")


def compare(cfg: CompareConfig, progress: Callable[[str, int], object] | None = None) -> dict:
    start = time.perf_counter()
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"--tasks {','.join(unknown)}: compare runs {', '.join(TASKS)} (what the DiT supports)")
    if cfg.num < 2:
        raise UsageError(f"--num {cfg.num}: need at least 2 clips (the Fréchet distance needs a spread)")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size {cfg.batch_size} must be >= 1")
    pipe = Pipeline.from_pretrained(cfg.model)
    if cfg.refine and pipe.refiner is None:
        raise UsageError(f"--refine: {pipe.folder} has no refiner")
    dit = pipe.dit_backend()  # fails early, with a clear line, when the folder has no DiT
    refine = cfg.refine is not False and pipe.refiner is not None
    for name in cfg.tasks:
        pipe.task(name)
    cfg = replace(cfg, cfg_scale=pipe.guidance() if cfg.cfg_scale is None else cfg.cfg_scale)
    probe = load_probe(pipe.folder)
    plan, clips = held_out_clips(pipe, pipe.task(cfg.tasks[0]), cfg.size, cfg.frames, cfg.num, cfg.seed)
    samples = []
    for i in range(0, cfg.num, cfg.batch_size):
        samples += pipe.tokenizer.encode(clips[i:i + cfg.batch_size])
    scorer = Scorer(probe, clips, samples, pipe.tokenizer)

    results: dict = {"tasks": {}, "videos": {}}
    for name in cfg.tasks:
        task = pipe.task(name)
        made = {s: [] for s in SYSTEMS}
        seconds = {s: 0.0 for s in SYSTEMS}
        refine_seconds = {s: 0.0 for s in SYSTEMS}
        evaluations = {}
        for i in range(0, cfg.num, cfg.batch_size):
            batch, items = samples[i:i + cfg.batch_size], clips[i:i + cfg.batch_size]
            seeds = [cfg.seed + i + k for k in range(len(batch))]
            # the AR model: one batch drawn with generator seed (its sampler is batched, like `videolm eval`)
            t0 = time.perf_counter()
            codes = pipe.codes(task, batch, seed=cfg.seed + i, cfg_scale=cfg.cfg_scale)
            videos = np.stack([task.to_media(c, s, pipe.tokenizer).video for c, s in zip(codes, batch)])
            t1 = time.perf_counter()
            if refine:
                videos = pipe.refine(videos, seed=cfg.seed + i)
            t2 = time.perf_counter()
            made["ar"].append(videos)
            seconds["ar"] += t2 - t0
            refine_seconds["ar"] += t2 - t1
            guided = task.uses_text and cfg.cfg_scale != 1
            evaluations["ar"] = (int(codes[0].numel()) + 1) * (2 if guided else 1)  # output ids + the end token
            # the DiT: the same conditions, one seed per clip
            t0 = time.perf_counter()
            prompts = [c["caption"] for c in items] if name == "t2v" else None
            context = np.stack([c["video"] for c in items]) if name == "extend" else None
            videos, evaluations["dit"] = dit.generate(name, prompts=prompts, videos=context, seeds=seeds,
                                                      steps=cfg.dit_steps, cfg_scale=cfg.dit_cfg_scale,
                                                      size=(plan.height, plan.width), frames=plan.frames)
            t1 = time.perf_counter()
            if refine:
                videos = pipe.refine(videos, seed=cfg.seed + i)
            t2 = time.perf_counter()
            made["dit"].append(videos)
            seconds["dit"] += t2 - t0
            refine_seconds["dit"] += t2 - t1
            if progress:
                progress(name, len(batch))
        block = {}
        for system in SYSTEMS:
            videos = np.concatenate(made[system])
            metrics = task.score([Media(video=v) for v in videos], scorer)
            attrs = [metrics[a] for a in ATTRIBUTES if a in metrics]
            metrics["attribute_mean"] = round(float(np.mean(attrs)), 4) if attrs else None
            metrics["seconds_per_clip"] = round(seconds[system] / cfg.num, 4)
            metrics["refine_seconds_per_clip"] = round(refine_seconds[system] / cfg.num, 4)
            metrics["evaluations_per_clip"] = evaluations[system]
            block[system] = metrics
            results["videos"][(name, system)] = videos[:cfg.samples]
        block["winner"] = winners(block["ar"], block["dit"])
        results["tasks"][name] = block
    videos = results.pop("videos")
    results.update({
        "model": str(pipe.folder), "num": cfg.num, "size": plan.name, "frames": plan.frames, "config": asdict(cfg),
        "refined": refine,
        "systems": {"ar": pipe.describe_lm(), "dit": dit.describe()},
        "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
    })
    results["_truth"] = {name: np.stack([c["video"] for c in clips[:cfg.samples]]) for name in cfg.tasks}
    results["_videos"] = videos
    return results


def winners(ar: dict, dit: dict) -> dict:
    """metric -> "ar", "dit" or "tie", for every metric both have and whose better direction is known."""
    out = {}
    for metric, higher in DIRECTION.items():
        a, b = ar.get(metric), dit.get(metric)
        if a is None or b is None:
            continue
        out[metric] = "tie" if a == b else ("ar" if (a > b) == higher else "dit")
    return out


def write_report(results: dict, out: str | Path, overwrite: bool = False) -> Path:
    """results.json, report.md, the plots and the sample grids, into ``out`` (all or nothing)."""
    truth, videos = results.pop("_truth"), results.pop("_videos")
    with atomic_output_dir(out, overwrite=overwrite, command="compare") as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(report_markdown(results))
        _plot_quality_vs_time(results, tmp / "quality_vs_time.png")
        _plot_attributes(results, tmp / "attributes.png")
        for name in results["tasks"]:
            _sample_grid(truth[name], videos[(name, "ar")], videos[(name, "dit")], tmp / f"samples_{name}.png")
    return Path(out)


def report_markdown(results: dict) -> str:
    systems = results["systems"]
    lines = ["# AR prefix LM vs. DiT baseline", "",
             f"{results['num']} held-out Shapes clips per task (seeds from 1,000,000 + {results['config']['seed']}), "
             f"the same conditions and seeds for both; frames {'refined' if results['refined'] else 'not refined'}; "
             f"{results['threads']} CPU thread{'s' if results['threads'] != 1 else ''}; the whole comparison took {results['seconds']} s.", "",
             "| | AR prefix LM | DiT baseline |", "|---|---|---|"]
    for key, label in (("params_m", "parameters (M)"), ("training", "training compute"), ("sampler", "sampler")):
        lines.append(f"| {label} | {_describe(systems['ar'].get(key))} | {_describe(systems['dit'].get(key))} |")
    for name, block in results["tasks"].items():
        lines += ["", f"## {name}", "", "| metric | AR prefix LM | DiT baseline | better |", "|---|---|---|---|"]
        for metric, higher in DIRECTION.items():
            if metric not in block["winner"]:
                continue
            win = block["winner"][metric]
            lines.append(f"| {metric} ({'higher' if higher else 'lower'} is better) | {block['ar'][metric]} | "
                         f"{block['dit'][metric]} | {'tie' if win == 'tie' else LABELS[win]} |")
        for key, label in (("baseline_psnr", "PSNR"), ("baseline_psnr_pooled", "pooled PSNR")):
            if key in block["ar"]:
                lines.append(f"| copy-last-frame {label} (reference) | {block['ar'][key]} | {block['dit'][key]} | |")
        wins = {s: sum(w == s for w in block["winner"].values()) for s in SYSTEMS}
        lines += ["", f"**{name}: the AR prefix LM wins {wins['ar']} of {len(block['winner'])} metrics, "
                  f"the DiT baseline {wins['dit']}.**"]
    return "\n".join(lines) + "\n"


COMPUTE_KEYS = ("steps", "minutes", "device", "threads", "core_hours", "gpu_hours")


def _describe(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {value[k]}" for k in COMPUTE_KEYS if k in value) or "—"
    return "—" if value is None else str(value)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_quality_vs_time(results: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for system, marker in zip(SYSTEMS, "os"):
        for name, block in results["tasks"].items():
            m = block[system]
            ax.scatter(m["seconds_per_clip"], m["attribute_mean"], marker=marker, s=60,
                       label=f"{LABELS[system]} · {name}")
            ax.annotate(name, (m["seconds_per_clip"], m["attribute_mean"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("wall-clock seconds per clip (log)")
    ax.set_ylabel("mean probe attribute accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_attributes(results: dict, path: Path) -> None:
    plt = _plt()
    names = list(results["tasks"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        block = results["tasks"][name]
        attrs = [a for a in ATTRIBUTES if a in block["ar"]]
        x = np.arange(len(attrs))
        for k, system in enumerate(SYSTEMS):
            ax.bar(x + (k - 0.5) * 0.38, [block[system][a] for a in attrs], 0.38, label=LABELS[system])
        ax.set_xticks(x, attrs)
        ax.set_ylim(0, 1.05)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("probe accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sample_grid(truth: np.ndarray, ar: np.ndarray, dit: np.ndarray, path: Path) -> None:
    """Per clip three rows (truth, AR, DiT), frames 0, 4, 8, 12, 16 left to right."""
    frames = [f for f in SAMPLE_FRAMES if f < truth.shape[1]]
    rows = [r[:, frames] for clip in zip(truth, ar, dit) for r in (np.stack(clip),)]
    write_grid(path, np.concatenate(rows))


__all__ = ["CompareConfig", "compare", "report_markdown", "winners", "write_report"]
