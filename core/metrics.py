"""Image and video quality figures, one implementation each: PSNR and SSIM of clips, as every part of
videolm reports them (the tokenizers' training and evaluation, the refiner's, the tasks')."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def psnr_per_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR of uint8-rounded clips in [-1, 1] (the same figure as on 0..255 pixels), (B,)."""
    q = lambda v: v.float().clamp(-1, 1).add(1).mul(127.5).round()  # noqa: E731
    mse = (q(x) - q(y)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def ssim_per_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    frames = lambda v: v.float().clamp(-1, 1).add(1).div(2).transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
    per_frame = structural_similarity_index_measure(frames(y), frames(x), data_range=1.0, reduction="none")  # (B*T,)
    return per_frame.reshape(b, t).mean(1)


__all__ = ["psnr_per_clip", "ssim_per_clip"]
