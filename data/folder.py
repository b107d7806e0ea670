"""Folder datasets: every video under a folder, cut into fixed-length, resized clips.

A folder is either a plain tree of videos (``*.mp4 *.webm *.mkv *.avi *.mov *.gif``, any
case; names starting with "." are ignored) with optional sidecars beside each video
(``NAME.txt`` caption, ``NAME.wav`` audio) and an optional ``captions.jsonl`` at the root,
or a folder with a ``manifest.jsonl`` (what ``videolm data shapes`` writes), which then lists
the clips, their captions and audio, and nothing else is a clip.

Clips are cut with a stride (overlap allowed), and the tail of each file is kept: when the
stride does not land on the end, one more clip ends exactly at the file's last frame. Videos
(not clips) are split into train and held-out by a hash of their path (`held_out_videos`), so
no held-out clip shares a video with a training clip.

Probing every file is slow on big folders, so the results are kept in an index in the user's
cache (``$VIDEOLM_CACHE``, else ``$XDG_CACHE_HOME/videolm``, else ``~/.cache/videolm``:
``index/SHA1-OF-ROOT.json``); reopening re-probes only files whose size or mtime changed. With
``cache=True`` every video is decoded once, at the clip setting's rate and size, into
``clips/KEY.npy`` in the same cache (KEY: the file, its size and mtime, and the setting); later
epochs and later runs slice those arrays (memory-mapped) instead of decoding again. The folder
itself is only ever read.
"""

import hashlib
import json
import os
import uuid
import warnings
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from videolm.core.config import check_range
from videolm.core.errors import DataError, MediaError, UsageError
from videolm.data.media import num_frames_at, probe_video, read_audio, read_video

VIDEO_EXTS = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif"}
INDEX_VERSION = 1


@dataclass(frozen=True)
class _Video:
    path: str  # relative to the root, POSIX separators
    audio: str | None  # sidecar or manifest audio file, relative to the root
    caption: str
    has_track: bool  # the video file itself carries audio
    num_clips: int
    length: int  # frames at the clip rate
    size_bytes: int | None = None
    mtime: float | None = None


@dataclass
class FolderConfig:
    """A folder of videos as a dataset of clips (the fields of FolderDataset)."""

    root: str = field(metadata={"positional": True})  # the folder of videos
    frames: int = 17  # frames per clip
    fps: float = 8.0  # the frame rate clips are resampled to
    height: int = 64
    width: int = 64
    fit: Literal["crop", "pad", "stretch"] = "crop"  # aspect rule: cover then centre-crop, pad, or stretch
    sample_rate: int = 16000
    stride: int | None = None  # frames between clip starts (None: --frames, no overlap); a file's tail is kept
    split: Literal["all", "train", "eval"] = "all"  # every video, or the training / held-out videos
    held_out: float = 0.1  # share of videos held out (by a hash of the path; at least one of two or more)
    cache: bool = False  # decode each video once into videolm's cache and read clips from there

    def __post_init__(self):
        check_range(self, 1, None, "frames", "height", "width", "stride")
        check_range(self, 0, None, "fps", low_open=True)
        check_range(self, 1000, None, "sample_rate")
        check_range(self, 0, 0.9, "held_out")

    def dataset(self) -> "FolderDataset":
        return FolderDataset(self.root, self.frames, self.fps, (self.height, self.width), self.fit,
                             self.sample_rate, self.stride, split=self.split, held_out=self.held_out,
                             cache=self.cache)


class FolderDataset(Dataset):
    """Clips of `frames` frames at `fps`, resized to `size`, from every video under `root`.

    Clips are non-overlapping unless `stride` (in frames) is smaller than `frames`; a file of n
    frames at `fps` gives ``(n - frames) // stride + 1`` clips, plus one ending at its last frame
    when the stride leaves a tail. `split` takes every video, or those `is_held_out` puts in
    train or eval. Items are
    dicts: ``video`` uint8 (T, H, W, 3), ``audio`` float32 (round(T / fps * sample_rate),)
    (sidecar wav first, then the file's own track, else zeros), ``has_audio``, ``caption``
    ("" if none), ``path`` (relative to root) and ``start`` (seconds).

    Unreadable files are skipped with one warning each, when indexing or when a read fails
    later; in the latter case the item is the next readable clip.
    """

    decodes_media = True  # DataLoader workers for it start fresh (`videolm.core.training.fit_run`)

    def __init__(self, root, frames=17, fps=8, size=(64, 64), fit="crop", sample_rate=16000,
                 stride=None, index_path=None, split="all", held_out=0.1, cache=False):
        self.root = Path(root)
        self.frames, self.fps, self.size, self.fit = frames, fps, tuple(size), fit
        self.sample_rate, self.stride = sample_rate, stride or frames
        self.split, self.cache, self.held_out = split, cache, held_out
        self.index_path = Path(index_path) if index_path else _default_index_path(self.root)
        sources = _sources(self.root)
        entries = self._index(sorted(sources))
        self.skipped = [rel for rel in sorted(sources) if not entries[rel]["ok"]]
        videos = [self._video(rel, sources[rel], entries[rel]) for rel in sorted(sources)
                  if entries[rel]["ok"]]
        self.too_short = [v.path for v in videos if v.num_clips == 0]
        if self.too_short:
            _warn_once(f"{self.root}: {len(self.too_short)} video(s) shorter than one clip of {frames} frames at {fps} "
                       f"fps left out: {', '.join(self.too_short[:5])}{' ...' if len(self.too_short) > 5 else ''}")
        videos = [v for v in videos if v.num_clips > 0]
        if split != "all":
            held = held_out_videos([v.path for v in videos], held_out)
            videos = [v for v in videos if (v.path in held) == (split == "eval")]
        self._videos = videos
        self._starts = np.cumsum([0] + [v.num_clips for v in self._videos]).tolist()
        self._bad: set[str] = set()
        if not len(self):
            which = "" if split == "all" else f" in the {split} split (held_out={held_out})"
            raise DataError(f"{self.root}: no readable video clips of {frames} frames at "
                            f"{fps} fps{which} ({len(sources)} video files found)")

    def __len__(self) -> int:
        return self._starts[-1]

    def paths(self) -> list[str]:
        """The videos that give clips, relative to the root, in index order."""
        return [v.path for v in self._videos]

    def captions(self) -> list[str]:
        """The caption of every readable video, in index order (one per video, not per clip)."""
        return [v.caption for v in self._videos]

    def summary(self) -> dict:
        """What the folder holds at this clip setting, as JSON-ready data."""
        return {
            "root": str(self.root),
            "videos": len(self._videos),
            "skipped": self.skipped,
            "too_short": self.too_short,
            "clips": len(self),
            "captioned_videos": sum(bool(v.caption) for v in self._videos),
            "videos_with_audio": sum(bool(v.audio or v.has_track) for v in self._videos),
            "frames": self.frames,
            "stride": self.stride,
            "split": self.split,
            "fps": self.fps,
            "size": list(self.size),
            "index": str(self.index_path),
        }

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip {i} out of range for {n} clips")
        for k in range(i % n, i % n + n):
            item = self.exact(k % n)
            if item is not None:
                return item
        raise DataError(f"{self.root}: every video failed to read")

    def exact(self, i: int) -> dict | None:
        """Clip ``i`` itself, or None when its video cannot be read (said once per video, in a
        warning); `__getitem__` then gives the next readable clip instead."""
        video, clip = self._locate(i)
        if video.path in self._bad:
            return None
        try:
            return self._load(video, clip)
        except MediaError as e:
            self._bad.add(video.path)
            _warn_once(f"skipping unreadable video: {e}")
            return None

    def unreadable(self) -> list[str]:
        """The videos that failed to read so far (besides `skipped`, those that failed to index)."""
        return sorted(self._bad)

    def _locate(self, k: int) -> tuple[_Video, int]:
        f = bisect_right(self._starts, k) - 1
        return self._videos[f], k - self._starts[f]

    def _load(self, video: _Video, clip: int) -> dict:
        first = min(clip * self.stride, max(0, video.length - self.frames))  # the last clip ends at the tail
        if self.cache:
            decoded = self._decoded(video)
            first = min(first, max(0, len(decoded) - self.frames))  # the index may overestimate the length
            frames = np.array(decoded[first:first + self.frames])
        start = first / self.fps
        if not self.cache:
            frames = read_video(self.root / video.path, fps=self.fps, size=self.size, fit=self.fit,
                                start=start, num_frames=self.frames)  # (t <= T, H, W, 3)
        if len(frames) < self.frames:  # the index overestimated the length: repeat the last
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.frames - len(frames), 0)])
        seconds = self.frames / self.fps
        audio_path = video.audio or (video.path if video.has_track else None)
        audio = np.zeros(0, np.float32)
        if audio_path is not None:
            try:
                audio = read_audio(self.root / audio_path, self.sample_rate, start, seconds)
            except MediaError as e:  # the pictures are fine: keep them, without sound
                _warn_once(f"unreadable sound, its video's clips are silent: {e}")
                audio_path = None
        return {
            "video": frames,  # (T, H, W, 3) uint8
            "audio": fit_length(audio, round(seconds * self.sample_rate)),  # (S,) float32
            "has_audio": audio_path is not None,
            "caption": video.caption,
            "path": video.path,
            "start": start,
        }

    def _decoded(self, video: _Video) -> np.ndarray:
        """Every frame of the video at the clip rate and size, decoded once into the cache
        (memory-mapped when read back)."""
        key = json.dumps([str((self.root / video.path).resolve()), video.size_bytes, video.mtime, self.fps,
                          list(self.size), self.fit])
        path = cache_dir() / "clips" / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            pass
        frames = read_video(self.root / video.path, fps=self.fps, size=self.size, fit=self.fit)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp, frames)
            os.replace(tmp, path)
        except OSError as e:
            warnings.warn(f"could not cache decoded frames in {path.parent}: {e}", stacklevel=3)
        finally:
            tmp.unlink(missing_ok=True)
        return frames

    def _video(self, rel: str, source: dict, entry: dict) -> _Video:
        n = num_frames_at(entry["duration"], self.fps)
        clips = 0 if n < self.frames else (n - self.frames) // self.stride + 1 + bool((n - self.frames) % self.stride)
        return _Video(rel, source["audio"], source["caption"], entry["has_audio"], clips, n,
                      entry.get("size_bytes"), entry.get("mtime"))

    def _index(self, paths: list[str]) -> dict[str, dict]:
        """Probe results per path, reusing index entries whose size and mtime still match."""
        cached = _load_index(self.index_path)
        entries = {}
        for rel in paths:
            size, mtime = _stat(self.root / rel)
            entry = cached.get(rel)
            if entry is None or (entry["size_bytes"], entry["mtime"]) != (size, mtime):
                entry = _probe(self.root, rel, size, mtime)
            entries[rel] = entry
            if not entry["ok"]:
                _warn_once(f"skipping unreadable video: {self.root / rel}: {entry['error']}")
        if entries != cached:
            _save_index(self.index_path, list(entries.values()))
        return entries


_WARNED: set[str] = set()  # said once per process, however often a folder is opened


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def held_out_videos(paths: list[str], share: float) -> set[str]:
    """The videos held out of training: those whose path hashes into the lowest ``share`` of the
    hash range, so adding files does not move a video between splits. Two fallbacks keep both
    splits non-empty in small folders, and only those can move a video when files are added: when
    the hash picks none of two or more videos, the lowest-hashing one is held out; when it picks
    all, the highest-hashing one trains. A share of 0 holds out nothing."""
    if share <= 0 or len(paths) < 2:
        return set()

    def unit(p: str) -> float:
        return int(hashlib.sha1(p.encode()).hexdigest()[:15], 16) / 16**15

    held = {p for p in paths if unit(p) < share}
    if len(held) == len(paths):
        held.discard(max(paths, key=unit))
    return held or {min(paths, key=unit)}


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:  # (n,)
    """``audio`` cut, or padded with silence, to ``n`` samples."""
    return np.pad(audio[:n], (0, max(0, n - len(audio)))).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- sources


def folder_captions(root) -> list[str]:
    """The caption of every video file under ``root`` ("" where it has none), in path order, from
    the manifest, sidecar files or captions.jsonl, without reading any video."""
    root = Path(root)
    sources = _sources(root)
    if not sources:
        raise DataError(f"{root}: no video files ({', '.join(sorted(VIDEO_EXTS))})")
    return [sources[rel]["caption"] for rel in sorted(sources)]


def _sources(root: Path) -> dict[str, dict]:
    """``{video: {audio, caption}}`` of a folder: its manifest's, or what a scan finds."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    sources = _manifest_sources(root)
    return _scan_sources(root) if sources is None else sources


def _manifest_sources(root: Path) -> dict[str, dict] | None:
    """``{video: {audio, caption}}`` from ``root/manifest.jsonl``, or None if there is none."""
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return None
    sources = {}
    for record in _read_jsonl(manifest, ("video",), texts=("video", "audio", "caption")):
        audio = record.get("audio")
        sources[Path(record["video"]).as_posix()] = {
            "audio": Path(audio).as_posix() if audio else None,
            "caption": record.get("caption") or "",
        }
    return sources


def _scan_sources(root: Path) -> dict[str, dict]:
    """Every video under root, with its sidecar audio and caption."""
    captions_file = root / "captions.jsonl"
    captions = {}
    if captions_file.is_file():
        captions = {Path(r["video"]).as_posix(): r["caption"]
                    for r in _read_jsonl(captions_file, ("video", "caption"), texts=("video", "caption"))}
    sources = {}
    files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_EXTS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    real = {p.resolve() for p in files if not p.is_symlink()}
    for path in files:
        rel = path.relative_to(root)
        if path.is_symlink() and path.resolve() in real:  # a second name of a video already here: read once
            continue
        wav, txt = path.with_suffix(".wav"), path.with_suffix(".txt")
        caption = _read_text(txt).strip() if txt.is_file() else captions.get(rel.as_posix(), "")
        sources[rel.as_posix()] = {
            "audio": wav.relative_to(root).as_posix() if wav.is_file() else None,
            "caption": caption,
        }
    return sources


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _read_jsonl(path: Path, required: tuple[str, ...], texts: tuple[str, ...] = ()) -> list[dict]:
    """The objects of a JSON-lines file, each with the keys ``required``; ``texts``: keys whose
    values must be text (or null, where not required)."""
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from e
        if not isinstance(record, dict) or any(key not in record for key in required):
            raise DataError(f"{path}:{number}: needs an object with keys {', '.join(required)}")
        for key in texts:
            value = record.get(key)
            if not isinstance(value, str) and (key in required or value is not None):
                raise DataError(f"{path}:{number}: {key} must be text, not {json.dumps(value)[:40]}")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- index


def cache_dir() -> Path:
    """Where videolm keeps what it can rebuild (indexes of folders): never inside a user's data."""
    if os.environ.get("VIDEOLM_CACHE"):
        return Path(os.environ["VIDEOLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "videolm"


def _default_index_path(root: Path) -> Path:
    """A per-folder index file in the user cache (input folders are read-only to videolm)."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()
    return cache_dir() / "index" / f"{digest}.json"


def _stat(path: Path) -> tuple[int | None, float | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime


def _probe(root: Path, rel: str, size, mtime) -> dict:
    entry = {"path": rel, "size_bytes": size, "mtime": mtime}
    try:
        info = probe_video(root / rel)
    except MediaError as e:
        return {**entry, "fps": None, "num_frames": None, "duration": None,
                "has_audio": False, "ok": False, "error": e.cause}
    return {**entry, "fps": info.fps, "num_frames": info.num_frames,
            "duration": info.duration, "has_audio": info.has_audio, "ok": True, "error": None}


def _load_index(path: Path) -> dict[str, dict]:
    """Entries by path; an unreadable or outdated index is treated as empty."""
    try:
        data = json.loads(path.read_text())
        files = data["files"] if data.get("version") == INDEX_VERSION else []
        return {entry["path"]: entry for entry in files}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _save_index(path: Path, entries: list[dict]) -> None:
    """Write the index atomically; failing to save it costs speed, not correctness."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": INDEX_VERSION, "files": entries}, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not save the video index {path}: {e}", stacklevel=4)
    finally:
        tmp.unlink(missing_ok=True)
