"""The DiT's latent space: the video tokenizer's FSQ values before they are rounded.

The FSQ (Mentzer et al. 2023, arXiv:2309.15505) of the shipped tokenizer maps each encoder
vector (96 channels) to 4 channels (``project_in``), bounds each one with a shifted tanh to the
span of its L levels and rounds it. The DiT generates those bounded values, scaled to [-1, 1] per
channel (the L levels land on an even grid from -1 to 1), as (B, 4, t, h, w). Its samples are
rounded back to the grid and turned into code indices by the library, then decoded by the same
video decoder as the LM's tokens, so both models share one decoder.

    encode_latents(tokenizer, x)       video (B, 3, T, H, W) in [-1, 1] -> latents (B, D, t, h, w)
    latents_to_codes(tokenizer, z)     latents -> codes (B, t, h*w), as ``tokenizer.encode`` gives
    decode_latents(tokenizer, z, H, W) latents -> video in [-1, 1]
"""

from __future__ import annotations

import torch
from vector_quantize_pytorch import FSQ

from videolm.core.errors import ConfigError
from videolm.tokenizers.video import VideoTokenizer


def _fsq(tokenizer: VideoTokenizer) -> FSQ:
    quantizer = getattr(tokenizer.bottleneck, "quantizer", None)
    if quantizer is None or quantizer.kind != "fsq":
        raise ConfigError("the DiT needs a video tokenizer with a flat FSQ bottleneck "
                          f"(this one: {tokenizer.config.architecture}, {tokenizer.config.quantizer})")
    return quantizer.q


def _grid(fsq: FSQ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel (D,): the half span (L-1)/2, the offset of even L, and L // 2 (FSQ's half width)."""
    levels = fsq._levels.float()
    return (levels - 1) / 2, torch.where(fsq._levels % 2 == 0, 0.5, 0.0), (fsq._levels // 2).float()


def unrounded(fsq: FSQ, z: torch.Tensor) -> torch.Tensor:
    """FSQ's ``bound`` without its final rounding: (..., D) -> values on the integer level scale
    (``round(unrounded) / (L // 2) == fsq.bound(z)``; the test holds this to the library)."""
    half_l = (fsq._levels - 1) * (1 + 1e-3) / 2  # bound's default eps
    offset = torch.where(fsq._levels % 2 == 0, 0.5, 0.0)
    return torch.tanh(z + torch.atanh(offset / half_l)) * half_l - offset


@torch.no_grad()
def encode_latents(tokenizer: VideoTokenizer, x: torch.Tensor) -> torch.Tensor:
    """Video (B, 3, T, H, W) in [-1, 1] -> latents (B, D, t, h, w), about in [-1, 1]."""
    fsq = _fsq(tokenizer)
    z = tokenizer.encode_latents(x).float()  # (B, C, t, h, w)
    b, _, t, h, w = z.shape
    flat = tokenizer.bottleneck.quantizer.project_in(z.flatten(2)).transpose(1, 2)  # (B, N, D)
    half, offset, _ = _grid(fsq)
    y = (unrounded(fsq, flat) + offset) / half  # (B, N, D), levels at -1 .. 1
    return y.transpose(1, 2).reshape(b, -1, t, h, w)


def _levels(fsq: FSQ, z: torch.Tensor) -> torch.Tensor:
    """Latents (B, D, t, h, w) -> the nearest level per channel, as integers -L//2 .. L-1-L//2."""
    half, offset, width = (g.view(1, -1, 1, 1, 1).to(z.device) for g in _grid(fsq))
    return (z.float() * half - offset).round().clamp(-width, 2 * half - width)


def round_latents(tokenizer: VideoTokenizer, z: torch.Tensor) -> torch.Tensor:
    """Latents snapped to the nearest FSQ level, still on the [-1, 1] scale: (B, D, t, h, w)."""
    fsq = _fsq(tokenizer)
    half, offset, _ = (g.view(1, -1, 1, 1, 1).to(z.device) for g in _grid(fsq))
    return (_levels(fsq, z) + offset) / half


def latents_to_codes(tokenizer: VideoTokenizer, z: torch.Tensor) -> torch.Tensor:
    """Latents (B, D, t, h, w) -> int64 codes (B, t, h*w), rounded to the nearest level."""
    fsq = _fsq(tokenizer)
    width = _grid(fsq)[2].view(1, -1, 1, 1, 1).to(z.device)
    b, _, t, h, w = z.shape
    codes = (_levels(fsq, z) / width).permute(0, 2, 3, 4, 1)  # (B, t, h, w, D), FSQ's normalized codes
    return fsq.codes_to_indices(codes).long().reshape(b, t, h * w)


@torch.no_grad()
def decode_latents(tokenizer: VideoTokenizer, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Latents (B, D, t, h, w) -> video (B, 3, T, height, width) in [-1, 1], through the codes."""
    return tokenizer.decode(latents_to_codes(tokenizer, z), height, width)


__all__ = ["decode_latents", "encode_latents", "latents_to_codes", "round_latents", "unrounded"]
