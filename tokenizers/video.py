"""The video tokenizer: a causal 3D CNN autoencoder with a discrete bottleneck (MAGVIT-v2 style).

17x64x64 RGB -> 5x8x8 codes (4x in time, 8x in space); an image is a one-frame video -> 1x8x8.
Any H, W divisible by 8 and T = 1 + 4k work with the same weights (the network is fully
convolutional).

Where the compute goes. Each frame is brought to H/8 by three cheap stride-2 2D convolutions
(and mirrored back by transposed ones); the 3D (space-time) convolutions run only at H/8,
where they cost little. This keeps the tokenizer trainable on a CPU, which full-resolution 3D
convolutions are not. (An earlier design rearranged pixels by space-to-depth with 1x1
convolutions; this one learns as fast per step and runs about 1.6x faster.)

Causality. Every temporal convolution is padded only at the front, and normalization is per frame,
so latent frame j sees frames <= 4j and nothing later. Hence the contract `extend` relies on:
the codes of a clip's first 1 + 4k frames equal the first 1 + k latent frames of the whole clip's
codes. Frame 0 is encoded on its own (latent frame 0 sees frame 0 only), so images and videos
share one tokenizer.

Two bottlenecks, chosen by `VideoTokenizerConfig.architecture`:
- "magvit2": one code map per latent frame at H/8 x W/8, quantized by FSQ (default), LFQ or VQ.
- "vqvae2": hierarchical, after VQ-VAE-2 (Razavi et al. 2019, arXiv:1906.00446): a top map at half
  the bottom's spatial size is quantized first, decoded, and conditions the bottom map; tokens are
  laid out top-then-bottom per latent frame. The codebook is split: top codes take the first half
  of the id range, bottom codes the second, so both fit one vocabulary range.

Codes are returned flat per latent frame: ``(B, t, n)`` with n tokens per latent frame laid out
rows then columns (``tokens_per_frame(H, W)`` gives n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videolm.core.errors import UsageError
from videolm.core.saving import Pretrained, TokenizerOutput
from videolm.tokenizers.quantize import Quantizer

TIME_DOWN = 4
SPACE_DOWN = 8


MAX_CODES = 2**20  # a codebook larger than this is a mistake in a config, not a tokenizer


@dataclass
class VideoTokenizerConfig:
    architecture: Literal["magvit2", "vqvae2"] = "magvit2"
    quantizer: Literal["lfq", "fsq", "vq"] = "fsq"
    codebook_size: int = 4096  # for vqvae2: split evenly between the top and bottom maps
    channels: list[int] = field(default_factory=lambda: [32, 64, 96])  # at H/2, H/4, H/8
    blocks_2d: list[int] = field(default_factory=lambda: [0, 0, 0])  # per-frame residual blocks per level
    blocks_3d: int = 0  # causal space-time residual blocks per temporal level (at H/8)
    latent_channels: int = 96  # width of the code map before and after quantization
    entropy_weight: float = 0.1  # LFQ
    commitment_weight: float = 0.25  # LFQ / VQ
    quantizer_norm: bool = False  # RMS-normalize each token's vector before quantizing
    lfq_groups: int = 1  # LFQ: factorize the entropy loss over this many sub-codebooks
    lfq_spherical: bool = False  # LFQ: project onto the sphere first (BSQ, Zhao et al. 2024)

    def __post_init__(self):
        if len(self.channels) != 3 or len(self.blocks_2d) != 3:
            raise UsageError("channels and blocks_2d need 3 entries (for H/2, H/4, H/8)")
        if not 2 <= self.codebook_size <= MAX_CODES:
            raise UsageError(f"codebook_size={self.codebook_size}: from 2 to {MAX_CODES} codes")
        if self.architecture == "vqvae2" and self.codebook_size % 2:
            raise UsageError("vqvae2 splits the codebook in two: codebook_size must be even")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "VideoTokenizerConfig":
        if name not in PRESETS:
            raise UsageError(f"unknown video tokenizer preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "debug": {"channels": [8, 16, 16], "blocks_2d": [0, 1, 0], "blocks_3d": 1, "latent_channels": 16},
    # The field defaults. Lean on purpose: residual blocks slowed learning per step and per second
    # alike on a CPU. FSQ is the default quantizer because LFQ, trained the same way, falls far
    # behind it here; LFQ stays one config key away (docs/tokenizers.md has the trials).
    "default": {},
}


# ------------------------------------------------------------------------------------ pixels


def to_tensor(frames) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) or (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    if x.ndim == 4:
        x = x[None]
    return x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def to_frames(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    x = x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


# ------------------------------------------------------------------------------------ blocks


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c // 4) or 1, c)


def frames_2d(x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B*T, C, H, W)
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def frames_3d(x: torch.Tensor, b: int) -> torch.Tensor:  # (B*T, C, H, W) -> (B, C, T, H, W)
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).transpose(1, 2)


class FrameNorm(nn.Module):
    """GroupNorm applied to each frame separately, so no statistic mixes time steps."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)

    def forward(self, x):  # (B, C, T, H, W)
        return frames_3d(self.norm(frames_2d(x)), x.shape[0])


class CausalConv3d(nn.Module):
    """3D convolution that pads time at the front only (replicating frame 0): output t sees inputs <= t."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), time_stride: int = 1):
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad, self.space_pad = kt - 1, (kw // 2, kw // 2, kh // 2, kh // 2)
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(time_stride, 1, 1))

    def forward(self, x):  # (B, C, T, H, W)
        x = F.pad(x, self.space_pad)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class ResBlock2d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):  # (N, C, H, W)
        return x + self.body(x)


class ResBlock3d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(c), CausalConv3d(c, c)
        self.norm2, self.conv2 = FrameNorm(c), CausalConv3d(c, c, kernel=(1, 3, 3))

    def forward(self, x):  # (B, C, T, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class TimeDown(nn.Module):
    """Causal stride-2 convolution in time: 1 + 2k frames -> 1 + k."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = CausalConv3d(c, c, kernel=(3, 3, 3), time_stride=2)

    def forward(self, x):
        return self.conv(x)


class TimeUp(nn.Module):
    """Each frame becomes two (depth-to-time), then the first is dropped: 1 + k frames -> 1 + 2k."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = CausalConv3d(c, 2 * c, kernel=(3, 3, 3))

    def forward(self, x):  # (B, C, t, H, W) -> (B, C, 2t - 1, H, W)
        b, c, t, h, w = x.shape
        y = self.conv(x).reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return y[:, :, 1:]


def _stage(c: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock2d(c) for _ in range(n)))


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """(B, 3, T, H, W) -> (B, latent, 1 + (T-1)/4, H/8, W/8).

    Per frame, three stride-2 4x4 convolutions take the frame to H/8 (each followed by its
    residual blocks); then causal space-time blocks and two stride-2 temporal convolutions.
    """

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.down = nn.ModuleList([nn.Conv2d(3, c0, 4, 2, 1), nn.Conv2d(c0, c1, 4, 2, 1), nn.Conv2d(c1, c2, 4, 2, 1)])
        self.levels = nn.ModuleList([_stage(c, n) for c, n in zip(cfg.channels, cfg.blocks_2d)])
        self.norms = nn.ModuleList([_norm(c) for c in (c0, c1)])
        self.time = nn.Sequential(
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)), TimeDown(c2),
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)), TimeDown(c2),
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)),
        )
        self.out = nn.Sequential(FrameNorm(c2), nn.SiLU(), CausalConv3d(c2, cfg.latent_channels, kernel=(1, 1, 1)))

    def forward(self, x):
        b = x.shape[0]
        h = frames_2d(x)  # (B*T, 3, H, W)
        for i, (down, level) in enumerate(zip(self.down, self.levels)):
            if i:
                h = F.silu(self.norms[i - 1](h))
            h = level(down(h))  # H/2, H/4, H/8
        return self.out(self.time(frames_3d(h, b)))  # (B, latent, t, H/8, W/8)


class Decoder(nn.Module):
    """(B, latent, t, H/8, W/8) -> (B, 3, 1 + 4(t-1), H, W): the encoder mirrored, with
    stride-2 4x4 transposed convolutions back to full resolution."""

    def __init__(self, cfg: VideoTokenizerConfig, in_channels: int | None = None):
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.inp = CausalConv3d(in_channels or cfg.latent_channels, c2, kernel=(1, 3, 3))
        self.time = nn.Sequential(
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)), TimeUp(c2),
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)), TimeUp(c2),
            *(ResBlock3d(c2) for _ in range(cfg.blocks_3d)),
        )
        self.levels = nn.ModuleList([_stage(c, n) for c, n in zip((c2, c1, c0), cfg.blocks_2d[::-1])])
        self.norms = nn.ModuleList([_norm(c) for c in (c2, c1, c0)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ConvTranspose2d(c1, c0, 4, 2, 1),
                                 nn.ConvTranspose2d(c0, 3, 4, 2, 1)])

    def forward(self, z):
        b = z.shape[0]
        h = frames_2d(self.time(self.inp(z)))  # (B*T, c2, H/8, W/8)
        for level, norm, up in zip(self.levels, self.norms, self.up):
            h = up(F.silu(norm(level(h))))  # H/4, H/2, H
        return frames_3d(h, b)


# --------------------------------------------------------------------------------- bottlenecks


def _qargs(cfg: VideoTokenizerConfig) -> dict:
    return dict(entropy_weight=cfg.entropy_weight, commitment_weight=cfg.commitment_weight,
                normalize=cfg.quantizer_norm, groups=cfg.lfq_groups, spherical=cfg.lfq_spherical)


class FlatBottleneck(nn.Module):
    """One code map per latent frame (MAGVIT-v2)."""

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        self.quantizer = Quantizer(cfg.quantizer, cfg.latent_channels, cfg.codebook_size,
                                   **_qargs(cfg))
        self.decoder_channels = cfg.latent_channels

    def tokens_per_frame(self, h: int, w: int) -> int:
        return h * w

    def forward(self, z):  # (B, C, t, h, w) -> quantized, codes (B, t, h*w), aux
        q, idx, aux = self.quantizer(z)
        return q, idx.flatten(2), aux

    def codes_to_latents(self, codes, h: int, w: int):  # (B, t, h*w) -> (B, C, t, h, w)
        b, t, _ = codes.shape
        return self.quantizer.indices_to_codes(codes.reshape(b, t, h, w))


class HierarchicalBottleneck(nn.Module):
    """VQ-VAE-2: a top map at half resolution, decoded to condition the bottom map."""

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        c, half = cfg.latent_channels, cfg.codebook_size // 2
        self.half = half
        self.to_top = nn.Sequential(nn.Conv2d(c * 4, c, 1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        self.top_q = Quantizer(cfg.quantizer, c, half, **_qargs(cfg))
        self.top_up = nn.Conv2d(c, c * 4, 3, padding=1)  # then 2x depth-to-space
        self.to_bottom = nn.Conv2d(2 * c, c, 1)
        self.bottom_q = Quantizer(cfg.quantizer, c, half, **_qargs(cfg))
        self.decoder_channels = 2 * c

    def tokens_per_frame(self, h: int, w: int) -> int:
        return (h // 2) * (w // 2) + h * w

    def _upsample_top(self, qt):  # (B, C, t, h/2, w/2) -> (B*t, C, h, w)
        return F.pixel_shuffle(self.top_up(frames_2d(qt)), 2)

    def forward(self, z):
        b, c, t, h, w = z.shape
        if h % 2 or w % 2:
            raise UsageError(f"vqvae2 needs an even latent size, got {h}x{w} (frame size a multiple of 16)")
        top = frames_3d(self.to_top(F.pixel_unshuffle(frames_2d(z), 2)), b)  # (B, C, t, h/2, w/2)
        qt, it, aux_t = self.top_q(top)
        top_feat = self._upsample_top(qt)  # (B*t, C, h, w)
        bottom = frames_3d(self.to_bottom(torch.cat([frames_2d(z), top_feat], 1)), b)
        qb, ib, aux_b = self.bottom_q(bottom)
        codes = torch.cat([it.flatten(2), ib.flatten(2) + self.half], dim=2)  # (B, t, h*w/4 + h*w)
        return self._merge(qb, top_feat, b), codes, aux_t + aux_b

    def _merge(self, qb, top_feat, b):  # -> (B, 2C, t, h, w)
        return torch.cat([qb, frames_3d(top_feat, b)], dim=1)

    def codes_to_latents(self, codes, h: int, w: int):
        b, t, _ = codes.shape
        n_top = (h // 2) * (w // 2)
        it, ib = codes[:, :, :n_top], codes[:, :, n_top:] - self.half
        qt = self.top_q.indices_to_codes(it.reshape(b, t, h // 2, w // 2))
        qb = self.bottom_q.indices_to_codes(ib.reshape(b, t, h, w))
        return self._merge(qb, self._upsample_top(qt), b)


# ---------------------------------------------------------------------------------- the model


class VideoTokenizer(nn.Module, Pretrained):
    """Video (B, 3, T, H, W) in [-1, 1]  <->  codes (B, 1 + (T-1)/4, tokens_per_frame(H, W))."""

    config_class = VideoTokenizerConfig
    kind = "video_tokenizer"

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.bottleneck = (HierarchicalBottleneck if config.architecture == "vqvae2" else FlatBottleneck)(config)
        self.decoder = Decoder(config, self.bottleneck.decoder_channels)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.bottleneck.tokens_per_frame(height // SPACE_DOWN, width // SPACE_DOWN)

    @staticmethod
    def latent_frames(num_frames: int) -> int:
        return 1 + (num_frames - 1) // TIME_DOWN

    @staticmethod
    def check_shape(x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise UsageError(f"video must be (B, 3, T, H, W), got {tuple(x.shape)}")
        _, _, t, h, w = x.shape
        if (t - 1) % TIME_DOWN or h % SPACE_DOWN or w % SPACE_DOWN:
            raise UsageError(f"video of {t}x{h}x{w}: need T = 1 + 4k frames and H, W multiples of 8")

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous (pre-quantization) latents (B, C, t, H/8, W/8), e.g. for a latent diffusion model."""
        self.check_shape(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        q, codes, aux = self.bottleneck(self.encode_latents(x))
        return TokenizerOutput(self.decoder(q), codes, aux)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> int64 codes (B, t, n)."""
        return self.bottleneck(self.encode_latents(x))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """int64 codes (B, t, n) -> video (B, 3, 1 + 4(t-1), height, width) in [-1, 1]."""
        h, w = height // SPACE_DOWN, width // SPACE_DOWN
        if codes.ndim != 3 or codes.shape[2] != self.bottleneck.tokens_per_frame(h, w):
            raise UsageError(f"codes {tuple(codes.shape)} do not fit {height}x{width} frames "
                             f"({self.bottleneck.tokens_per_frame(h, w)} tokens per latent frame)")
        return self.decoder(self.bottleneck.codes_to_latents(codes, h, w)).clamp(-1, 1)
