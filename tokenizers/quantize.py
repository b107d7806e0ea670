"""One interface over vector-quantize-pytorch's quantizers: LFQ, FSQ and VQ.

``quantized, indices, aux_loss = q(z)`` with ``z`` channel-first ``(B, C, *spatial)``; indices are
int64 ``(B, *spatial)``; ``q.indices_to_codes(indices)`` gives back ``(B, C, *spatial)``. The
quantizer always runs in fp32, also under autocast: the library's quantizers are known to lose
codes or produce NaN in bf16/fp16.

- LFQ, lookup-free quantization (MAGVIT-v2, Yu et al. 2023, arXiv:2310.05737): each of log2(K)
  channels is quantized to ±1; an entropy loss keeps the code usage spread out. `groups` > 1
  factorizes that loss over sub-codebooks (groups = bits: one balance term per bit), which is far
  cheaper than a softmax over all 2^bits codes and, on Shapes, learned faster too.
- FSQ, finite scalar quantization (Mentzer et al. 2023, arXiv:2309.15505): each channel is
  rounded to a few levels; no auxiliary loss, no codebook collapse.
- VQ with an EMA codebook, k-means init and dead-code revival (VQ-VAE, van den Oord et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

from videolm.core.errors import ConfigError

# FSQ levels per codebook size, as recommended in the FSQ paper's table 1 (2^12 -> 8,5,5,5 is
# 1000 codes; these products are exact powers of two so they fill the vocabulary's range).
FSQ_LEVELS = {1024: [8, 8, 4, 4], 2048: [8, 8, 8, 4], 4096: [8, 8, 8, 8], 256: [8, 8, 4]}


class Quantizer(nn.Module):
    def __init__(self, kind: str, dim: int, codebook_size: int, entropy_weight: float = 0.1,
                 commitment_weight: float = 0.25, normalize: bool = False, groups: int = 1, spherical: bool = False):
        super().__init__()
        self.kind, self.codebook_size, self.normalize, self.groups = kind, codebook_size, normalize, groups
        with torch.device("cpu"):  # the library computes its tables eagerly: never on the meta device
            self._build(kind, codebook_size, entropy_weight, commitment_weight, groups, spherical)
        self.project_in = nn.Conv1d(dim, self.code_dim, 1)
        self.project_out = nn.Conv1d(self.code_dim, dim, 1)

    def _build(self, kind: str, codebook_size: int, entropy_weight: float, commitment_weight: float, groups: int,
               spherical: bool) -> None:
        if kind == "lfq":
            bits = int(math.log2(codebook_size))
            if 2**bits != codebook_size:
                raise ConfigError(f"LFQ needs a power-of-two codebook, got {codebook_size}")
            if bits % groups:
                raise ConfigError(f"LFQ groups={groups} must divide the {bits} bits of a {codebook_size}-code book")
            self.code_dim, self.group_bits = bits, bits // groups
            # groups > 1 factorizes the entropy loss over sub-codebooks of bits/groups bits each
            # (cheaper than the full 2^bits-way softmax); the code index is the same 12-bit word.
            self.q = LFQ(dim=bits, codebook_size=2**self.group_bits, num_codebooks=groups,
                         entropy_loss_weight=entropy_weight, commitment_loss_weight=commitment_weight,
                         diversity_gamma=1.0, spherical=spherical, keep_num_codebooks_dim=True)
        elif kind == "fsq":
            levels = FSQ_LEVELS.get(codebook_size)
            if levels is None:
                raise ConfigError(f"FSQ levels for {codebook_size} codes are not defined; use one of {sorted(FSQ_LEVELS)}")
            self.code_dim = len(levels)
            self.q = FSQ(levels=levels, dim=len(levels))
        elif kind == "vq":
            self.code_dim = 32
            self.q = VectorQuantize(dim=self.code_dim, codebook_size=codebook_size, decay=0.99, kmeans_init=True,
                                    kmeans_iters=10, threshold_ema_dead_code=2, commitment_weight=commitment_weight)
        else:
            raise ConfigError(f"unknown quantizer {kind!r}: choose lfq, fsq or vq")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = z.shape  # (B, C, *spatial)
        flat = self.project_in(z.flatten(2))  # (B, D, N)
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = flat.float().transpose(1, 2)  # (B, N, D)
            if self.normalize:  # unit RMS per token, so the code levels are spanned from the start
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            if self.kind == "fsq":
                q, idx = self.q(x)
                aux = x.new_zeros(())
            else:
                q, idx, aux = self.q(x)
                if self.kind == "lfq":  # (B, N, groups) sub-codes -> one index, first group in the high bits
                    idx = self._join(idx)
        out = self.project_out(q.transpose(1, 2).to(flat.dtype))  # (B, C, N)
        return out.reshape(shape), idx.long().reshape(shape[0], *shape[2:]), aux.float().sum()

    def _join(self, idx: torch.Tensor) -> torch.Tensor:  # (B, N, G) -> (B, N)
        shifts = self.group_bits * torch.arange(self.groups - 1, -1, -1, device=idx.device)
        return (idx.long() << shifts).sum(-1)

    def _split(self, idx: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, G)
        shifts = self.group_bits * torch.arange(self.groups - 1, -1, -1, device=idx.device)
        return (idx.long()[..., None] >> shifts) & (2**self.group_bits - 1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        shape = indices.shape  # (B, *spatial)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            flat = indices.flatten(1)
            if self.kind == "vq":
                q = self.q.get_codes_from_indices(flat)
            elif self.kind == "lfq":
                q = self.q.indices_to_codes(self._split(flat), project_out=False)
            else:
                q = self.q.indices_to_codes(flat)  # (B, N, D)
        out = self.project_out(q.float().transpose(1, 2))  # (B, C, N)
        return out.reshape(shape[0], -1, *shape[1:])
