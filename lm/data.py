"""Training data for the LM: task sequences drawn from a mixture, and packing.

A sample (a token shard's item, `videolm.data.shards`, or a clip tokenized on the fly by
`videolm.tasks.tokenizing.LazySamples`,
a mapping that tokenizes each field when first read) is a dict of int64 tensors under those keys
plus the metadata. This module knows no tasks: a `TaskSequences` dataset is given task objects
(anything with ``name``, ``accepts(sample)`` and ``build(sample, drop_text) -> (prefix, target)``,
e.g. `videolm.tasks.base.Task`), draws one per clip by the mixture's weights, and `PackCollate`
packs the sequences into fixed-length rows, keeping each example's task so the loss can be told
apart per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import Dataset

from videolm.core.errors import ConfigError, DataError
from videolm.lm.masks import PackedBatch, pack, pad
from videolm.lm.positions import GridLayout

Sample = dict  # code fields -> int64 tensors, plus metadata (caption, seed, height, width, ...)

# ----------------------------------------------------------------------------- task sequences


class SequenceTask(Protocol):
    """What the data layer needs of a task (`videolm.tasks.base.Task` is one)."""

    name: str

    def accepts(self, sample: Sample) -> bool: ...

    def build(self, sample: Sample, drop_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...

    # optional: ``fields``, the sample fields the task reads and writes (lazy samples prefetch them)


@dataclass
class TaskExample:
    """One training example: ``ids (N,)`` whose first ``prefix_len`` are the prefix, of task ``task``."""

    ids: torch.Tensor
    prefix_len: int
    task: int  # index into the mixture's tasks


class TaskSequences(Dataset):
    """Item ``i``: clip ``i`` as the sequence of a task drawn from the mixture.

    The task is drawn among those that accept the clip, with probability proportional to its
    weight; the text is dropped (emptied) with probability ``text_dropout``, for classifier-free
    guidance. Items may be asked for by key ``(i, seed)`` (`videolm.core.training.ResumableSampler`):
    the draws then come from that seed alone (and torch's global generator is seeded with it while
    the sequence is built, for a task's own random choices), so an item is the same whichever
    process makes it and whenever. A bare index draws from torch's global generator.
    """

    takes_keys = True

    def __init__(self, samples: Dataset, tasks: Sequence[SequenceTask], weights: Sequence[float] | None = None,
                 text_dropout: float = 0.1, max_len: int | None = None):
        weights = [1.0] * len(tasks) if weights is None else list(weights)
        if not tasks or len(weights) != len(tasks):
            raise ConfigError(f"a task mixture needs at least one task and one weight per task "
                              f"(got {len(tasks)} tasks, {len(weights)} weights)")
        if any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(f"task weights {weights} must be >= 0 and not all 0")
        if not 0 <= text_dropout <= 1:
            raise ConfigError(f"text_dropout={text_dropout} must be in [0, 1]")
        self.samples, self.tasks, self.text_dropout, self.max_len = samples, list(tasks), text_dropout, max_len
        self.weights = torch.tensor(weights, dtype=torch.float64)  # (K,)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> TaskExample:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence) -> list[TaskExample]:
        """A batch of items (what a DataLoader asks for). Samples that tokenize lazily (with a
        ``prefetch(samples, fields)`` on their dataset) get the fields the drawn tasks read
        tokenized together, which is cheaper than one clip at a time."""
        keys = [k if isinstance(k, tuple) else (k, None) for k in keys]
        gens = [None if seed is None else torch.Generator().manual_seed(seed) for _, seed in keys]
        samples = [self.samples[i] for i, _ in keys]
        drawn = [self.draw_task(sample, i, g) for sample, (i, _), g in zip(samples, keys, gens)]
        prefetch = getattr(self.samples, "prefetch", None)
        if prefetch is not None:
            prefetch(samples, [getattr(self.tasks[k], "fields", ()) for k in drawn])
        return [self._example(i, seed, sample, k, g) for (i, seed), sample, k, g in zip(keys, samples, drawn, gens)]

    def _example(self, i: int, seed: int | None, sample: Sample, k: int, g) -> TaskExample:
        drop = self.text_dropout > 0 and bool(torch.rand((), generator=g) < self.text_dropout)
        if seed is None:
            prefix, target = self.tasks[k].build(sample, drop_text=drop)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                prefix, target = self.tasks[k].build(sample, drop_text=drop)
        ids = torch.cat([torch.as_tensor(prefix), torch.as_tensor(target)]).long()  # (N,)
        if self.max_len is not None and len(ids) > self.max_len:
            raise DataError(f"clip {i}: its {self.tasks[k].name} sequence has {len(ids)} tokens, more than a "
                            f"row holds ({self.max_len}); raise train.row_len")
        return TaskExample(ids, len(prefix), k)

    def draw_task(self, sample: Sample, i: int, generator: torch.Generator | None = None) -> int:
        fits = torch.tensor([task.accepts(sample) for task in self.tasks])  # (K,)
        weights = self.weights * fits  # (K,)
        if not weights.sum() > 0:
            names = ", ".join(t.name for t in self.tasks)
            raise DataError(f"clip {i}: none of the tasks {names} can use it (missing text, video or audio?)")
        return int(torch.multinomial(weights, 1, generator=generator))


# ------------------------------------------------------------------------------ size buckets


class Buckets(Dataset):
    """Clips of several sizes and durations, one dataset per bucket, mixed by weight (NaViT and
    Sora train on every size at once; `PackCollate` packs their sequences into the same rows).

    Item ``i`` belongs to bucket ``k`` with probability ``weights[k] / sum(weights)``: the
    assignment is drawn once from ``seed``, so an item is the same in every process and after a
    resume, and a bucket's items go through its clips in turn. The length is the clips of all
    buckets together, so an epoch is about one pass over the data whatever the weights.
    """

    def __init__(self, buckets: Sequence[Dataset], weights: Sequence[float], seed: int = 0):
        if not buckets or len(buckets) != len(weights):
            raise ConfigError(f"size buckets need one weight each (got {len(buckets)} buckets, {len(weights)} weights)")
        if any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(f"bucket weights {list(weights)} must be >= 0 and not all 0")
        if any(len(b) == 0 for b, w in zip(buckets, weights) if w > 0):
            raise ConfigError("a size bucket with a weight holds no clips")
        self.buckets = list(buckets)
        n = sum(len(b) for b in buckets)
        g = torch.Generator().manual_seed(seed)
        self.bucket = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True,
                                        generator=g)  # (N,) bucket of each item
        order = torch.zeros(n, dtype=torch.long)
        for k in range(len(buckets)):
            where = self.bucket == k
            order[where] = torch.arange(int(where.sum())) % max(1, len(buckets[k]))
        self.within = order  # (N,) the item's clip inside its bucket

    def __len__(self) -> int:
        return len(self.bucket)

    def __getitem__(self, i: int) -> Sample:
        return self.buckets[int(self.bucket[i])][int(self.within[i])]

    def share(self) -> list[float]:
        """The fraction of items in each bucket."""
        counts = torch.bincount(self.bucket, minlength=len(self.buckets)).double()
        return (counts / counts.sum()).tolist()

    def prefetch(self, samples: Sequence, fields: Sequence[Sequence[str]]) -> None:
        """Passes lazily tokenized samples on to their own bucket's ``prefetch``."""
        for bucket in self.buckets:
            mine = [j for j, sample in enumerate(samples) if getattr(sample, "_owner", None) is bucket]
            if mine and hasattr(bucket, "prefetch"):
                bucket.prefetch([samples[j] for j in mine], [fields[j] for j in mine])


# ----------------------------------------------------------------------------------- batches


@dataclass
class TaskBatch:
    """Packed rows and the task of each example in them."""

    rows: PackedBatch  # (R, L) fields; ``rows.example`` indexes ``tasks``
    tasks: torch.Tensor  # (E,) long: task index of each example

    def to(self, device) -> TaskBatch:
        return TaskBatch(self.rows.to(device), self.tasks.to(device))

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int((self.rows.example >= 0).sum())


class PackCollate:
    """DataLoader collate: sequences packed into rows of ``row_len`` tokens (first fit decreasing).
    ``packing=False`` is the baseline: one sequence per row, padded to the batch's longest.
    ``grid``: the vocabulary's `GridLayout`, for a model with grid positions (rows then carry
    ``(R, L, 3)`` positions); None: sequence positions."""

    def __init__(self, row_len: int, pad_id: int = 0, packing: bool = True, grid: GridLayout | None = None):
        if row_len < 1:
            raise ConfigError(f"row_len={row_len} must be >= 1")
        self.row_len, self.pad_id, self.packing = row_len, pad_id, packing
        self.positions = None if grid is None else grid.positions

    def __call__(self, items: Sequence[TaskExample]) -> TaskBatch:
        examples = [(it.ids, it.prefix_len) for it in items]
        if self.packing:
            rows = pack(examples, self.row_len, pad_id=self.pad_id, positions=self.positions)
        else:
            rows = pad(examples, max(len(it.ids) for it in items), pad_id=self.pad_id, positions=self.positions)
        return TaskBatch(rows, torch.tensor([it.task for it in items], dtype=torch.long))


__all__ = ["Buckets", "PackCollate", "Sample", "SequenceTask", "TaskBatch", "TaskExample", "TaskSequences"]
