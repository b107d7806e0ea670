"""Token shards: every clip's codes written once by the frozen tokenizers, read back by the LM's training.

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

A sample (a shard item) is a dict of int64 tensors under those keys plus the metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from videolm.core.errors import DataError, UsageError

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


__all__ = ["CODE_FIELDS", "INDEX_NAME", "Sample", "ShardWriter", "TokenShards"]
