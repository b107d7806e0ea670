"""`videolm probe fit`: the probe classifier trained on ground-truth Shapes clips (drawn on the fly,
every background), measured on held-out ones, and written as a probe folder."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videolm.core.outputs import atomic_output_dir, check_output_dir
from videolm.core.outputs import write_json_atomic as write_json
from videolm.data.shapes import make_clip
from videolm.data.shapes_data import split_seeds
from videolm.evaluation.probe import (
    TRAIN_FRAMES,
    Probe,
    ProbeConfig,
    clip_targets,
    evaluate_probe,
    probe_loss,
    shapes_world,
)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixel perturbations per clip of float clips (B, T, H, W, 3) in [0, 1]: per-channel gain
    (+-8%) and a brightness offset (+-0.04); half the clips blended with a 3x3 box blur, one in
    four of them with the blur applied twice (soft edges and colour bleeding, as decoded clips
    have); gaussian noise (sigma up to 0.04). Mild enough that every palette colour stays nearest
    itself."""
    b = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    x = x * (1 + 0.08 * (2 * rand(b, 1, 1, 1, 3) - 1)) + 0.04 * (2 * rand(b, 1, 1, 1, 1) - 1)
    box = lambda v: F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # noqa: E731
    t, h, w = x.shape[1:4]
    flat = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)  # (B*T, 3, H, W)
    once = box(flat)
    twice = torch.where((rand(b, 1, 1, 1) < 0.25).repeat_interleave(t, 0), box(once), once)
    blurred = twice.permute(0, 2, 3, 1).reshape(x.shape)  # (B, T, H, W, 3)
    alpha = rand(b, 1, 1, 1, 1) * (rand(b, 1, 1, 1, 1) < 0.5)
    x = x + alpha * (blurred - x)
    x = x + 0.04 * rand(b, 1, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def _lr(step: int, steps: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def fit_probe(out_dir: str | Path, num_clips: int = 100_000, steps: int = 2000, batch_size: int = 32, seed: int = 0,
              threads: int = 1, preset: str = "default", eval_clips: int = 512, lr: float = 3e-3,
              overwrite: bool = False, progress=None) -> dict:
    """Train a probe on Shapes training seeds ``seed .. seed + num_clips - 1`` (clips drawn on the
    fly, all backgrounds), measure it on ``eval_clips`` held-out clips, and write ``out_dir``
    (config.json, model.safetensors, metrics.json; all or nothing). Returns the metrics dict.
    ``progress``, if given, is called with 1 after each step."""
    seeds = split_seeds("train", seed, num_clips)
    config = ProbeConfig.from_name(preset)
    check_output_dir(out_dir, overwrite)  # fail now, not after training
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        world = shapes_world()
        probe = Probe(config).train()
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
        lengths, shares = list(TRAIN_FRAMES), list(TRAIN_FRAMES.values())
        start, recent = time.time(), []
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * _lr(step, steps)
            t = int(rng.choice(lengths, p=shares))
            clips = [make_clip(seeds[i], world) for i in rng.integers(len(seeds), size=batch_size)]
            video = probe.pick_frames(torch.from_numpy(np.stack([c.video[:t] for c in clips])))  # (B, F, H, W, 3)
            targets = clip_targets([c.meta for c in clips], with_direction=t > 1)
            loss = probe_loss(probe.outputs(augment(video.float().div(255), generator), picked=True), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            recent = (recent + [loss.item()])[-50:]
            if progress:
                progress(1)
        train_seconds = time.time() - start
        probe.eval()
        metrics = evaluate_probe(probe, num=eval_clips)
    finally:
        torch.set_num_threads(previous_threads)
    metrics["train"] = {
        "preset": preset, "steps": steps, "batch_size": batch_size, "num_clips": num_clips, "seed": seed,
        "threads": threads, "lr": lr, "seconds": round(train_seconds, 1),
        "final_loss": round(float(np.mean(recent)), 4) if recent else None,
    }
    with atomic_output_dir(out_dir, overwrite=overwrite, command="probe fit") as tmp:
        probe.save_pretrained(tmp)
        write_json(tmp / "metrics.json", metrics)
    return metrics


__all__ = ["augment", "fit_probe"]
