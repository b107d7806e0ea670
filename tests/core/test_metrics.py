"""One PSNR and one SSIM for all of videolm: pooled over a region or every pixel, batch or array."""

import numpy as np
import pytest
import torch

from videolm.core.metrics import psnr, psnr_per_clip, ssim, ssim_per_clip
from videolm.data.shapes import make_clip
from videolm.tokenizers.video import to_tensor


def test_psnr_over_a_region_and_ssim():
    clip = make_clip(1_000_000)
    a = clip.video
    b = a.copy()
    b[:, :32] = 0  # change the top half only
    bottom = np.zeros(a.shape[:3], bool)
    bottom[:, 32:] = True
    assert psnr(a, b, bottom) > 100  # untouched region: identical
    assert psnr(a, b, ~bottom) < psnr(a, b) < 100
    mse = ((a.astype(float) - b) ** 2).mean()
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.95


def test_the_batch_figures_agree_with_the_array_ones():
    a, b = make_clip(1_000_001).video, make_clip(1_000_002).video
    x, y = to_tensor(np.stack([a, a])), to_tensor(np.stack([b, a]))
    assert float(psnr_per_clip(x, y)[0]) == pytest.approx(psnr(a, b), abs=1e-4)
    assert float(psnr_per_clip(x, y)[1]) == pytest.approx(psnr(a, a))  # identical: the floor, ~148 dB
    assert float(ssim_per_clip(x, y)[0]) == pytest.approx(ssim(b, a), abs=1e-4)
    assert torch.isfinite(psnr_per_clip(x, y)).all()
