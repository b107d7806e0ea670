"""Prefix-LM attention, labels and packing (docs/design.md "Sequence format").

An example is ``(ids, prefix_len)``: the first ``prefix_len`` ids (up to and including the
output-begin token) are the prefix, the rest the output. Inside an example, attention is
bidirectional over the prefix and causal over the output; the loss falls on output tokens only.

Packing follows NaViT's Patch n' Pack (Dehghani et al., 2023): several examples share one
fixed-length row, each keeps its own positions (RoPE restarts at 0) and the mask is
block-diagonal, so no example sees another. A `PackedBatch` describes rows by four aligned
``(R, L)`` tensors; `PackedBatch.attention_mask` and `PackedBatch.labels` derive the rest.

Padding tokens belong to no example (``example == -1``). They attend only to themselves, so
no attention row is ever empty and fully padded rows give finite outputs, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from videolm.core.errors import UsageError

IGNORE = -100  # label of positions without loss (the Hugging Face / cross-entropy convention)

Example = tuple[Sequence[int] | torch.Tensor, int]  # (ids, prefix_len)
PositionsOf = Callable[[torch.Tensor], torch.Tensor]  # an example's ids (N,) -> its positions (N, 3)


def prefix_lm_mask(example: torch.Tensor, is_prefix: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask ``(B, 1, T, T)``, True where query t may attend to key s.

    ``example (B, T)`` names each token's example (-1: padding); ``is_prefix (B, T)`` marks
    prefix tokens. A query sees the keys of its own example that are at or before it, or in its
    prefix; since a prefix precedes its output, prefix queries never see output keys.
    """
    t = example.shape[1]
    same = example[:, :, None] == example[:, None, :]  # (B, T, T)
    real = (example >= 0)[:, :, None]  # (B, T, 1)
    order = torch.ones(t, t, dtype=torch.bool, device=example.device).tril()  # (T, T)
    visible = order | is_prefix[:, None, :]  # (B, T, T)
    self_only = torch.eye(t, dtype=torch.bool, device=example.device)  # (T, T)
    return torch.where(real, same & visible, self_only)[:, None]  # (B, 1, T, T)


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive float mask that transformers' eager and SDPA attention both
    take as given: 0 where attended, the dtype's lowest value elsewhere."""
    if mask.dtype != torch.bool or mask.dim() != 4:
        raise UsageError(f"expected a boolean (B, 1, T, T) mask, got {mask.dtype} of shape {tuple(mask.shape)}")
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask, zero, low)  # (B, 1, T, T)


@dataclass
class PackedBatch:
    """Rows of packed examples. All fields are ``(R, L)``, but grid ``positions``: ``(R, L, 3)``."""

    ids: torch.Tensor  # long; pad_id on padding
    example: torch.Tensor  # long; index of the example in the packed list, -1 on padding
    positions: torch.Tensor  # long; RoPE position within the example, 0 on padding; (R, L, 3) for grid positions
    is_prefix: torch.Tensor  # bool; True on prefix tokens

    def attention_mask(self) -> torch.Tensor:
        return prefix_lm_mask(self.example, self.is_prefix)  # (R, 1, L, L)

    @property
    def labels(self) -> torch.Tensor:
        """``(R, L)``: the id on output tokens, IGNORE elsewhere (unshifted, as transformers'
        ``labels=``: the logits at t - 1 predict the label at t)."""
        output = (self.example >= 0) & ~self.is_prefix  # (R, L)
        return torch.where(output, self.ids, IGNORE)  # (R, L)

    @property
    def padding_fraction(self) -> float:
        return (self.example < 0).float().mean().item()

    @property
    def num_examples(self) -> int:
        return int(self.example.max().item()) + 1 if self.example.numel() else 0

    def to(self, device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.ids, self.example, self.positions, self.is_prefix)))


def pack(examples: Sequence[Example], row_len: int, pad_id: int = 0, longest_first: bool = True,
         positions: PositionsOf | None = None) -> PackedBatch:
    """Pack examples into rows of ``row_len`` tokens by first fit: each example goes into the
    first row with room for it, or opens a new row. ``longest_first`` places the longest examples
    first (first-fit decreasing), which leaves less padding; ``example`` indices always refer to
    the order given. ``positions(ids) -> (N, 3)``: each example's grid positions
    (`videolm.lm.positions.grid_positions`); None: 0..N-1."""
    checked = _check_examples(examples, row_len)
    order = range(len(checked))
    if longest_first:
        order = sorted(order, key=lambda i: -len(checked[i][0]))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        size = len(checked[i][0])
        slot = next((r for r, room in enumerate(free) if room >= size), None)
        if slot is None:
            rows.append([])
            free.append(row_len)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= size
    return _fill(checked, rows, row_len, pad_id, positions)


def pad(examples: Sequence[Example], row_len: int | None = None, pad_id: int = 0,
        positions: PositionsOf | None = None) -> PackedBatch:
    """One example per row, right-padded to ``row_len`` (default: the longest example): the
    layout without packing. ``positions`` as for `pack`."""
    row_len = max((len(ids) for ids, _ in examples), default=0) if row_len is None else row_len
    checked = _check_examples(examples, row_len)
    return _fill(checked, [[i] for i in range(len(checked))], row_len, pad_id, positions)


def prefix_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens; 0 (not NaN) when there are none."""
    losses = token_losses(logits, labels)  # (B, T)
    count = (labels[:, 1:] != IGNORE).sum()
    return losses.sum() / count.clamp(min=1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each token ``(B, T)`` given the logits ``(B, T, V)`` before it; 0 where
    the label is IGNORE (and at t = 0, which nothing predicts). For per-task or per-example sums."""
    b, t, v = logits.shape
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(b, t - 1)  # (B, T-1)
    return torch.nn.functional.pad(nll, (1, 0))  # (B, T)


def _check_examples(examples: Sequence[Example], row_len: int) -> list[tuple[torch.Tensor, int]]:
    if not examples:
        raise UsageError("no examples to lay out in rows")
    return [_check_example(ids, prefix_len, i, row_len) for i, (ids, prefix_len) in enumerate(examples)]


def _check_example(ids, prefix_len, index: int, row_len: int) -> tuple[torch.Tensor, int]:
    ids = torch.as_tensor(ids, dtype=torch.long)  # (N,)
    if ids.dim() != 1 or len(ids) == 0:
        raise UsageError(f"example {index}: ids must be a non-empty 1-D sequence, got shape {tuple(ids.shape)}")
    if not 1 <= prefix_len <= len(ids):
        raise UsageError(f"example {index}: prefix_len={prefix_len} must be in [1, {len(ids)}] (its length)")
    if len(ids) > row_len:
        raise UsageError(f"example {index}: {len(ids)} tokens do not fit a row of {row_len}")
    return ids, int(prefix_len)


def _fill(examples: list[tuple[torch.Tensor, int]], rows: list[list[int]], row_len: int, pad_id: int,
          positions: PositionsOf | None = None) -> PackedBatch:
    shape = (len(rows), row_len)
    batch = PackedBatch(
        ids=torch.full(shape, pad_id, dtype=torch.long),  # (R, L)
        example=torch.full(shape, -1, dtype=torch.long),  # (R, L)
        positions=torch.zeros(shape + ((3,) if positions is not None else ()), dtype=torch.long),  # (R, L) or (R, L, 3)
        is_prefix=torch.zeros(shape, dtype=torch.bool),  # (R, L)
    )
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, prefix_len = examples[i]
            stop = start + len(ids)
            batch.ids[r, start:stop] = ids
            batch.example[r, start:stop] = i
            batch.positions[r, start:stop] = torch.arange(len(ids)) if positions is None else positions(ids)
            batch.is_prefix[r, start:start + prefix_len] = True
            start = stop
    return batch


__all__ = ["IGNORE", "PackedBatch", "attention_bias", "pack", "pad", "prefix_lm_loss", "prefix_lm_mask",
           "token_losses"]
