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


def test_the_same_bits_baseline_is_exact_where_it_should_be_and_keeps_12_bits_per_block():
    import torch

    from videolm.core.metrics import same_bits_baseline

    level = torch.tensor([3, 8, 15]).view(1, 3, 1, 1, 1) / 15 * 2 - 1  # 4-bit levels
    flat = level.expand(2, 3, 9, 16, 24).clone()
    assert torch.allclose(same_bits_baseline(flat), flat, atol=1e-6)
    ramp = torch.linspace(-1, 1, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, 16, 16).clone()
    ramp[:, :, ::4] = torch.round((ramp[:, :, ::4] + 1) / 2 * 15) / 15 * 2 - 1
    out = same_bits_baseline(ramp)
    assert torch.allclose(out[:, :, ::4], ramp[:, :, ::4], atol=1e-6)  # kept frames: exact
    assert torch.allclose(out[:, :, 2], (ramp[:, :, 0] + ramp[:, :, 4]) / 2, atol=1e-6)  # between: linear
    noise = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    other = noise.clone()
    other[:, :, 1:4] = torch.rand(1, 3, 3, 16, 16)  # frames between kept ones carry no bits
    other[:, :, 0, 0, 0] += 0.1  # nor does how a block's pixels spread around its mean
    other[:, :, 0, 0, 1] -= 0.1
    assert torch.equal(same_bits_baseline(noise), same_bits_baseline(other))
