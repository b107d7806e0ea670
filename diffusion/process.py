"""The one diffusion process that the refiner and the DiT baseline share.

Rectified flow / flow matching (Lipman et al. 2022, arXiv:2210.02747; Liu et al. 2022,
arXiv:2209.03003), as used by Stable Diffusion 3 (Esser et al. 2024, arXiv:2403.03206):

    x_t = (1 - t) * x_0 + t * noise,      t in [0, 1]   (t = 0 data, t = 1 pure noise)
    the denoiser predicts the velocity  v = noise - x_0  (so x_0 = x_t - t * v)

Training draws t from a logit-normal density (SD3's choice: more weight on the middle of the
path) and regresses v with a mean squared error. Sampling integrates dx/dt = v from t = 1 down to
0 with deterministic Euler steps on a (shiftable) time grid; classifier-free guidance mixes the
conditional and unconditional velocities (Ho & Salimans 2022, arXiv:2207.12598).

The denoiser is any callable ``denoiser(x_t, t, cond) -> v`` with ``t`` of shape (B,): the process
knows nothing about pixels, latents, text or the network (the pattern of DiT's ``diffusion/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Starting noise (len(seeds), *shape), each row from its own generator: a sample's noise does
    not depend on the batch it is drawn in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@dataclass
class FlowMatching:
    """Schedule and loss. ``shift`` > 1 spends more sampling steps at high noise (SD3, eq. 23)."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def sample_t(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times (n,) from the logit-normal density."""
        u = torch.randn(n, generator=generator, device=device or "cpu").to(device or "cpu")
        return torch.sigmoid(self.logit_mean + self.logit_std * u)

    @staticmethod
    def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - tt) * x0 + tt * noise

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, cond: Any = None, *, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the predicted velocity. ``weight`` (broadcast to x0) masks or weights
        elements, e.g. zero on latent frames that are given as a condition."""
        t = self.sample_t(x0.shape[0], x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        v = denoiser(self.noised(x0, noise, t), t, cond)
        err = (v.float() - (noise - x0).float()).pow(2)
        if weight is None:
            return err.mean()
        weight = weight.expand_as(err).float()
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

    def timesteps(self, steps: int, t_start: float = 1.0) -> torch.Tensor:
        """The sampling grid, ``steps + 1`` times from ``t_start`` down to 0, warped by ``shift``."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t = torch.linspace(t_start, 0.0, steps + 1)
        return self.shift * t / (1 + (self.shift - 1) * t)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, noise: torch.Tensor, cond: Any = None, **kwargs) -> torch.Tensor:
        """`integrate` without gradients: what generation runs."""
        return self.integrate(denoiser, noise, cond, **kwargs)

    def integrate(self, denoiser: Denoiser, noise: torch.Tensor, cond: Any = None, *, steps: int = 8,
                  uncond: Any = None, cfg_scale: float = 1.0, x_start: torch.Tensor | None = None,
                  t_start: float = 1.0, callback: Callable[[int], None] | None = None) -> torch.Tensor:
        """Deterministic Euler integration from noise to data; returns x_0. Differentiable (training
        through the sampler, as the refiner's consistency stage does); `sample` runs it without
        gradients.

        - ``cfg_scale`` != 1 with ``uncond`` given: v = v_u + s * (v_c - v_u), both halves in one batch
          when ``cond`` and ``uncond`` are tensors (else two calls).
        - ``t_start`` < 1 starts part-way (SDEdit, Meng et al. 2021): x = noised(x_start, noise, t_start).
        """
        grid = self.timesteps(steps, t_start)
        x = noise if x_start is None else self.noised(x_start, noise, torch.full((noise.shape[0],), float(grid[0])))
        guided = uncond is not None and cfg_scale != 1.0
        for i in range(steps):
            t, t_next = float(grid[i]), float(grid[i + 1])
            tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
            if not guided:
                v = denoiser(x, tb, cond)
            elif torch.is_tensor(cond) and torch.is_tensor(uncond):
                v_c, v_u = denoiser(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([cond, uncond])).chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            else:
                v_c, v_u = denoiser(x, tb, cond), denoiser(x, tb, uncond)
                v = v_u + cfg_scale * (v_c - v_u)
            x = x + (t_next - t) * v
            if callback is not None:
                callback(i)
        return x

    @staticmethod
    def evaluations(steps: int, cfg_scale: float = 1.0, guided: bool = True) -> int:
        """Network evaluations per sample for a run of ``steps`` (guidance doubles them)."""
        return steps * (2 if guided and cfg_scale != 1.0 else 1)
