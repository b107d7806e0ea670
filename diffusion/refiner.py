"""The refiner: a small conditional video denoiser in pixel space that cleans decoded frames.

It is trained on pairs ``(decode(encode(x)), x)``: given the tokenizer's decoded clip as the
condition, it samples the clean clip with a few Euler steps of the shared flow-matching process
(`videolm.diffusion.process.FlowMatching`). It sees pixels only, so it refines any decoded video
of a size it can tile (H, W multiples of `RefinerConfig.multiple`, any T).

Network: a two-level U-Net built to be cheap on a CPU. Each frame is pixel-unshuffled by
``patch`` (space-to-depth), so no convolution runs at full resolution; blocks are factorized
space-time convolutions, (1,3,3) then (3,1,1) (as in R(2+1)D, Tran et al. 2018,
arXiv:1711.11248), with the time step injected by FiLM (scale and shift per channel).

Parametrization. The network predicts a residual on the condition: the clean estimate is
``x0 = cond + r`` and the velocity follows from it, ``v = (x_t - x0) / t``. The head starts at
zero, so an untrained refiner returns its condition, and the first Euler step from pure noise
already lands on the network's conditional mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from videolm.core.config import check_keys
from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.core.saving import CONFIG_NAME, Pretrained
from videolm.diffusion.process import FlowMatching, seeded_noise
from videolm.tokenizers.video import frames_2d, frames_3d, to_frames, to_tensor


@dataclass
class RefinerConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64])  # per level: at H/patch, H/(2 patch), ...
    blocks: list[int] = field(default_factory=lambda: [1, 3])  # per level (twice, down and up, above the bottom)
    patch: int = 2  # space-to-depth factor of the input (and depth-to-space of the output)
    time_dim: int = 64  # width of the time-step embedding
    steps: int = 4  # default Euler steps of `refine`
    shift: float = 1.0  # time-grid shift for sampling (FlowMatching.shift)
    t_min: float = 0.02  # v = (x_t - x0) / max(t, t_min)
    bridge: float | None = None  # None: the flow starts at pure noise; s: at cond + s * noise (InDI)
    # Sampling temperature: the starting noise is scaled by this. 1 draws full samples from the
    # learned distribution; lower values follow the flow from nearer the prior's mode, trading
    # variety (which a refiner does not want) for fidelity to the condition.
    noise_scale: float = 1.0
    # Uncertainty gate (see `gate`). None: off. tau, in levels of 255: where the refined clip and a
    # second draw at noise scale ``gate_noise`` differ by tau or more (channel mean, max over a
    # ``gate_kernel`` x ``gate_kernel`` window of each frame), the decoded pixels are kept; below
    # tau the refinement is blended in linearly. Doubles the refiner's cost.
    gate_tau: float | None = None
    gate_noise: float = 0.5
    gate_kernel: int = 9

    def __post_init__(self):
        if not self.channels or len(self.channels) != len(self.blocks):
            raise UsageError("refiner: channels and blocks need one entry per level")
        if self.patch < 1 or self.steps < 1 or min(self.channels) < 4:
            raise UsageError("refiner: patch and steps must be >= 1, channels >= 4")
        if not 0.0 <= self.noise_scale <= 1.0:
            raise UsageError(f"refiner: noise_scale={self.noise_scale} must be in [0, 1]")
        if self.gate_tau is not None and self.gate_tau < 0:
            raise UsageError(f"refiner: gate_tau={self.gate_tau} must be >= 0 (0 or null: no gate)")
        if not 0.0 < self.gate_noise <= 1.0 or self.gate_kernel < 1 or self.gate_kernel % 2 == 0:
            raise UsageError(f"refiner: gate_noise={self.gate_noise} must be in (0, 1], "
                             f"gate_kernel={self.gate_kernel} an odd number >= 1")

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return self.patch * 2 ** (len(self.channels) - 1)

    @classmethod
    def from_name(cls, name: str, **overrides) -> RefinerConfig:
        if name not in PRESETS:
            raise UsageError(f"unknown refiner preset {name!r}; choose from {', '.join(PRESETS)}")
        check_keys(cls, overrides, "model")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "debug": {"channels": [8, 16], "blocks": [1, 1], "time_dim": 16},
    "tiny": {},  # the field defaults: the shipped refiner
}


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c // 4), c)


class Block(nn.Module):
    """x + time_conv(silu(space_conv(silu(FiLM(norm(x), t)))))."""

    def __init__(self, c: int, time_dim: int):
        super().__init__()
        self.norm = _norm(c)
        self.film = nn.Linear(time_dim, 2 * c)
        self.space = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1))
        self.time = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # (B, C, T, h, w), (B, E)
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)  # (B, C, 1, 1, 1) each
        h = self.norm(x) * (1 + scale) + shift
        return x + self.time(F.silu(self.space(F.silu(h))))


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))  # (dim/2,)
    angles = 1000.0 * t.float()[:, None] * freqs  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Refiner(nn.Module, Pretrained):
    """``forward(x_t, t, cond) -> v``: x_t and cond (B, 3, T, H, W) in [-1, 1] scale, t (B,)."""

    config_class = RefinerConfig
    kind = "refiner"

    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.time_dim), nn.SiLU())
        self.stem = nn.Conv3d(2 * 3 * c.patch**2, ch[0], (1, 3, 3), padding=(0, 1, 1))
        self.down_blocks = nn.ModuleList(
            nn.ModuleList(Block(ch[i], c.time_dim) for _ in range(c.blocks[i])) for i in range(len(ch) - 1))
        self.downs = nn.ModuleList(nn.Conv3d(ch[i], ch[i + 1], (1, 2, 2), stride=(1, 2, 2)) for i in range(len(ch) - 1))
        self.mid = nn.ModuleList(Block(ch[-1], c.time_dim) for _ in range(c.blocks[-1]))
        self.ups = nn.ModuleList(nn.ConvTranspose3d(ch[i + 1], ch[i], (1, 2, 2), stride=(1, 2, 2))
                                 for i in range(len(ch) - 1))
        self.up_blocks = nn.ModuleList(
            nn.ModuleList(Block(ch[i], c.time_dim) for _ in range(c.blocks[i])) for i in range(len(ch) - 1))
        self.head_norm = _norm(ch[0])
        self.head = nn.Conv3d(ch[0], 3 * c.patch**2, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.head.weight)  # untrained: x0 = cond
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():  # and x_t unused until training finds it useful: no noise leaks through
            self.stem.weight[:, : 3 * c.patch**2] = 0

    def residual(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network proper: x0 - cond, (B, 3, T, H, W)."""
        b, p = x_t.shape[0], self.config.patch
        emb = self.time_mlp(time_embedding(t, self.config.time_dim).to(x_t.dtype))  # (B, E)
        h = frames_3d(F.pixel_unshuffle(frames_2d(torch.cat([x_t, cond], 1)), p), b)  # (B, 6p², T, H/p, W/p)
        h = self.stem(h)  # (B, C0, T, H/p, W/p)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downs):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)  # (B, C[i+1], T, h/2, w/2)
        for block in self.mid:
            h = block(h, emb)
        for blocks, up in zip(reversed(self.up_blocks), reversed(self.ups)):
            h = up(h) + skips.pop()  # (B, C[i], T, 2h, 2w)
            for block in blocks:
                h = block(h, emb)
        r = self.head(F.silu(self.head_norm(h)))  # (B, 3p², T, H/p, W/p)
        return frames_3d(F.pixel_shuffle(frames_2d(r), p), b)  # (B, 3, T, H, W)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return cond + self.residual(x_t, t, cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The velocity implied by the clean estimate, (B, 3, T, H, W)."""
        tt = t.to(x_t.dtype).clamp_min(self.config.t_min).view(-1, 1, 1, 1, 1)
        return (x_t - self.predict_x0(x_t, t, cond)) / tt

    def check_shape(self, x: torch.Tensor) -> None:
        m = self.config.multiple
        if x.ndim != 5 or x.shape[1] != 3:
            raise UsageError(f"refiner: video must be (B, 3, T, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % m or x.shape[-1] % m:
            raise UsageError(f"refiner: frames of {x.shape[-2]}x{x.shape[-1]}: need H and W multiples of {m}")


def start_point(config: RefinerConfig, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Where the flow starts (t = 1): pure noise, or with ``bridge`` the condition plus a little noise,
    so that the flow runs from decoded to clean frames (Delbracio & Milanfar 2023, arXiv:2303.11435)."""
    return noise if config.bridge is None else cond + config.bridge * noise


GATE_SEED = 1_000_003  # the gate's second draw for clip i is seeded seed + i + GATE_SEED


def gate(cond: torch.Tensor, refined: torch.Tensor, other: torch.Tensor, tau: float, kernel: int) -> torch.Tensor:
    """Keep the decoded pixels where the refiner is unsure of its answer.

    ``refined`` and ``other`` are two of the refiner's draws for the condition ``cond`` (B, 3, T, H, W),
    all in [-1, 1]. Where they differ by ``tau`` levels of 255 or more (mean over colour channels, then
    the maximum over a ``kernel`` x ``kernel`` window of the frame) the result is ``cond``; where they
    agree it is ``refined``; in between, the linear blend. Draws that disagree mark an object whose
    shape the decode leaves open: the refiner would pick one, and the pick is not what the decode
    shows (docs/diffusion.md, "The uncertainty gate")."""
    spread = (refined - other).abs().mean(1) * 127.5  # (B, T, H, W), in levels of 255
    r = kernel // 2  # the window's maximum, taken as a maximum over rows and then over columns (the same, and cheaper)
    spread = F.max_pool3d(F.max_pool3d(spread[:, None], (1, kernel, 1), 1, (0, r, 0)), (1, 1, kernel), 1, (0, 0, r))
    keep = (1 - spread / tau).clamp(0, 1)
    return cond + keep * (refined - cond)


@torch.no_grad()
def refine(model: Refiner, frames, steps: int | None = None, seed: int = 0, batch_size: int = 8,
           noise_scale: float | None = None, gate_tau: float | None = None):
    """Refine decoded clips. ``frames``: uint8 (B, T, H, W, 3) (numpy or torch) or float
    (B, 3, T, H, W) in [-1, 1]; returns the same kind. Clip i uses noise seeded ``seed + i``,
    scaled by ``noise_scale`` (default: the config's): deterministic, and the same whatever
    ``batch_size``. ``gate_tau`` (default: the config's; 0 turns it off) applies `gate` with a
    second draw per clip, made in the same batch. ``batch_size`` counts the network's rows, so
    with the gate each batch holds half as many clips (at least one): memory stays where the
    caller set it, and on a CPU a batch of 16 rows costs more per row than one of 8."""
    is_frames = not torch.is_tensor(frames) or frames.dtype == torch.uint8
    if is_frames:
        arr = frames.cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 5 or arr.shape[-1] != 3:
            raise UsageError(f"refiner: frames must be uint8 (B, T, H, W, 3), got {arr.dtype} {arr.shape}")
        x = to_tensor(arr)  # (B, 3, T, H, W)
    else:
        x = frames
    model.check_shape(x)
    steps = steps or model.config.steps
    scale = model.config.noise_scale if noise_scale is None else noise_scale
    if not 0.0 <= scale <= 1.0:
        raise UsageError(f"refiner: noise scale {scale} must be in [0, 1]")
    tau = model.config.gate_tau if gate_tau is None else gate_tau
    if tau is not None and tau < 0:
        raise UsageError(f"refiner: gate tau {tau} must be >= 0 (0: no gate)")
    process = FlowMatching(shift=model.config.shift)
    param = next(model.parameters())
    outs = []
    clips = max(1, batch_size // 2) if tau else batch_size  # clips per batch: the gate's draws take two rows each
    for start in range(0, x.shape[0], clips):
        cond = x[start : start + clips].to(param.device, param.dtype)  # (b, 3, T, H, W)
        seeds = list(range(seed + start, seed + start + len(cond)))  # clip i: seed + i, whatever the batch
        noise = scale * seeded_noise(seeds, tuple(cond.shape[1:]))
        if tau:  # the gate's draws ride in the same batch
            other = model.config.gate_noise * seeded_noise([s + GATE_SEED for s in seeds], tuple(cond.shape[1:]))
            noise, cond = torch.cat([noise, other]), torch.cat([cond, cond])
        noise = start_point(model.config, cond, noise.to(param.device, param.dtype))
        out = process.sample(model, noise, cond, steps=steps).clamp(-1, 1)
        if tau:
            half = len(out) // 2
            out = gate(cond[:half], out[:half], out[half:], tau, model.config.gate_kernel)
        outs.append(out.float().cpu())
    out = torch.cat(outs)  # (B, 3, T, H, W)
    if not is_frames:
        return out.to(frames.device, frames.dtype)
    out_frames = to_frames(out)  # (B, T, H, W, 3) uint8
    return torch.from_numpy(out_frames) if torch.is_tensor(frames) else out_frames


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_refiner(name_or_dir: str | Path = "shapes-64") -> Refiner:
    """A refiner folder, or the ``refiner/`` of a model bundle (a folder or a shipped name)."""
    folder = resolve_model(name_or_dir)
    if not (folder / CONFIG_NAME).exists() and (folder / "refiner").is_dir():
        folder = folder / "refiner"
    if not (folder / CONFIG_NAME).exists():
        raise UsageError(f"--model {name_or_dir}: no refiner there (no {CONFIG_NAME} in {folder})")
    return Refiner.from_pretrained(folder)


@torch.no_grad()
def roundtrip(tokenizer, frames: np.ndarray) -> np.ndarray:
    """decode(encode(x)) of uint8 clips (B, T, H, W, 3), as uint8 (B, T, H, W, 3)."""
    x = to_tensor(frames)  # (B, 3, T, H, W)
    return to_frames(tokenizer.decode(tokenizer.encode(x), x.shape[-2], x.shape[-1]))


def make_pairs(clips: Dataset, tokenizer, batch_size: int = 16,
               progress: Callable[[int], object] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded, clean) uint8 tensors (N, T, H, W, 3) of every clip."""
    decoded, clean = [], []
    for start in range(0, len(clips), batch_size):
        frames = np.stack([clips[i]["video"] for i in range(start, min(start + batch_size, len(clips)))])
        decoded.append(torch.from_numpy(roundtrip(tokenizer, frames)))
        clean.append(torch.from_numpy(frames))
        if progress:
            progress(len(frames))
    return torch.cat(decoded), torch.cat(clean)


__all__ = ["PRESETS", "Refiner", "RefinerConfig", "gate", "num_parameters", "refine", "start_point", "time_embedding", "load_refiner", "make_pairs", "roundtrip"]
