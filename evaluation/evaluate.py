"""`videolm eval`: every task of a model, run on held-out Shapes clips and scored.

For each task the held-out clips (seeds from 1,000,000 on) are tokenized with their views, the
task's condition is laid out from them exactly as in training, the output is generated in batches
and turned back into media by the task, and the media are scored against what the condition asked:

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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from videolm.core import metrics as quality
from videolm.core.config import check_range
from videolm.core.errors import UsageError
from videolm.data.shapes import BACKGROUNDS, DIRECTIONS, PALETTE, SHAPES, SIZES
from videolm.data.shapes_data import ShapesDataset
from videolm.evaluation import metrics as M
from videolm.evaluation.probe import frechet_distance, load_probe
from videolm.lm.data import TaskBatch
from videolm.lm.losses import held_out_losses
from videolm.lm.masks import pad
from videolm.tasks.base import BUILTIN, Task
from videolm.tasks.pipeline import Pipeline
from videolm.tasks.views import box_mask
from videolm.tokenizers.geometry import context_latents, frames_of, grid_of, start_latents

ALL_ATTRIBUTES = ("shape", "color", "size", "direction")
STILL_ATTRIBUTES = ("shape", "color", "size")  # where motion cannot be judged (an image, a ping-pong loop)


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

    def __post_init__(self):
        self.tasks = () if tuple(self.tasks) == ("all",) else tuple(self.tasks)
        check_range(self, 2, None, "num")
        check_range(self, 1, None, "batch_size", "top_k")
        check_range(self, 0, 2**63 - 1, "seed", "sample_seed")
        check_range(self, 0, 100, "cfg_scale", "temperature")


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
    data = ShapesDataset(cfg.num, seed=cfg.seed, split=cfg.split)
    clips = [data[i] for i in range(cfg.num)]
    tasks = [pipe.task(name) for name in names]

    def views(clip: dict) -> dict:  # the videos fine-tuned tasks read besides the built-in views
        return {k: v for t in tasks for k, v in t.views(clip).items()}

    samples = []
    for i in range(0, cfg.num, cfg.batch_size):
        samples += pipe.tokenizer.encode(clips[i:i + cfg.batch_size], extra=views)
    real_features = probe.features(np.stack([c["video"] for c in clips])).detach().numpy()
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
        per_clip = [{} for _ in clips]
        if name in BUILTIN:
            report[name] = score(name, made, clips, samples, probe, real_features, per_clip)
        else:  # a fine-tuned task, scored as `videolm finetune` scores it (against its truth where it has one)
            report[name] = score_task(task, made, clips, samples, probe, real_features, pipe.tokenizer, per_clip)
        if cfg.per_clip:
            report[name]["per_clip"] = per_clip
        report[name]["loss"] = round(truth_loss(pipe.model, task, samples, pipe.vocab["<pad>"], cfg.batch_size), 4)
    return {"model": str(pipe.folder), "num": cfg.num, "seed": cfg.seed, "split": cfg.split, "sample_seed": sample_seed,
            "cfg_scale": cfg.cfg_scale, "temperature": cfg.temperature, "refined": cfg.refine,
            "tasks": report, "seconds": round(time.perf_counter() - start, 1)}


def score(name: str, made: list, clips: list[dict], samples: list[dict], probe, real_features: np.ndarray,
          per_clip: list[dict] | None = None) -> dict:
    """The metrics block of one task. ``per_clip``, one dict per clip, receives each clip's
    ``[hits, count]`` for every accuracy figure of the block."""
    out: dict = {}
    if name == "v2a":
        return _audio_scores(made, clips, per_clip)
    videos = np.stack([m.video for m in made])  # (N, T, H, W, 3)
    attributes = STILL_ATTRIBUTES if name in ("t2i", "loop") else ALL_ATTRIBUTES
    if name in ("stylize", "uncond"):
        attributes = ()  # stylize: scored by silhouette and color below; uncond asks for nothing
    if name == "a2v":
        attributes = ("shape",)  # all the audio tells: which tones hum (size only through loudness)
    wanted = [c["meta"]["objects"] for c in clips]
    if attributes:
        out.update(attribute_accuracy(probe.predict(videos), wanted, attributes, per_clip))
    if name != "t2i":
        out["fd_probe"] = round(_frechet(probe.features(videos).detach().numpy(), real_features), 3)
    truth = np.stack([c["video"] for c in clips])
    extra = _truth_scores(name, videos, truth, samples, clips, per_clip)
    out.update(extra)
    return out


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
    batches = [TaskBatch(pad(chunk, pad_id=pad_id), torch.zeros(len(chunk), dtype=torch.long)) for chunk in chunks]
    loss, count = held_out_losses(model, batches, num_tasks=1)
    return float(loss.sum() / count.sum().clamp(min=1))


def attribute_accuracy(predicted: list[dict], wanted: list[list[dict]], attributes,
                       per_clip: list[dict] | None = None) -> dict:
    totals = {a: [0, 0] for a in attributes}
    for i, (pred, want) in enumerate(zip(predicted, wanted)):
        for a, (hit, n) in M.match_objects(want, pred["objects"], attributes).items():
            totals[a][0] += hit
            totals[a][1] += n
            if per_clip is not None:
                per_clip[i][a] = [int(hit), int(n)]
    return {a: round(hit / n, 4) for a, (hit, n) in totals.items()}


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    return float(frechet_distance(a, b))


def _psnr_ssim(made: np.ndarray, truth: np.ndarray, mask=None) -> tuple[float, float]:
    psnr = float(np.mean([quality.psnr(m, t, None if mask is None else mask[i]) for i, (m, t) in
                          enumerate(zip(made, truth))]))
    ssim = float(np.mean([quality.ssim(m, t) for m, t in zip(made, truth)])) if mask is None else None
    return round(psnr, 2), (None if ssim is None else round(ssim, 4))


def _truth_scores(name: str, videos: np.ndarray, truth: np.ndarray, samples: list[dict], clips,
                  per_clip: list[dict] | None = None) -> dict:
    """PSNR/SSIM against the ground truth and the task's copy baseline, where the task has one."""
    t = samples[0]["video"].shape[0]
    ctx = frames_of(context_latents(t))  # 9: extend's context, extend_back's given clip
    if name == "extend":
        new, last = slice(ctx, None), truth[:, ctx - 1:ctx]
        return _compare(videos[:, new], truth[:, new], np.broadcast_to(last, truth[:, new].shape))
    if name == "extend_back":
        n = len(truth[0]) - ctx  # frames before the given ones (the given clip starts at frame n)
        new, first = slice(0, n), truth[:, n:n + 1]
        return _compare(videos[:, new], truth[:, new], np.broadcast_to(first, truth[:, new].shape))
    if name == "interpolate":
        s = frames_of(start_latents(t))  # 5 given frames at the start
        e = len(truth[0]) - s  # the end clip starts here
        between = slice(s, e)
        nearest = np.stack([truth[:, s - 1] if k - (s - 1) <= e - k else truth[:, e] for k in range(s, e)], 1)
        return _compare(videos[:, between], truth[:, between], nearest)
    if name in ("inpaint", "outpaint"):
        grid = grid_of(*truth.shape[2:4])
        cells = [box_mask(smp[f"{name}_box"], grid, name == "inpaint") for smp in samples]
        masks = np.stack([np.broadcast_to(np.repeat(np.repeat(c, 8, 0), 8, 1), truth.shape[1:4]) for c in cells])
        blank = np.where(masks[..., None], 0, truth).astype(np.uint8)
        psnr, _ = _psnr_ssim(videos, truth, masks)
        base, _ = _psnr_ssim(blank, truth, masks)
        return {"psnr_masked": psnr, "baseline_psnr_masked": base, "psnr_masked_pooled": _pooled_psnr(videos, truth, masks),
                "baseline_psnr_masked_pooled": _pooled_psnr(blank, truth, masks), "baseline": "hidden region left black"}
    if name == "i2v":
        first, _ = _psnr_ssim(videos[:, :1], truth[:, :1])
        out = _compare(videos[:, 1:], truth[:, 1:], np.broadcast_to(truth[:, :1], truth[:, 1:].shape))
        return {"psnr_first_frame": first, **out}
    if name == "stylize":
        structures = [c["structure"] for c in clips]
        iou = np.mean([M.silhouette_iou(v, s) for v, s in zip(videos, structures)])
        hit = total = 0
        for i, (v, s, c) in enumerate(zip(videos, structures, clips)):
            colors = M.silhouette_colors(v, s)
            want = [o["color"] for o in c["meta"]["objects"]]
            hits = sum(a == b for a, b in zip(colors, want))
            hit += hits
            total += len(want)
            if per_clip is not None:
                per_clip[i]["color"] = [int(hits), len(want)]
        return {"silhouette_iou": round(float(iou), 4), "color": round(hit / total, 4)}
    return {}


def _pooled_psnr(made: np.ndarray, truth: np.ndarray, mask=None) -> float:
    """PSNR of the squared error averaged over every clip (and pixel of ``mask``) at once. The mean
    of per-clip PSNRs lets a few exact clips dominate: copying the last frame of a clip whose
    objects stand still is exact (~148 dB), and no generator that is not exact can match it."""
    return round(quality.psnr(made, truth, mask), 2)


def _compare(made: np.ndarray, truth: np.ndarray, baseline: np.ndarray) -> dict:
    psnr, ssim = _psnr_ssim(made, truth)
    baseline = np.ascontiguousarray(baseline)
    base_psnr, base_ssim = _psnr_ssim(baseline, truth)
    pooled, base_pooled = _pooled_psnr(made, truth), _pooled_psnr(baseline, truth)
    return {"psnr": psnr, "ssim": ssim, "baseline_psnr": base_psnr, "baseline_ssim": base_ssim,
            "psnr_over_baseline": round(psnr - base_psnr, 2), "psnr_pooled": pooled,
            "baseline_psnr_pooled": base_pooled, "pooled_over_baseline": round(pooled - base_pooled, 2)}


def _audio_scores(made: list, clips: list[dict], per_clip: list[dict] | None = None) -> dict:
    tones, errors = [], []
    for i, (m, c) in enumerate(zip(made, clips)):
        objects = c["meta"]["objects"]
        tones.append(bool(M.tone_accuracy(m.audio, objects)))
        if per_clip is not None:
            per_clip[i]["tone"] = [int(tones[-1]), 1]
        bounces = sorted(b for o in objects for b in o["bounces"])
        err = M.bounce_timing_error(m.audio, bounces)
        if err is not None:
            errors.append(err)
    out = {"tone": round(float(np.mean(tones)), 4)}
    out["bounce_timing_error_s"] = round(float(np.mean(errors)), 4) if errors else None
    out["clips_with_bounces"] = len(errors)
    return out


PAIRED_SETTINGS = ("num", "seed", "split", "sample_seed", "cfg_scale", "temperature", "refined")


def check_same_settings(base: dict, settings: dict) -> None:
    """Refuse to pair evaluations that did not score the same clips the same way."""
    for key in PAIRED_SETTINGS:
        if key in base and base.get(key) != settings.get(key):
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



def score_task(task: Task, made: list, clips: list[dict], samples: list[dict], probe, real_features, tokenizer,
               per_clip: list[dict] | None = None) -> dict:
    """A block of metrics: built-in tasks as `videolm eval` scores them; a task with ``truth(clip)``
    (and optionally ``baseline(clip)``) by PSNR and probe attributes against the truth, beside the
    ceiling (the truth's own codes decoded: the best the LM can emit) and the copy baseline. The
    attributes wanted are the clip's objects, or ``truth_objects(clip)`` where the task changes
    them (``reverse`` turns every direction around). ``per_clip`` (one dict per clip) receives
    each clip's ``[hits, count]`` per attribute of the model's own outputs, as `score` does."""
    if task.name in BUILTIN or not hasattr(task, "truth"):
        return score(task.name, made, clips, samples, probe, real_features, per_clip)
    truth = [task.truth(c) for c in clips]
    wanted = [task.truth_objects(c) if hasattr(task, "truth_objects") else c["meta"]["objects"] for c in clips]

    def block(videos, per_clip=None) -> dict:
        out = attribute_accuracy(probe.predict(np.stack(videos)), wanted, ALL_ATTRIBUTES, per_clip)
        out["psnr"] = round(float(np.mean([quality.psnr(v, t) for v, t in zip(videos, truth)])), 2)
        return out

    result = block([m.video for m in made], per_clip)
    result["ceiling"] = block([task.to_media(task.target_codes(s), s, tokenizer).video for s in samples])
    if hasattr(task, "baseline"):
        result["baseline"] = block([task.baseline(c) for c in clips])
    return result


def evaluate_tasks(pipe: Pipeline, tasks: list[Task], clips: list[dict], samples: list[dict], probe, cfg,
                   seed: int = 0) -> tuple[dict, dict]:
    """Scores per task, and the generated output ids per task (to compare runs exactly)."""
    real = probe.features(np.stack([c["video"] for c in clips])).detach().numpy()
    scores, outputs = {}, {}
    for task in tasks:
        made, codes_all = [], []
        for i in range(0, len(samples), cfg.batch_size):
            batch = samples[i:i + cfg.batch_size]
            codes = pipe.codes(task, batch, seed=seed + i, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature,
                               top_k=cfg.top_k)
            codes_all += codes
            made += [task.to_media(c, s, pipe.tokenizer) for c, s in zip(codes, batch)]
        scores[task.name] = score_task(task, made, clips, samples, probe, real, pipe.tokenizer)
        outputs[task.name] = torch.stack(codes_all)
    return scores, outputs


__all__ = ["EvalConfig", "attribute_accuracy", "chance_levels", "check_same_settings", "evaluate", "evaluate_tasks",
           "paired_changes", "score", "score_task"]
