"""`videolm tokenizer eval`: a tokenizer's reconstruction on held-out clips, as one JSON-ready dict."""

from __future__ import annotations

import time

import torch

from videolm.core.errors import UsageError
from videolm.data.sources import ClipSource
from videolm.tasks.tokenizing import load_tokenizer
from videolm.tokenizers.modality import AudioModality, VideoModality, codebook_stats, collate_clips


@torch.no_grad()
def evaluate_tokenizer(model: str, data: str = "shapes", num: int = 256, seed: int = 0, batch_size: int = 8,
                       modality: str | None = None, frames: int = 17, size: tuple[int, int] = (64, 64)) -> dict:
    """Reconstruction quality on held-out clips, as one JSON-ready dict."""
    tok = load_tokenizer(model, modality)
    is_video = tok.kind == "video_tokenizer"
    ds = ClipSource(data, num, seed, "eval", frames, size[0], size[1]).dataset()
    if len(ds) == 0:
        raise UsageError(f"--data {data}: no clips to evaluate")
    adapter = VideoModality() if is_video else AudioModality()
    metrics: dict[str, list] = {}
    codes, seconds = [], 0.0
    for start in range(0, len(ds), batch_size):
        batch = collate_clips([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        x = adapter.inputs(batch, train=False)
        t0 = time.perf_counter()
        c = tok.encode(x)
        recon = tok.decode(c, x.shape[-2], x.shape[-1]) if is_video else tok.decode(c, x.shape[-1])
        seconds += time.perf_counter() - t0
        codes.append(adapter.flat_codes(c))
        for k, v in adapter.metrics(x, recon).items():
            metrics.setdefault(k, []).append(v)
    result = {k: round(float(torch.cat(v).mean()), 4) for k, v in metrics.items()}
    result.update({k: round(v, 4) for k, v in codebook_stats(torch.cat(codes), tok.config.codebook_size).items()})
    result["clips_per_s"] = round(len(ds) / seconds, 2)
    result["clips"] = len(ds)
    return result


__all__ = ["evaluate_tokenizer"]
