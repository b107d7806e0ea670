"""`videolm eval`: every task of a model, run on held-out Shapes clips and scored.

For each task the held-out clips (seeds from 1,000,000 on) are tokenized with their views, the
task's condition is laid out from them exactly as in training, the output is generated in batches
and turned back into media by the task, and the task scores the media (`Task.score`, with the
measurements of `videolm.evaluation.scoring.Scorer`) against what the condition asked:

- attribute accuracy from the probe classifier (shape, color, size, direction of each object
  asked for; objects paired with the probe's by the best matching) and ``fd_probe``, the Fréchet
  distance between the probe's features of generated and of real clips (not FVD: the features
  are the probe's, trained on Shapes);
- PSNR/SSIM against the ground truth where the task has one, beside a copy baseline: ``extend``
  (new frames vs. the last given frame repeated), ``extend_back`` (vs. the first given frame
  repeated), ``interpolate`` (the frames between vs. the nearer given frame), ``inpaint`` and
  ``outpaint`` (the hidden region vs. leaving it black, the background), ``i2v`` (the first frame,
  and the rest vs. the image repeated). Each PSNR twice: the mean of per-clip values, and pooled
  (of the squared error over all clips: a copy baseline is exact on clips that stand still, and
  their ~148 dB swamps the per-clip mean);
- ``stylize``: silhouette IoU against the structure video, and the color of each silhouette
  against the caption; ``v2a``: tone accuracy from the spectrum and the bounce-click timing
  error; ``a2v``: the shapes the audio implies.

Prints one JSON object: ``{"model", "num", "tasks": {name: metrics}, "seconds"}``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from videolm.core.config import check_range
from videolm.core.errors import UsageError
from videolm.core.limits import check_held
from videolm.data.shapes import BACKGROUNDS, DIRECTIONS, PALETTE, SHAPES, SIZES, ShapesConfig
from videolm.data.shapes_data import ShapesDataset
from videolm.evaluation.probe import load_probe
from videolm.evaluation.scoring import Scorer
from videolm.lm.data import TaskBatch
from videolm.lm.engine import uses_grid
from videolm.lm.losses import held_out_losses
from videolm.lm.masks import pad
from videolm.tasks.base import Task, grid_layout
from videolm.tasks.pipeline import Pipeline, Plan, check_frames, check_size


@dataclass
class EvalConfig:
    model: str = "shapes-64"  # a model folder or a shipped name
    tasks: tuple[str, ...] = field(default=(), metadata={"comma": True})  # task names, or all (empty: every task
    #   the model knows)
    num: int = 128  # held-out clips per task
    seed: int = 0  # offset among the held-out seeds
    sample_seed: int | None = None  # seed of the first batch's sampling (None: `seed`); other values redraw the
    #   samples for the same clips, which shows how much a figure moves by chance alone
    batch_size: int = 16  # clips generated at once
    cfg_scale: float | None = None  # the LM's guidance for tasks with text (None: the model's
    #   generation_config.json)
    temperature: float = 1.0
    top_k: int | None = None
    refine: bool = False  # score the frames after the model folder's refiner (what `generate` gives)
    split: Literal["eval", "train"] = "eval"  # held-out clips; train: the training seeds, to set their loss beside
    #   the held-out one (how much the model has memorized)
    per_clip: bool = False  # keep each clip's [hits, count] per figure (what --against reads)
    size: str | None = None  # frame size HxW of the held-out clips (default: the model's)
    frames: int | None = None  # their length, 1 + 4k (default: the model's)

    def __post_init__(self):
        self.tasks = () if tuple(self.tasks) == ("all",) else tuple(self.tasks)
        check_range(self, 2, None, "num")
        check_range(self, 1, None, "batch_size", "top_k")
        check_range(self, 0, 2**63 - 1, "seed", "sample_seed")
        check_range(self, 0, 100, "cfg_scale", "temperature")
        check_size(self.size)
        check_frames(self.frames)


def evaluate(cfg: EvalConfig, progress: Callable[[str, int], object] | None = None) -> dict:
    start = time.perf_counter()
    if cfg.num < 2:
        raise UsageError(f"--num {cfg.num}: need at least 2 clips (the Fréchet distance needs a spread)")
    pipe = Pipeline.from_pretrained(cfg.model)
    if cfg.refine and pipe.refiner is None:
        raise UsageError(f"--refine: {pipe.folder} has no refiner")
    cfg = replace(cfg, cfg_scale=pipe.guidance() if cfg.cfg_scale is None else cfg.cfg_scale)
    names = list(cfg.tasks) or pipe.task_names
    for name in names:
        pipe.task(name)  # unknown tasks fail before any work
    probe = load_probe(pipe.folder)
    if cfg.split not in ("eval", "train"):
        raise UsageError(f"--split {cfg.split}: choose eval or train")
    tasks = [pipe.task(name) for name in names]
    plan, clips = held_out_clips(pipe, tasks[0], cfg.size, cfg.frames, cfg.num, cfg.seed, cfg.split)

    def views(clip: dict) -> dict:  # the videos fine-tuned tasks read besides the built-in views
        return {k: v for t in tasks for k, v in t.views(clip).items()}

    samples = []
    for i in range(0, cfg.num, cfg.batch_size):
        samples += pipe.tokenizer.encode(clips[i:i + cfg.batch_size], extra=views)
    scorer = Scorer(probe, clips, samples, pipe.tokenizer)
    report = {}
    sample_seed = cfg.seed if cfg.sample_seed is None else cfg.sample_seed
    for name, task in zip(names, tasks):
        made = []
        for i in range(0, cfg.num, cfg.batch_size):
            batch = samples[i:i + cfg.batch_size]
            codes = pipe.codes(task, batch, seed=sample_seed + i, cfg_scale=cfg.cfg_scale,
                               temperature=cfg.temperature, top_k=cfg.top_k)
            media = [task.to_media(c, s, pipe.tokenizer) for c, s in zip(codes, batch)]
            if cfg.refine and task.output == "video":
                refined = pipe.refine(np.stack([m.video for m in media]), seed=sample_seed + i)
                media = [replace(m, video=v) for m, v in zip(media, refined)]
            made += media
            if progress:
                progress(name, len(batch))
        scorer.per_clip = [{} for _ in clips]
        report[name] = task.score(made, scorer)
        if cfg.per_clip:
            report[name]["per_clip"] = scorer.per_clip
        report[name]["loss"] = round(truth_loss(pipe.model, task, samples, pipe.vocab["<pad>"], cfg.batch_size), 4)
    return {"model": str(pipe.folder), "num": cfg.num, "size": plan.name, "frames": plan.frames, "seed": cfg.seed,
            "split": cfg.split, "sample_seed": sample_seed,
            "cfg_scale": cfg.cfg_scale, "temperature": cfg.temperature, "top_k": cfg.top_k,
            "batch_size": cfg.batch_size, "refined": cfg.refine, "tasks": report, "seconds": round(time.perf_counter() - start, 1)}


def held_out_clips(pipe: Pipeline, task: Task, size: str | None, frames: int | None, num: int, seed: int = 0,
                   split: str = "eval") -> tuple[Plan, list[dict]]:
    """Shapes clips at ``size`` and ``frames`` exactly (default: the model's), trained or not, as
    `Pipeline.plan` lays them out (its notes shown as warnings), and the plan."""
    plan = pipe.plan(task, check_size(size), check_frames(frames), exact=True)
    for note in plan.notes:
        warnings.warn(note, stacklevel=3)
    world = ShapesConfig(height=plan.height, width=plan.width, frames=plan.frames, fps=pipe.clip["fps"])
    video = plan.frames * plan.height * plan.width * 3
    # each clip and its structure video and sound, and up to three videos made from it (compare's two systems)
    check_held(num, 5 * video + 4 * world.num_samples, "held-out clips")
    data = ShapesDataset(num, seed=seed, split=split, world=world)
    return plan, [data[i] for i in range(num)]


def truth_loss(model, task, samples: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """The mean loss per output token of the true outputs, teacher-forced: how likely the model
    finds what it should have made (no sampling). Against the same figure on training clips
    (``split="train"``) it shows how much of the training loss is memory."""
    training, task.training = task.training, False  # the prefix as at generation: no random choices
    try:
        built = [task.build(s) for s in samples]
    finally:
        task.training = training
    items = [(torch.cat([prefix, target]).long(), len(prefix)) for prefix, target in built]
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    positions = grid_layout(task.vocab).positions if uses_grid(model) else None
    batches = [TaskBatch(pad(chunk, pad_id=pad_id, positions=positions), torch.zeros(len(chunk), dtype=torch.long))
               for chunk in chunks]
    loss, count = held_out_losses(model, batches, num_tasks=1)
    return float(loss.sum() / count.sum().clamp(min=1))


# what makes two evaluations score the same clips with the same draws (the batch size too: a batch's
# rows are seeded from its first clip's position)
PAIRED_SETTINGS = ("num", "size", "frames", "seed", "split", "sample_seed", "cfg_scale", "temperature", "top_k",
                   "batch_size", "refined")


def check_same_settings(base: dict, settings: dict) -> None:
    """Refuse to pair evaluations that did not score the same clips the same way."""
    for key in PAIRED_SETTINGS:
        if key in base and key in settings and base.get(key) != settings.get(key):
            raise UsageError(f"--against: its {key} is {base.get(key)!r}, this evaluation's is "
                             f"{settings.get(key)!r}; compare evaluations of the same clips with the same settings")


def paired_changes(base: dict, report: dict) -> dict:
    """How ``report``'s model differs from ``base``'s on the same clips and sampling seeds, per
    accuracy figure, in points: both figures, the change and its standard error; and for a task
    with several figures, its ``accuracy``, every reading of every figure pooled (a clip's hits
    and counts summed over its figures), paired the same way. Both reports need ``per_clip``
    records (``EvalConfig(per_clip=True)``).

    The error is paired over clips: each clip's hits under one model minus its hits under the
    other, so what the clip itself makes easy or hard cancels, and the shared sampling seeds make
    the two models' draws alike wherever their distributions are. ``loss_change`` (the
    teacher-forced loss of the true outputs) has no sampling noise at all."""
    check_same_settings(base, report)
    tasks, changes = {}, []
    for name, block in report["tasks"].items():
        other = base["tasks"].get(name)
        if other is None or "per_clip" not in block or "per_clip" not in other:
            continue
        rows, pooled = {}, []
        for figure in block["per_clip"][0] if block["per_clip"] else ():
            mine = np.array([c[figure] for c in block["per_clip"]], dtype=np.float64)  # (N, 2): hits, count
            theirs = np.array([c[figure] for c in other["per_clip"]], dtype=np.float64)
            if mine[:, 1].sum() == 0:
                continue
            rows[figure] = _paired_row(mine, theirs)
            changes.append((f"{name}/{figure}", rows[figure]["change"], rows[figure]["se"]))
            pooled.append((mine, theirs))
        if len(pooled) > 1:  # the task's accuracy: every reading of every figure pooled, paired the same way
            rows["accuracy"] = _paired_row(sum(m for m, _ in pooled), sum(t for _, t in pooled))
        if "loss" in block and "loss" in other:
            rows["loss_change"] = round(block["loss"] - other["loss"], 4)
        tasks[name] = rows
    summary = {"figures": len(changes)}
    if changes:
        summary["mean_change"] = round(float(np.mean([c for _, c, _ in changes])), 2)
        # a fall the sampling noise cannot explain: the change is more than two standard errors below zero
        summary["clearly_lower"] = [f for f, c, se in changes if c + 2 * se < 0]
        summary["clearly_lower_by_more_than_1"] = [f for f, c, se in changes if c + 2 * se < -1]
    return {"model": base.get("model"), "tasks": tasks, "summary": summary}


def _paired_row(mine: np.ndarray, theirs: np.ndarray) -> dict:
    """One figure of ``paired_changes``: (N, 2) arrays of [hits, count] per clip under the model
    and under the base -> both accuracies, the change and its standard error, in points."""
    total = mine[:, 1].sum()
    change = (mine[:, 0].sum() - theirs[:, 0].sum()) / total
    d = mine[:, 0] - theirs[:, 0] - change * mine[:, 1]
    n = len(d)
    se = float(np.sqrt(n / max(n - 1, 1) * (d ** 2).sum()) / total)
    return {"base": round(float(100 * theirs[:, 0].sum() / total), 2),
            "model": round(float(100 * mine[:, 0].sum() / total), 2), "change": round(float(100 * change), 2), "se": round(100 * se, 2)}


def chance_levels() -> dict:
    """What guessing scores, for reading the attribute accuracies: one over the number of classes."""
    return {"shape": 1 / len(SHAPES), "color": 1 / len(PALETTE), "size": 1 / len(SIZES),
            "direction": 1 / len(DIRECTIONS), "background": 1 / len(BACKGROUNDS)}



def evaluate_tasks(pipe: Pipeline, tasks: list[Task], clips: list[dict], samples: list[dict], probe, cfg,
                   seed: int = 0) -> tuple[dict, dict]:
    """Scores per task, and the generated output ids per task (to compare runs exactly)."""
    scorer = Scorer(probe, clips, samples, pipe.tokenizer)
    scores, outputs = {}, {}
    for task in tasks:
        made, codes_all = [], []
        for i in range(0, len(samples), cfg.batch_size):
            batch = samples[i:i + cfg.batch_size]
            codes = pipe.codes(task, batch, seed=seed + i, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                               top_k=cfg.top_k)
            codes_all += codes
            made += [task.to_media(c, s, pipe.tokenizer) for c, s in zip(codes, batch)]
        scores[task.name] = task.score(made, scorer)
        outputs[task.name] = torch.stack(codes_all)
    return scores, outputs


__all__ = ["EvalConfig", "chance_levels", "check_same_settings", "evaluate", "evaluate_tasks", "paired_changes",
           "truth_loss"]
