"""Image and video quality figures, one implementation each, as every part of videolm reports them (the
tokenizers' training and evaluation, the refiner's, the tasks', the media tests): PSNR from the mean
squared error on 0..255 pixels, SSIM from torchmetrics (Gaussian window)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

MSE_FLOOR = 1e-10  # identical pixels give 10 log10(255^2 / 1e-10) = 148.1 dB, not infinity


def _db(mse):
    """PSNR of 0..255 pixels from their mean squared error (floored: identical is ~148 dB)."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(255.0**2 / mse.clamp_min(MSE_FLOOR))
    return float(10 * np.log10(255.0**2 / max(float(mse), MSE_FLOOR)))


def psnr(a, b, mask=None) -> float:
    """PSNR in dB between uint8 arrays ``a`` and ``b`` (clips (T, H, W, 3), images, batches), pooled
    over every pixel, or over those where ``mask`` ((T, H, W) or the full shape, bool) is true."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    err = (a - b) ** 2
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        mask = np.broadcast_to(mask if mask.ndim == a.ndim else mask[..., None], a.shape)
        if not mask.any():
            raise ValueError("psnr: the mask selects no pixels")
        err = err[mask]
    return _db(err.mean())


def ssim(a, b) -> float:
    """SSIM between uint8 clips ``a`` and ``b`` (T, H, W, 3) (or one image (H, W, 3)), averaged over
    frames (data range 255)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {a.shape} vs {b.shape}")
    # float32: SSIM of uint8 clips agrees with float64's to ~1e-8, and CPU convolutions in float64
    # run some 50 times slower
    to = lambda v: torch.from_numpy(v.reshape(-1, *v.shape[-3:])).permute(0, 3, 1, 2).float()  # noqa: E731  (T, 3, H, W)
    return float(structural_similarity_index_measure(to(a), to(b), data_range=255.0, reduction="none").double().mean())


def psnr_per_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR of each clip of a batch ``(B, 3, T, H, W)`` in [-1, 1], on its uint8-rounded pixels (the
    same figure as `psnr` of the clips as saved), (B,)."""
    q = lambda v: v.float().clamp(-1, 1).add(1).mul(127.5).round()  # noqa: E731
    return _db((q(x) - q(y)).pow(2).flatten(1).mean(1))


def ssim_per_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each clip of a batch ``(B, 3, T, H, W)`` in [-1, 1], averaged over frames, (B,)."""
    b, c, t, h, w = x.shape
    frames = lambda v: v.float().clamp(-1, 1).add(1).div(2).transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
    per_frame = structural_similarity_index_measure(frames(y), frames(x), data_range=1.0, reduction="none")  # (B*T,)
    return per_frame.reshape(b, t).mean(1)


__all__ = ["MSE_FLOOR", "psnr", "psnr_per_clip", "ssim", "ssim_per_clip"]


def same_bits_baseline(x: torch.Tensor, time_down: int = 4, space_down: int = 8, bits: int = 4) -> torch.Tensor:
    """The trivial codec at a video tokenizer's rate, the reference its figures are read against.

    Of a clip (B, 3, T, H, W) in [-1, 1] with T = 1 + 4k and H, W multiples of 8, keep frames 0, 4,
    8, ... at 1/8 of the size (the mean of each 8x8 block), each channel rounded to 4 bits (16
    levels); rebuild by bilinear upsampling in space and linear interpolation in time. Per 4 x 8 x 8
    block of the clip that is 3 x 4 = 12 bits, what one token of a 4,096-code tokenizer carries.
    """
    b, c, t, h, w = x.shape
    keep = x[:, :, ::time_down]  # (B, 3, 1 + k, H, W)
    small = F.avg_pool3d(keep, (1, space_down, space_down))
    levels = 2 ** bits - 1
    small = torch.round((small.clamp(-1, 1) + 1) / 2 * levels) / levels * 2 - 1
    up = F.interpolate(small, size=(keep.shape[2], h, w), mode="trilinear", align_corners=False)
    if keep.shape[2] == 1:
        return up.expand(b, c, t, h, w).clone()
    return F.interpolate(up, size=(t, h, w), mode="trilinear", align_corners=True)
