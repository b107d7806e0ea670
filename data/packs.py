"""Clip packs: a folder of videos decoded once into shards of clips, read back from a disk or from
object storage.

``videolm data pack ROOT --out PACK`` cuts a folder's videos into clips (size, length, frame rate,
stride and held-out share as `FolderDataset` cuts them), decodes each once and writes them as
shards: ``train-00000.npy`` (uint8 ``(k, T, H, W, 3)``), ``train-00000.audio.npy`` (float32
``(k, S)``) and ``train-00000.json`` (each clip's caption, file, start and whether it has sound),
and the same for the held-out videos (``eval-*``), with ``pack.json`` describing it all (each
shard's byte sizes, and an id that changes whenever the pack is written). Training then reads
clips, never videos: no decoder runs, so data loading costs a memory-mapped read.

`ClipPack` reads a pack by index (a map-style dataset, so sampling and exact resume work as on
any dataset) from a local folder or from any URL `fsspec` knows (``s3://``, ``gs://``,
``https://``, ... given the matching fsspec package, such as s3fs, and its credentials). A remote
shard is fetched whole the first time a clip of it is read, into ``VIDEOLM_CACHE/packs/ID/`` (a
temporary file renamed into place, so concurrent readers never see half a file), and read from
there by later epochs and runs. After one epoch the local disk holds the whole pack, unless
``VIDEOLM_PACK_CACHE_GB`` caps the cache: then the shards used longest ago (of every pack) are
deleted to keep it under the cap, and training reads the pack a window of shards at a time (shards
in a seeded order per epoch, clips shuffled within each window: `ClipPack.shard_order`), so each shard
is fetched once per epoch however small the cap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from bisect import bisect_right
from collections import OrderedDict
from pathlib import Path

import fsspec
import numpy as np
from torch.utils.data import Dataset

from videolm.core.errors import DataError, UsageError
from videolm.core.outputs import atomic_output_dir
from videolm.data.folder import FolderDataset, cache_dir, held_out_videos

INDEX = "pack.json"
FORMAT = "videolm clip pack"
VERSION = 1
PARTS = ("train", "eval")
SUFFIXES = (".npy", ".audio.npy", ".json")  # a shard's files
CACHE_CAP = "VIDEOLM_PACK_CACHE_GB"  # the environment variable that caps the cache of remote shards


def cache_cap() -> int | None:
    """The cap on the bytes of fetched shards (all packs together) from ``VIDEOLM_PACK_CACHE_GB``;
    None (no cap) where it is unset or empty."""
    text = os.environ.get(CACHE_CAP, "").strip()
    if not text:
        return None
    try:
        gb = float(text)
    except ValueError:
        gb = float("nan")
    if not gb > 0 or gb == float("inf"):
        raise UsageError(f"{CACHE_CAP}={text!r}: give the cap in gigabytes, a number above 0 (e.g. 20 or 0.5)")
    return int(gb * 1e9)


def is_pack(source: str) -> bool:
    """Whether ``source`` names a clip pack: a URL (``scheme://...``) or a folder holding pack.json."""
    return "://" in str(source) or (Path(source) / INDEX).is_file()


def write_pack(out: str | Path, folder: FolderDataset, shard_clips: int = 64, overwrite: bool = False,
               progress=None) -> Path:
    """Decode every clip of ``folder`` (a `FolderDataset` of every video, ``split="all"``) into a pack
    at ``out`` (all or nothing), its train and held-out videos in their own shards. A video that
    cannot be read is left out (one warning) and listed in pack.json. Returns the pack's path."""
    if folder.split != "all":
        raise UsageError("a pack holds every video of the folder (its training and held-out parts apart)")
    if shard_clips < 1:
        raise UsageError(f"--shard-clips {shard_clips}: a shard holds at least one clip")
    held = held_out_videos(folder.paths(), folder.held_out)
    with atomic_output_dir(out, overwrite=overwrite, command="data pack", inputs=[folder.root]) as tmp:
        parts = {part: {"clips": 0, "shards": []} for part in PARTS}
        pending = {part: [] for part in PARTS}
        for i in range(len(folder)):
            item = folder.exact(i)
            if item is not None:
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
        if not parts["train"]["clips"] + parts["eval"]["clips"]:
            raise DataError(f"{folder.root}: no video could be read; nothing to pack")
        if not parts["train"]["clips"]:
            raise DataError(f"{folder.root}: no training clip could be read (only held-out ones); nothing to "
                            "train on in such a pack (pack with --held-out 0, or mend the unreadable videos)")
        index = {"format": FORMAT, "version": VERSION, "id": uuid.uuid4().hex, "source": str(folder.root.resolve()),
                 "frames": folder.frames, "fps": folder.fps, "height": folder.size[0], "width": folder.size[1],
                 "fit": folder.fit, "stride": folder.stride, "held_out": folder.held_out,
                 "sample_rate": folder.sample_rate, "held_out_videos": sorted(held),
                 "skipped_videos": sorted(set(folder.skipped) | set(folder.unreadable())), "parts": parts}
        (tmp / INDEX).write_text(json.dumps(index, indent=1))
    return Path(out)


def _write_shard(root: Path, part: str, items: list[dict], record: dict) -> None:
    name = f"{part}-{len(record['shards']):05d}"
    np.save(root / f"{name}.npy", np.stack([it["video"] for it in items]))  # (k, T, H, W, 3) uint8
    np.save(root / f"{name}.audio.npy", np.stack([it["audio"] for it in items]).astype(np.float32))  # (k, S)
    meta = [{"caption": it["caption"], "path": it["path"], "start": it["start"], "has_audio": bool(it["has_audio"])}
            for it in items]
    (root / f"{name}.json").write_text(json.dumps(meta))
    sizes = {suffix: (root / f"{name}{suffix}").stat().st_size for suffix in SUFFIXES}
    record["shards"].append({"name": name, "clips": len(items), "bytes": sizes})
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
        self.index = _read_index(self.url)
        self.frames, self.fps = int(self.index["frames"]), float(self.index["fps"])
        self.size = (int(self.index["height"]), int(self.index["width"]))
        self.sample_rate = int(self.index["sample_rate"])
        self.shards = self.index["parts"][part]["shards"]
        self._starts = np.cumsum([0] + [s["clips"] for s in self.shards]).tolist()
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray, list[dict]]] = OrderedDict()  # last used last
        self.cap = cache_cap() if self.remote else None
        biggest = max((sum(s["bytes"].values()) for s in self.shards), default=1)
        # shards read together: half the cap, so a window's shards and the last window's fit at once
        self.window = max(1, self.cap // 2 // biggest) if self.cap else len(self.shards)

    @property
    def shard_order(self) -> tuple[list[int], int] | None:
        """How training should order a remote pack under a cache cap: the clips of each shard (in
        index order) and how many shards to shuffle together (`ResumableSampler`); None: any order."""
        if self.cap is None or self.window >= len(self.shards):
            return None
        return [s["clips"] for s in self.shards], self.window

    def __len__(self) -> int:
        return self._starts[-1]

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
        """Shard ``s``, memory-mapped from a local file (a remote one fetched into the cache first),
        checked against pack.json; opened once per process (DataLoader workers open their own)."""
        if s in self._open:
            self._open.move_to_end(s)
        else:
            shard = self.shards[s]
            name, k = shard["name"], shard["clips"]
            paths = [self._local(name + suffix, shard["bytes"][suffix]) for suffix in SUFFIXES]
            try:
                video = np.load(paths[0], mmap_mode="r", allow_pickle=False)
                audio = np.load(paths[1], mmap_mode="r", allow_pickle=False)
                meta = json.loads(Path(paths[2]).read_text())
            except (OSError, ValueError) as e:
                self._forget(paths)
                raise DataError(f"{self.url}/{name}: a missing or damaged shard ({_first(e)}); copy the pack "
                                "again or pack the folder again") from None
            want = (k, self.frames, *self.size, 3)
            if video.dtype != np.uint8 or video.shape != want or len(audio) != k or len(meta) != k:
                self._forget(paths)
                raise DataError(f"{self.url}/{name}: holds {video.dtype} clips of shape {video.shape}, pack.json says "
                                f"{k} of {want[1:]}; copy the pack again or pack the folder again")
            self._open[s] = (video, audio, meta)
            if self.cap is not None:  # a capped cache: let go of the maps of the shards it may delete, then trim it
                while len(self._open) > self.window:
                    self._open.popitem(last=False)
                folder = Path(paths[0]).parent
                _trim_cache(self.cap, {folder / (self.shards[o]["name"] + x) for o in self._open for x in SUFFIXES})
        return self._open[s]

    def _local(self, name: str, size: int) -> str:
        """A local path of one of the pack's files of ``size`` bytes; a remote one is fetched
        into the cache once (by whichever process asks first; a copy of the right size is kept)."""
        if not self.remote:
            return f"{self.url}/{name}".removeprefix("file://")
        path = cache_dir() / "packs" / self.index["id"] / name
        if path.is_file() and path.stat().st_size == size:
            if self.cap is not None:
                os.utime(path)  # used now: the cap deletes the shards used longest ago
            return str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with fsspec.open(f"{self.url}/{name}", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, path)  # readers that mapped an earlier copy keep theirs
        except (OSError, ValueError, ImportError) as e:
            raise DataError(f"{self.url}/{name}: cannot fetch ({type(e).__name__}: {_first(e)})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)

    def _forget(self, paths: list[str]) -> None:
        """Drop the cached copies of a shard that failed its checks, so the next read fetches it again."""
        if self.remote:
            for p in paths:
                Path(p).unlink(missing_ok=True)


def _trim_cache(cap: int, keep: set[Path]) -> None:
    """Delete the cached shard files used longest ago (of every pack) until the cache holds at most
    ``cap`` bytes, never one in ``keep``. A reader that has a deleted file mapped keeps its copy
    until it lets it go; another process fetching the same file renames its own copy into place."""
    files = []
    for f in (cache_dir() / "packs").glob("*/*"):
        try:
            st = f.stat()
        except OSError:  # deleted by another process meanwhile
            continue
        if not f.name.startswith("."):
            files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    for _, size, f in sorted(files, key=lambda x: x[0]):
        if total <= cap:
            break
        if f not in keep:
            f.unlink(missing_ok=True)
            total -= size


def _read_index(url: str) -> dict:
    try:
        with fsspec.open(f"{url}/{INDEX}", "r") as f:
            index = json.load(f)
    except (OSError, ValueError, ImportError) as e:  # no file, bad JSON, or no fsspec backend for the scheme
        raise DataError(f"{url}: not a readable clip pack ({type(e).__name__}: {_first(e)})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{url}/{INDEX}: not a videolm clip pack")
    if index.get("version") != VERSION:
        raise DataError(f"{url}/{INDEX}: pack version {index.get('version')}; this videolm reads {VERSION}")
    try:
        for key in ("frames", "fps", "height", "width", "sample_rate"):
            float(index[key])
        if not re.fullmatch(r"[0-9a-f]{32}", index["id"]):
            raise ValueError("id")
        for part in PARTS:
            for shard in index["parts"][part]["shards"]:
                if not isinstance(shard["name"], str):
                    raise TypeError("shard name")
                for value in (shard["clips"], *(shard["bytes"][s] for s in SUFFIXES)):
                    int(value)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{url}/{INDEX}: an incomplete pack index ({type(e).__name__}: {_first(e)})") from None
    return index


def pack_captions(url: str) -> list[str]:
    """One caption per video of the pack (both parts; "" where none), read from the shards' small
    JSON files only."""
    pack = ClipPack(url)
    captions: dict[str, str] = {}
    for part in PARTS:
        for shard in pack.index["parts"][part]["shards"]:
            with fsspec.open(f"{pack.url}/{shard['name']}.json", "r") as f:
                for clip in json.load(f):
                    captions.setdefault(clip["path"], clip["caption"])
    return list(captions.values())


def _first(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__


__all__ = ["CACHE_CAP", "ClipPack", "INDEX", "cache_cap", "is_pack", "pack_captions", "write_pack"]
