"""`videolm refiner eval`: the refiner on held-out Shapes decodes: PSNR and SSIM against the clean
clips before and after refining, the probe's agreement between refined and unrefined clips, speed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.core.metrics import psnr, psnr_per_clip, ssim_per_clip
from videolm.data.shapes import ATTRIBUTES
from videolm.data.sources import ClipSource
from videolm.diffusion.process import FlowMatching
from videolm.diffusion.refiner import load_refiner, make_pairs, num_parameters, refine
from videolm.evaluation.probe import load_probe
from videolm.tasks.tokenizing import load_video_tokenizer
from videolm.tokenizers.video import to_tensor


def probe_agreement(a: list[dict], b: list[dict]) -> dict:
    """Fractions of clips whose probe readings agree: overall (count and every object's attributes),
    on the count, and per attribute (the count and that attribute of every object)."""
    same_count = [len(x["objects"]) == len(y["objects"]) for x, y in zip(a, b)]
    result = {"count": float(np.mean(same_count))}
    for attr in ATTRIBUTES:
        result[attr] = float(np.mean([c and all(o[attr] == p[attr] for o, p in zip(x["objects"], y["objects"]))
                                      for c, x, y in zip(same_count, a, b)]))
    result["all"] = float(np.mean([c and x["objects"] == y["objects"] for c, x, y in zip(same_count, a, b)]))
    return result


def evaluate_refiner(model_dir: str | Path = "shapes-64", num: int = 256, seed: int = 0, steps: int | None = None,
                     tokenizer: str = "shapes-64", batch_size: int = 8, probe: str | None = "shapes-64",
                     progress: Callable[[int], object] | None = None, noise_scale: float | None = None,
                     gate_tau: float | None = None, frames: int = 17, size: tuple[int, int] = (64, 64),
                     data: str = "shapes") -> dict:
    """The refiner on held-out Shapes clips (eval seeds from 1,000,000 + seed): PSNR and SSIM against
    the clean clip before and after refining, probe agreement of the refined with the unrefined
    decode, and the refiner's seconds per clip at the current torch thread count. ``noise_scale``
    and ``gate_tau`` (0: no gate) override the refiner's own settings; ``frames`` and ``size``
    (H, W): the clips'; ``data``: the world whose held-out clips are used (the Shapes probe reads
    Shapes clips only, so other worlds get no probe agreement)."""
    model = load_refiner(model_dir)
    steps = steps or model.config.steps
    if steps < 1:
        raise UsageError(f"--steps {steps} must be >= 1")
    clips = ClipSource(data, num=num, seed=seed, split="eval", frames=frames, height=size[0], width=size[1]).dataset()
    decoded, clean = make_pairs(clips, load_video_tokenizer(tokenizer), batch_size=16)
    refined, seconds = [], 0.0
    for start in range(0, num, batch_size):
        t0 = time.perf_counter()
        refined.append(refine(model, decoded[start : start + batch_size].numpy(), steps, seed=seed + start,
                              batch_size=batch_size, noise_scale=noise_scale, gate_tau=gate_tau))
        seconds += time.perf_counter() - t0
        if progress:
            progress(len(refined[-1]))
    refined = np.concatenate(refined)  # (N, T, H, W, 3) uint8
    x, raw, ref = to_tensor(clean.numpy()), to_tensor(decoded.numpy()), to_tensor(refined)  # (N, 3, T, H, W)
    result = {
        "data": data, "clips": num, "size": f"{size[0]}x{size[1]}", "frames": frames, "steps": steps,
        "noise_scale": model.config.noise_scale if noise_scale is None else noise_scale,
        "gate_tau": (model.config.gate_tau if gate_tau is None else gate_tau) or None,
        "psnr_raw": float(psnr_per_clip(raw, x).mean()), "psnr_refined": float(psnr_per_clip(ref, x).mean()),
        "ssim_raw": float(ssim_per_clip(raw, x).mean()), "ssim_refined": float(ssim_per_clip(ref, x).mean()),
    }
    result["network_evaluations"] = FlowMatching.evaluations(steps) * (2 if result["gate_tau"] else 1)
    result["psnr_gain"] = result["psnr_refined"] - result["psnr_raw"]
    for name, made in (("raw", decoded.numpy()), ("refined", refined)):  # PSNR of the squared error over all clips
        result[f"psnr_pooled_{name}"] = psnr(made, clean.numpy())
    if probe and data == "shapes":
        reader = load_probe(probe)
        agree = probe_agreement(reader.predict(decoded.numpy()), reader.predict(refined))
        result["probe_agreement"] = agree.pop("all")
        result["probe_agreement_by"] = {k: round(v, 4) for k, v in agree.items()}
    result.update({"seconds_per_clip": seconds / num, "threads": torch.get_num_threads(), "batch_size": batch_size,
                   "params": num_parameters(model)})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


__all__ = ["ATTRIBUTES", "evaluate_refiner", "probe_agreement"]
