"""Training data for the LM: token shards, task sequences drawn from a mixture, and packing.

Two stages, as in LlamaGen: a frozen tokenizer writes every clip's codes once into token shards
(`ShardWriter`, used by ``videolm tokenize``), and the LM trains on the shards (`TokenShards`).
A shard folder is self-describing and holds no pickles::

    DIR/index.json                  kind, format, the model folder the codes came from, shard list
    DIR/vocab.json                  the vocabulary the codes are meant for
    DIR/shard_00000.safetensors     per clip ``NNNNNN.text`` (n,), ``NNNNNN.video`` (t, n),
                                    ``NNNNNN.audio`` (F, Q), ``NNNNNN.structure`` (t, n), and the
                                    views tasks read (``image_text``, ``tail``, ``end``, ``loop``,
                                    ``inpaint``, ``outpaint``): int32 *local* codes; the header's
                                    metadata holds each clip's caption, seed, sizes and mask boxes
                                    as JSON

A sample (a shard item, or a clip tokenized on the fly by `videolm.tasks.token_shards.LazySamples`,
a mapping that tokenizes each field when first read) is a dict of int64 tensors under those keys
plus the metadata. This module knows no tasks: a `TaskSequences` dataset is given task objects
(anything with ``name``, ``accepts(sample)`` and ``build(sample, drop_text) -> (prefix, target)``,
e.g. `videolm.tasks.base.Task`), draws one per clip by the mixture's weights, and `PackCollate`
packs the sequences into fixed-length rows, keeping each example's task so the loss can be told
apart per task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from videolm.lm.masks import PackedBatch, pack, pad
from videolm.core.errors import ConfigError, DataError, UsageError

INDEX_NAME = "index.json"
KIND = "token_shards"
FORMAT = 1
# tensors a sample may hold: the clip's codes, and those of the views its tasks read (tasks/views.py)
CODE_FIELDS = ("text", "video", "audio", "structure", "image_text", "tail", "end", "loop", "inpaint", "outpaint")

Sample = dict  # CODE_FIELDS -> int64 tensors, plus metadata (caption, seed, height, width, ...)


# ------------------------------------------------------------------------------------- shards


class ShardWriter:
    """Writes samples into ``shard_NNNNN.safetensors`` files of ``shard_size`` clips each;
    `close` writes ``index.json``. The folder must exist (callers make it atomic)."""

    def __init__(self, folder: str | Path, shard_size: int = 1024):
        if shard_size < 1:
            raise UsageError(f"shard_size={shard_size} must be >= 1")
        self.folder, self.shard_size = Path(folder), shard_size
        self.shards: list[dict] = []
        self._tensors: dict[str, torch.Tensor] = {}
        self._meta: list[dict] = []

    def add(self, codes: dict[str, torch.Tensor | np.ndarray], meta: dict) -> None:
        """One clip: ``codes`` maps some of CODE_FIELDS to integer arrays; ``meta`` is JSON-ready."""
        unknown = sorted(set(codes) - set(CODE_FIELDS))
        if unknown:
            raise UsageError(f"unknown code field {unknown[0]!r} (allowed: {', '.join(CODE_FIELDS)})")
        j = len(self._meta)
        for name, value in codes.items():
            self._tensors[f"{j:06d}.{name}"] = torch.as_tensor(np.asarray(value), dtype=torch.int32).contiguous()
        self._meta.append(meta)
        if len(self._meta) == self.shard_size:
            self._flush()

    def close(self, info: dict) -> Path:
        """Write the last shard and ``index.json`` (with ``info`` merged in); returns the index path."""
        self._flush()
        index = {"kind": KIND, "format": FORMAT, **info, "clips": sum(s["clips"] for s in self.shards),
                 "shards": self.shards}
        path = self.folder / INDEX_NAME
        path.write_text(json.dumps(index, indent=2) + "\n")
        return path

    def _flush(self) -> None:
        if not self._meta:
            return
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_file(self._tensors, str(self.folder / name), metadata={"clips": json.dumps(self._meta)})
        os.chmod(self.folder / name, 0o644)
        self.shards.append({"file": name, "clips": len(self._meta)})
        self._tensors, self._meta = {}, []


class TokenShards(Dataset):
    """The samples of a shard folder, read lazily (one open file per shard, per process)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = _read_index(self.folder)
        self._files = [self.folder / s["file"] for s in self.index["shards"]]
        headers = [_read_header(path) for path in self._files]
        self._keys = [keys for keys, _ in headers]  # per shard: the tensor names it holds
        self._meta = [meta for _, meta in headers]  # per shard: per clip metadata
        self._starts = np.cumsum([0] + [len(m) for m in self._meta]).tolist()
        self._handles: dict[int, object] = {}
        if len(self) == 0:
            raise DataError(f"{self.folder}: the token shards hold no clips")

    @property
    def model(self) -> str | None:
        """The model folder whose tokenizers wrote the codes (to decode them again)."""
        return self.index.get("model")

    def vocab(self):
        from videolm.tokenizers.vocab import Vocabulary

        return Vocabulary.load(self.folder)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        j = i - self._starts[s]
        handle = self._handle(s)
        sample = dict(self._meta[s][j])
        for name in CODE_FIELDS:
            key = f"{j:06d}.{name}"
            if key in self._keys[s]:
                sample[name] = handle.get_tensor(key).long()
        return sample

    def _handle(self, s: int):
        if s not in self._handles:
            self._handles[s] = safe_open(str(self._files[s]), "pt")
        return self._handles[s]

    def __getstate__(self):  # open file handles stay with their process (DataLoader workers reopen)
        return {**self.__dict__, "_handles": {}}


def _read_header(path: Path) -> tuple[set[str], list[dict]]:
    try:
        with safe_open(str(path), "pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise DataError(f"{path}: not a readable token shard ({e})") from e
    if "clips" not in meta:
        raise DataError(f"{path}: a safetensors file without the clips' metadata (not a token shard)")
    return keys, json.loads(meta["clips"])


def _read_index(folder: Path) -> dict:
    path = folder / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{folder}: no token shards there (no {INDEX_NAME}); write them with "
                        "`videolm tokenize --data shapes --num N --out DIR`")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise DataError(f"{path}: not a token shard index")
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: token shard format {index.get('format')!r}, expected {FORMAT}")
    return index


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
    ``packing=False`` is the baseline: one sequence per row, padded to the batch's longest."""

    def __init__(self, row_len: int, pad_id: int = 0, packing: bool = True):
        if row_len < 1:
            raise ConfigError(f"row_len={row_len} must be >= 1")
        self.row_len, self.pad_id, self.packing = row_len, pad_id, packing

    def __call__(self, items: Sequence[TaskExample]) -> TaskBatch:
        examples = [(it.ids, it.prefix_len) for it in items]
        if self.packing:
            rows = pack(examples, self.row_len, pad_id=self.pad_id)
        else:
            rows = pad(examples, max(len(it.ids) for it in items), pad_id=self.pad_id)
        return TaskBatch(rows, torch.tensor([it.task for it in items], dtype=torch.long))


__all__ = ["CODE_FIELDS", "INDEX_NAME", "PackCollate", "Sample", "SequenceTask", "ShardWriter", "TaskBatch",
           "TaskExample", "TaskSequences", "TokenShards"]
