"""A task's outputs drawn by the generation engine: the one place where a task's prefix, its output
layout (the ids allowed at each position) and classifier-free guidance meet `videolm.lm.engine`,
with the CPU fast path (`videolm.lm.cpu_packing`) applied where it fits."""

from __future__ import annotations

import torch

from videolm.lm.cpu_packing import cpu_fast_path
from videolm.lm.engine import generate
from videolm.lm.model import VideoLM
from videolm.tasks.base import Task, grid_layout


def generate_codes(model: VideoLM, task: Task, items: list[dict], *, cfg_scale: float = 1.0,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   generator=None, progress=None) -> list[torch.Tensor]:
    """The task's outputs for ``items`` (samples), generated in one batch: local codes of
    `Task.output_shape` each. Guidance applies to tasks with text when ``cfg_scale != 1``."""
    training, task.training = task.training, False
    try:
        shapes = [task.output_shape(item) for item in items]
        guided = task.uses_text and cfg_scale != 1
        ids = generate(model, [task.prefix(item) for item in items], constraint=[task.layout(s) for s in shapes],
                       cfg_scale=cfg_scale if guided else 1.0,
                       uncond_prompts=[task.prefix(item, drop_text=True) for item in items] if guided else None,
                       temperature=temperature, top_k=top_k, top_p=top_p, pad_id=task.vocab["<pad>"],
                       generator=generator, fast=cpu_fast_path, progress=progress,
                       grid=grid_layout(task.vocab))  # (B, N)
    finally:
        task.training = training
    return [task.output_codes(row, shape) for row, shape in zip(ids.cpu(), shapes)]


__all__ = ["generate_codes"]
