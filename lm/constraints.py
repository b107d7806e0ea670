"""Constrained decoding: which ids may be drawn at each output position.

A constraint is any callable ``step -> ranges``: for output position ``step`` (0 = the token
right after the prefix) it returns the half-open id ranges ``[(start, stop), ...]`` that may be
drawn there; an empty list means the output is complete. The engine turns the ranges into a
logits mask, so a sequence outside them cannot be sampled. `OutputLayout` is the usual one: a
fixed run of ranges per position, known in advance from the task and the resolution
(docs/design.md "Sequence format"); `video_layout` and `audio_layout` build it from a `Vocabulary`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch

from videolm.core.errors import UsageError

Ranges = tuple[tuple[int, int], ...]
Constraint = Callable[[int], Sequence[tuple[int, int]]]


class OutputLayout:
    """A constraint made of runs: ``runs = [(ranges, count), ...]`` allows ``ranges`` at the next
    ``count`` positions. After the last run the output is complete."""

    def __init__(self, runs: Sequence[tuple[Sequence[tuple[int, int]], int]]):
        self.runs: list[tuple[Ranges, int]] = []
        for ranges, count in runs:
            ranges = _ranges(ranges)
            if count < 0 or not ranges and count:
                raise UsageError(f"layout run {ranges} x {count}: need a non-negative count and at least one range")
            if count:
                self.runs.append((ranges, int(count)))
        self._ends = []  # first position after each run
        total = 0
        for _, count in self.runs:
            total += count
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __call__(self, step: int) -> Ranges:
        run = bisect.bisect_right(self._ends, step)
        return self.runs[run][0] if run < len(self.runs) else ()

    def __add__(self, other: OutputLayout) -> OutputLayout:
        return OutputLayout(self.runs + other.runs)

    def __mul__(self, times: int) -> OutputLayout:
        return OutputLayout(self.runs * times)

    def accepts(self, ids: Sequence[int] | torch.Tensor) -> bool:
        """Whether ``ids`` has this layout's length and every id lies in its position's ranges."""
        ids = [int(i) for i in ids]
        return len(ids) == len(self) and all(_inside(i, self(step)) for step, i in enumerate(ids))

    def __repr__(self) -> str:
        return f"OutputLayout({len(self)} positions, {len(self.runs)} runs)"


def video_layout(vocab, num_tokens: int) -> OutputLayout:
    """``num_tokens`` video ids, then ``<eov_o> <eos>``."""
    return OutputLayout([([vocab.range("video")], num_tokens), (_single(vocab["<eov_o>"]), 1),
                         (_single(vocab["<eos>"]), 1)])


def audio_layout(vocab, num_frames: int) -> OutputLayout:
    """``num_frames`` audio frames, each its levels 0 .. Q-1 in turn (each level in its own
    range), then ``<eoa_o> <eos>``."""
    frame = OutputLayout([([vocab.range("audio", level=q)], 1) for q in range(vocab.audio_levels)])
    end = OutputLayout([(_single(vocab["<eoa_o>"]), 1), (_single(vocab["<eos>"]), 1)])
    return frame * num_frames + end


class AllowedIds:
    """Boolean masks of allowed ids, one per distinct ranges tuple, built once and reused."""

    def __init__(self, vocab_size: int, device=None):
        self.vocab_size = vocab_size
        self.device = device
        self._masks: dict[Ranges, torch.Tensor] = {}

    def __call__(self, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        key = _ranges(ranges)
        if key not in self._masks:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)  # (V,)
            for start, stop in key:
                if stop > self.vocab_size:
                    raise UsageError(f"allowed range [{start}, {stop}) goes past the model's {self.vocab_size} ids")
                mask[start:stop] = True
            self._masks[key] = mask
        return self._masks[key]


def _ranges(ranges: Sequence[tuple[int, int]]) -> Ranges:
    out = tuple((int(a), int(b)) for a, b in ranges)
    bad = [r for r in out if not 0 <= r[0] < r[1]]
    if bad:
        raise UsageError(f"id range {bad[0]} is empty or negative; ranges are half-open (start, stop)")
    return out


def _single(id: int) -> list[tuple[int, int]]:
    return [(id, id + 1)]


def _inside(id: int, ranges: Ranges) -> bool:
    return any(start <= id < stop for start, stop in ranges)


__all__ = ["AllowedIds", "Constraint", "OutputLayout", "audio_layout", "video_layout"]
