"""Clip packs: a folder of videos decoded once into shards of clips, read back from a disk or from
object storage.

``videolm data pack ROOT --out PACK`` cuts a folder's videos into clips (size, length, frame rate,
stride and held-out share as `FolderDataset` cuts them), decodes each once and writes them as
shards: ``train-00000.npy`` (uint8 ``(k, T, H, W, 3)``), ``train-00000.audio.npy`` (float32
``(k, S)``) and ``train-00000.json`` (each clip's caption, file, start and whether it has sound),
and the same for the held-out videos (``eval-*``), with ``pack.json`` describing it all. Training
then reads clips, never videos: no decoder runs, so data loading costs a memory-mapped read.

`ClipPack` reads a pack by index (a map-style dataset, so sampling and exact resume work as on
any dataset) from a local folder or from any URL `fsspec` knows (``s3://``, ``gs://``,
``https://``, ... given the matching fsspec package, such as s3fs, and its credentials). A remote
shard is fetched whole the first time a clip of it is read and kept in videolm's cache
(``VIDEOLM_CACHE/packs``) for later epochs and runs, so a pack can outgrow the training machine's
disk only by as much as that cache holds.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from pathlib import Path

import fsspec
import numpy as np
from torch.utils.data import Dataset

from videolm.core.errors import DataError, UsageError
from videolm.core.outputs import atomic_output_dir
from videolm.data.folder import cache_dir, held_out_videos

INDEX = "pack.json"
FORMAT = "videolm clip pack"
VERSION = 1
PARTS = ("train", "eval")


def is_pack(source: str) -> bool:
    """Whether ``source`` names a clip pack: a URL (``scheme://...``) or a folder holding pack.json."""
    return "://" in str(source) or (Path(source) / INDEX).is_file()


def write_pack(out: str | Path, folder, shard_clips: int = 64, overwrite: bool = False, progress=None) -> Path:
    """Decode every clip of ``folder`` (a `FolderDataset` with ``split="all"``) into a pack at ``out``
    (all or nothing), its train and held-out videos in their own shards. Returns the pack's path."""
    if shard_clips < 1:
        raise UsageError(f"--shard-clips {shard_clips}: a shard holds at least one clip")
    held = held_out_videos(folder.paths(), folder.held_out)
    with atomic_output_dir(out, overwrite=overwrite, command="data pack") as tmp:
        parts = {part: {"clips": 0, "shards": []} for part in PARTS}
        pending = {part: [] for part in PARTS}
        for i in range(len(folder)):
            item = folder[i]
            part = "eval" if item["path"] in held else "train"
            pending[part].append(item)
            if len(pending[part]) == shard_clips:
                _write_shard(tmp, part, pending[part], parts[part])
                pending[part] = []
            if progress:
                progress(1)
        for part in PARTS:
            if pending[part]:
                _write_shard(tmp, part, pending[part], parts[part])
        index = {"format": FORMAT, "version": VERSION, "source": str(folder.root), "frames": folder.frames,
                 "fps": folder.fps, "height": folder.size[0], "width": folder.size[1], "fit": folder.fit,
                 "stride": folder.stride, "held_out": folder.held_out, "sample_rate": folder.sample_rate,
                 "held_out_videos": sorted(held), "parts": parts}
        (tmp / INDEX).write_text(json.dumps(index, indent=1))
    return Path(out)


def _write_shard(root: Path, part: str, items: list[dict], record: dict) -> None:
    name = f"{part}-{len(record['shards']):05d}"
    np.save(root / f"{name}.npy", np.stack([it["video"] for it in items]))  # (k, T, H, W, 3) uint8
    np.save(root / f"{name}.audio.npy", np.stack([it["audio"] for it in items]).astype(np.float32))  # (k, S)
    meta = [{"caption": it["caption"], "path": it["path"], "start": it["start"], "has_audio": bool(it["has_audio"])}
            for it in items]
    (root / f"{name}.json").write_text(json.dumps(meta))
    record["shards"].append({"name": name, "clips": len(items)})
    record["clips"] += len(items)


class ClipPack(Dataset):
    """The clips of one part (``"train"`` or ``"eval"``) of a pack at a folder or URL. Items are
    `FolderDataset`'s: ``video`` uint8 (T, H, W, 3), ``audio`` float32 (S,), ``has_audio``,
    ``caption``, ``path`` and ``start``."""

    def __init__(self, url: str | Path, part: str = "train"):
        if part not in PARTS:
            raise UsageError(f"pack part {part!r}: choose from {', '.join(PARTS)}")
        self.url, self.part = str(url).rstrip("/"), part
        self.remote = "://" in self.url and not self.url.startswith("file://")
        index = self._read_index()
        self.index = index
        self.frames, self.fps = int(index["frames"]), float(index["fps"])
        self.size = (int(index["height"]), int(index["width"]))
        self.shards = index["parts"][part]["shards"]
        self._starts = np.cumsum([0] + [s["clips"] for s in self.shards]).tolist()
        self._open: dict[int, tuple[np.ndarray, np.ndarray, list[dict]]] = {}

    def _read_index(self) -> dict:
        try:
            with fsspec.open(f"{self.url}/{INDEX}", "r") as f:
                index = json.load(f)
        except (OSError, ValueError, ImportError) as e:  # no file, bad JSON, or no fsspec backend for the scheme
            raise DataError(f"{self.url}: not a readable clip pack ({type(e).__name__}: {_first(e)})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataError(f"{self.url}/{INDEX}: not a videolm clip pack")
        if index.get("version") != VERSION:
            raise DataError(f"{self.url}/{INDEX}: pack version {index.get('version')}; this videolm reads {VERSION}")
        return index

    def __len__(self) -> int:
        return self._starts[-1]

    def captions(self) -> list[str]:
        """Every clip's caption in this part ("" where none)."""
        return [m["caption"] for s in range(len(self.shards)) for m in self._shard(s)[2]]

    def summary(self) -> dict:
        return {"pack": self.url, "part": self.part, "clips": len(self), "shards": len(self.shards),
                "frames": self.frames, "fps": self.fps, "size": list(self.size), "source": self.index.get("source")}

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip {i} out of range for {n} clips")
        i %= n
        s = bisect_right(self._starts, i) - 1
        video, audio, meta = self._shard(s)
        k = i - self._starts[s]
        return {"video": np.array(video[k]), "audio": np.array(audio[k]), **meta[k]}

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Shard ``s``, memory-mapped from a local file (a remote one fetched into the cache first);
        opened once per process (DataLoader workers each open their own)."""
        if s not in self._open:
            name = self.shards[s]["name"]
            video = np.load(self._local(f"{name}.npy"), mmap_mode="r")
            audio = np.load(self._local(f"{name}.audio.npy"), mmap_mode="r")
            meta = json.loads(Path(self._local(f"{name}.json")).read_text())
            if len(video) != self.shards[s]["clips"] or len(meta) != len(video):
                raise DataError(f"{self.url}: shard {name} holds {len(video)} clips, pack.json says "
                                f"{self.shards[s]['clips']}")
            self._open[s] = (video, audio, meta)
        return self._open[s]

    def _local(self, name: str) -> str:
        """A local path of one of the pack's files."""
        url = f"{self.url}/{name}"
        if not self.remote:
            return url.removeprefix("file://")
        store = cache_dir() / "packs" / hashlib.sha1(self.url.encode()).hexdigest()[:16]
        try:
            return fsspec.open_local(f"filecache::{url}", filecache={"cache_storage": str(store)})
        except (OSError, ValueError, ImportError) as e:
            raise DataError(f"{url}: cannot fetch ({type(e).__name__}: {_first(e)})") from None


def pack_size(url: str) -> tuple[int, int, int]:
    """(height, width, frames) of a pack's clips."""
    pack = ClipPack(url)
    return pack.size[0], pack.size[1], pack.frames


def _first(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__


__all__ = ["ClipPack", "INDEX", "is_pack", "pack_size", "write_pack"]
