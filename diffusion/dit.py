"""The Sora-style baseline: a text-conditioned diffusion transformer over spacetime latent patches.

DiT (Peebles & Xie 2023, arXiv:2212.09748) on the video tokenizer's continuous FSQ latents
(`videolm.diffusion.latents`), patched in space and time as in Sora's technical report:

- the latent (B, D, t, h, w) is cut into ``patch`` = (pt, ph, pw) blocks, each a token, with fixed
  3D sine-cosine positions; the default 1x2x2 makes 80 tokens of a 5x8x8 latent;
- the caption's sentencepiece ids are embedded (plus a learned begin token, which is all an empty
  caption has), run through ``text_layers`` plain transformer layers and put in the same sequence
  as the video tokens (in-context, an MMDiT-lite joint attention: SD3, Esser et al. 2024), so each
  video token can attend to the words of "red circle" and "blue square" separately;
- the timestep and the pooled caption drive adaLN-Zero in every block: shift, scale and a gate
  per sublayer from one zero-initialised linear, so an untrained model predicts exactly 0;
- ``extend`` and other partial tasks: the input of each patch also holds the given latents (zero
  where nothing is given) and a mask channel (1 where given), so one network does t2v and extend.

The network works on normalized latents, ``(z - latent_mean) / latent_std`` per channel, with the
statistics of its training data stored in its config (so a saved folder is self-describing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from videolm.core.config import check_keys
from videolm.core.errors import ConfigError
from videolm.core.saving import Pretrained


@dataclass
class DiTConfig:
    latent_channels: int = 4  # the FSQ's channels
    latent_shape: tuple[int, int, int] = (5, 8, 8)  # (t, h, w) of a 17x64x64 clip's latent
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    text_vocab: int = 512  # the sentencepiece model's size; ids >= it are the begin and pad tokens
    text_len: int = 32  # most text tokens, the begin token included
    text_layers: int = 1
    latent_mean: list[float] = field(default_factory=lambda: [0.0] * 4)
    latent_std: list[float] = field(default_factory=lambda: [1.0] * 4)

    def __post_init__(self):
        self.latent_shape, self.patch = tuple(self.latent_shape), tuple(self.patch)
        if any(s % p for s, p in zip(self.latent_shape, self.patch)):
            raise ConfigError(f"DiTConfig: patch {self.patch} does not divide the latent {self.latent_shape}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ConfigError(f"DiTConfig: width={self.width} must split into heads={self.heads} of even size")
        if len(self.latent_mean) != self.latent_channels or len(self.latent_std) != self.latent_channels:
            raise ConfigError(f"DiTConfig: latent_mean/latent_std need {self.latent_channels} values")
        if min(self.depth, self.text_len, self.text_vocab) < 1 or self.text_layers < 0:
            raise ConfigError("DiTConfig: depth, text_len and text_vocab must be >= 1, text_layers >= 0")

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(self.latent_shape, self.patch))

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * math.prod(self.patch)

    @property
    def begin_id(self) -> int:
        return self.text_vocab

    @property
    def pad_id(self) -> int:
        return self.text_vocab + 1

    @classmethod
    def from_name(cls, name: str, **overrides) -> DiTConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown DiT preset {name!r}; choose from {', '.join(PRESETS)}")
        check_keys(cls, overrides, "model")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "debug": {"width": 48, "depth": 2, "heads": 2, "text_layers": 1},
    # The field defaults, 4.8 M parameters, ~40 clips/s of training on one CPU thread. In 5-minute
    # trials on one thread it beat `small` (twice the steps in the same time, the same loss per step)
    # and a 1x1x1-patch model of 128 wide (320 video tokens) on loss and t2v color.
    "tiny": {},
    "small": {"width": 256, "depth": 8, "heads": 4},  # 10.8 M: the shipped LM's size, ~20 clips/s
    "base": {"width": 384, "depth": 12, "heads": 6, "text_layers": 2},
}


# ------------------------------------------------------------------------------------ pieces


def sincos_1d(dim: int, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """(N,) positions -> (N, dim) sine-cosine features."""
    freqs = torch.exp(-math.log(base) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = pos.double()[:, None] * freqs[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], -1).float()


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """(t*h*w, dim): an even third of the features for each axis (zeros pad the rest), tokens in (t, h, w) order."""
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    feats = torch.cat([sincos_1d(dim // 6 * 2, a.flatten()) for a in (t, h, w)], -1)  # (N, 3 * (dim // 6 * 2))
    return F.pad(feats, (0, dim - feats.shape[1]))


def timestep_features(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim), on DiT's 0..1000 scale."""
    return sincos_1d(dim, t.float() * 1000).to(t.device)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # x (B, N, C), shift/scale (B, C)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.RMSNorm(width // heads)  # QK-norm keeps the logits tame (SD3)
        self.k_norm = nn.RMSNorm(width // heads)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, N, C), mask (B, 1, 1, N)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, c/H) each
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=mask)  # (B, H, N, c/H)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm attention + MLP; with ``c`` given, adaLN-Zero: LayerNorm without affine, then
    shift/scale from ``c``, and each sublayer's output gated by a value from ``c`` (zero at init)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, modulated: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not modulated, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not modulated, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width)) if modulated else None
        if modulated:
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x), mask)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, -1)  # (B, C) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


# ------------------------------------------------------------------------------------ model


class DiT(nn.Module, Pretrained):
    """``velocity = dit(x_t, t, text, given, given_mask)`` over normalized latents (B, D, t, h, w)."""

    config_class = DiTConfig
    kind = "dit"

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.patch_in = nn.Linear((2 * cfg.latent_channels + 1) * math.prod(cfg.patch), d)  # x_t, given, mask
        self.register_buffer("video_pos", sincos_3d(d, cfg.grid), persistent=False)  # (Nv, C) at the trained grid
        self.text_embed = nn.Embedding(cfg.text_vocab + 2, d, padding_idx=cfg.pad_id)
        self.text_pos = nn.Parameter(torch.zeros(cfg.text_len, d))
        self.text_blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, False) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(d)
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.pool_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, True) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.patch_out = nn.Linear(d, cfg.patch_dim)
        self.register_buffer("mean", torch.tensor(cfg.latent_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latent_std).view(1, -1, 1, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_embed.weight, std=0.02)
        nn.init.normal_(self.text_pos, std=0.02)
        for ada in [b.ada[1] for b in self.blocks] + [self.final_ada[1], self.patch_out]:  # adaLN-Zero
            nn.init.zeros_(ada.weight)
            nn.init.zeros_(ada.bias)

    # -------------------------------------------------------------------------- latent space

    def normalize(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, t, h, w) tokenizer scale -> model scale
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def grid_of(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The patch grid of latents (B, K, t, h, w): any size the patch divides (the positions
        follow the grid, as Sora's spacetime patches do)."""
        shape = tuple(x.shape[2:])
        if len(shape) != 3 or any(s % p for s, p in zip(shape, self.config.patch)):
            raise ConfigError(f"latents of shape {shape}: the DiT's patch {self.config.patch} must divide (t, h, w)")
        return tuple(s // p for s, p in zip(shape, self.config.patch))

    def positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(Nv, C) positional features of a patch grid: sine-cosine of each axis, for any grid."""
        if grid == self.config.grid:
            return self.video_pos
        return sincos_3d(self.config.width, grid).to(self.video_pos.device)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, t, h, w) -> (B, Nv, K*pt*ph*pw)
        (pt, ph, pw), (gt, gh, gw) = self.config.patch, self.grid_of(x)
        b, k = x.shape[:2]
        x = x.reshape(b, k, gt, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, gt, gh, gw, K, pt, ph, pw)
        return x.reshape(b, gt * gh * gw, -1)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B, Nv, D*pt*ph*pw) -> (B, D, t, h, w) on ``grid`` (default: the trained one)."""
        (pt, ph, pw), (gt, gh, gw) = self.config.patch, grid or self.config.grid
        b = x.shape[0]
        x = x.reshape(b, gt, gh, gw, -1, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, D, gt, pt, gh, ph, gw, pw)
        return x.reshape(b, -1, gt * pt, gh * ph, gw * pw)

    # -------------------------------------------------------------------------- forward

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text ids (B, L) (begin token first, pads after) -> tokens (B, L, C), key mask (B, 1, 1, L), pooled (B, C)."""
        if text.shape[1] > self.config.text_len:
            raise ConfigError(f"text of {text.shape[1]} tokens is longer than the DiT's text_len={self.config.text_len}")
        keep = text != self.config.pad_id  # (B, L)
        mask = keep[:, None, None, :]
        h = self.text_embed(text) + self.text_pos[:text.shape[1]]  # (B, L, C)
        for block in self.text_blocks:
            h = block(h, mask)
        h = self.text_norm(h)
        pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)  # (B, C)
        return h, mask, pooled

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, given: torch.Tensor | None = None,
                given_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, D, t, h, w) noisy normalized latents, t (B,) in [0, 1], text (B, L) ids; given (B, D, t, h, w)
        normalized latents and given_mask (B, 1, t, h, w) in {0, 1}, or None for nothing given.
        Returns the predicted velocity (B, D, t, h, w)."""
        if x.ndim != 5 or x.shape[1] != self.config.latent_channels:
            raise ConfigError(f"latents {tuple(x.shape[1:])} do not fit the DiT's {self.config.latent_channels} "
                              "channels (B, D, t, h, w)")
        grid = self.grid_of(x)
        if given is None:
            given, given_mask = torch.zeros_like(x), x.new_zeros(x.shape[0], 1, *x.shape[2:])
        given_mask = given_mask.to(x.dtype)
        inp = torch.cat([x, given * given_mask, given_mask], 1)  # (B, 2D+1, t, h, w)
        video = self.patch_in(self.patchify(inp)) + self.positions(grid)  # (B, Nv, C)
        words, text_mask, pooled = self.encode_text(text)  # (B, L, C), (B, 1, 1, L), (B, C)
        c = self.time_mlp(timestep_features(t, 256).to(x.dtype)) + self.pool_mlp(pooled)  # (B, C)
        h = torch.cat([words, video], 1)  # (B, L + Nv, C)
        mask = torch.cat([text_mask, text_mask.new_ones(x.shape[0], 1, 1, video.shape[1])], -1)  # (B, 1, 1, L + Nv)
        for block in self.blocks:
            h = block(h, mask, c)
        shift, scale = self.final_ada(c).chunk(2, -1)
        out = self.patch_out(modulate(self.final_norm(h[:, words.shape[1]:]), shift, scale))  # (B, Nv, D*p)
        return self.unpatchify(out, grid)


def text_batch(ids: list[list[int]], config: DiTConfig, length: int | None = None) -> torch.Tensor:
    """Captions' sentencepiece ids -> (B, L) rows ``[begin, ids..., pad...]``; an empty list is the
    null (unconditional) caption. L is the longest row unless ``length`` is given."""
    rows = [[config.begin_id, *row] for row in ids]
    longest = max(len(r) for r in rows)
    length = length or longest
    if longest > config.text_len or longest > length:
        raise ConfigError(f"a caption of {longest - 1} tokens is longer than the DiT takes ({config.text_len - 1})")
    return torch.tensor([r + [config.pad_id] * (length - len(r)) for r in rows], dtype=torch.long)


def null_text(text: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    """(B, L) -> the same shape holding only the begin token: the unconditional caption."""
    out = torch.full_like(text, config.pad_id)
    out[:, 0] = config.begin_id
    return out


__all__ = ["PRESETS", "DiT", "DiTConfig", "null_text", "text_batch"]
