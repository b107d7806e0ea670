"""The unified vocabulary: the one owner of the token id layout (docs/design.md "Vocabulary").

::

    [ specials | <res:HxW> ... | <task:NAME> ... free task slots | text | video | audio level 0 | ... | extra ]

Geometry tokens say the size of the clip a sequence is about: ``<res:HxW>`` its frame size and
``<frames:N>`` its length in frames; both count as the ``resolution`` modality.

Each range is contiguous and its size comes from the constructor. A new task takes the next free
task slot; once the slots are full new tasks, like new resolutions, are appended to ``extra`` at
the end. No id ever moves, so a trained model keeps working after tokens are added.

Mappings accept Python ints, sequences, numpy arrays and torch tensors: an int gives an int, a
torch tensor gives an int64 tensor on the same device, anything else gives a numpy int64 array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videolm.core.config import from_dict
from videolm.core.errors import ConfigError, VideolmError
from videolm.core.outputs import write_json_atomic as write_json
from videolm.core.saving import read_json

SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<bot_i>", "<eot_i>", "<bov_i>", "<eov_i>",
            "<boa_i>", "<eoa_i>", "<bov_o>", "<eov_o>", "<boa_o>", "<eoa_o>")
FILE_NAME = "vocab.json"
FORMAT = 1
_TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_EXTRA_TOKEN = re.compile(r"<task:[A-Za-z0-9_][A-Za-z0-9_.\-]*>|<res:[1-9][0-9]*x[1-9][0-9]*>|<frames:[1-9][0-9]*>")


class UnknownTokenError(KeyError, VideolmError):
    """A token name (or task, or resolution) that the vocabulary does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


def task_token(name: str) -> str:
    return f"<task:{name}>"


def res_token(h: int, w: int) -> str:
    return f"<res:{h}x{w}>"


def frames_token(n: int) -> str:
    return f"<frames:{n}>"


@dataclass
class _Saved:
    """What ``vocab.json`` holds; parsed with `schema.from_dict` for strict key and type checks."""

    text_size: int
    video_codes: int
    audio_levels: int
    audio_codes: int
    task_slots: int
    resolutions: list[tuple[int, int]]
    tasks: list[str]
    extra: list[str]


class Vocabulary:
    def __init__(self, text_size: int, video_codes: int = 4096, audio_levels: int = 4,
                 audio_codes: int = 1024, tasks=(), resolutions=((64, 64),), task_slots: int = 64):
        self.text_size = _count("text_size", text_size, 1)
        self.video_codes = _count("video_codes", video_codes, 1)
        self.audio_levels = _count("audio_levels", audio_levels, 0)
        self.audio_codes = _count("audio_codes", audio_codes, 1)
        self.task_slots = _count("task_slots", task_slots, 0)
        self._base_resolutions = list(dict.fromkeys(_resolution(h, w) for h, w in resolutions))
        sizes = {"special": len(SPECIALS), "resolution": len(self._base_resolutions),
                 "task": self.task_slots, "text": self.text_size, "video": self.video_codes,
                 **{f"audio{q}": self.audio_codes for q in range(self.audio_levels)}}
        self._ranges: dict[str, tuple[int, int]] = {}  # name -> (start, stop), in id order
        start = 0
        for name, size in sizes.items():
            self._ranges[name] = (start, start + size)
            start += size
        self._base_size = start
        self._slot_tasks: list[str] = []
        self._extra: list[str] = []
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        for i, token in enumerate(SPECIALS):
            self._register(token, i)
        for i, hw in enumerate(self._base_resolutions):
            self._register(res_token(*hw), self._ranges["resolution"][0] + i)
        for name in tasks:
            self.add_task(name)

    # -- adding tokens (never moves an id) ------------------------------------------------------

    def add_task(self, name: str) -> int:
        token = task_token(_task_name(name))
        if token in self._ids:
            return self._ids[token]
        if len(self._slot_tasks) < self.task_slots:
            self._slot_tasks.append(name)
            return self._register(token, self._ranges["task"][0] + len(self._slot_tasks) - 1)
        return self._append_extra(token)

    def add_resolution(self, h: int, w: int) -> int:
        token = res_token(*_resolution(h, w))
        return self._ids[token] if token in self._ids else self._append_extra(token)

    def add_frames(self, n: int) -> int:
        """The ``<frames:N>`` token of clips ``n`` frames long (added to extra when new)."""
        token = frames_token(_resolution(n, 1)[0])
        return self._ids[token] if token in self._ids else self._append_extra(token)

    def add_geometry(self, h: int, w: int, frames: int) -> None:
        self.add_resolution(h, w)
        self.add_frames(frames)

    def extend(self, other: Vocabulary) -> None:
        """Add ``other``'s tasks, resolutions and lengths that this vocabulary lacks (no id moves).
        Both must share the base layout."""
        if (self._ranges, self._base_resolutions) != (other._ranges, other._base_resolutions):
            raise ConfigError("cannot merge vocabularies of different layouts (text, video, audio or task sizes)")
        for token in [*(task_token(t) for t in other.tasks), *other._extra]:
            if token not in self._ids:
                if token.startswith("<task:"):
                    self.add_task(token[len("<task:"):-1])
                else:
                    self._append_extra(token)

    def extends(self, other: Vocabulary) -> bool:
        """Whether every token of ``other`` has the same id here (this one may hold more)."""
        return (self._ranges == other._ranges and self._base_resolutions == other._base_resolutions
                and all(self._ids.get(name) == i for name, i in other._ids.items()))

    # -- named tokens ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._base_size + len(self._extra)

    def __contains__(self, name: str) -> bool:
        return name in self._ids

    def __getitem__(self, name: str) -> int:
        return self.id(name)

    def id(self, name: str) -> int:
        return self._lookup(name, f"token {name!r}")

    def task_id(self, name: str) -> int:
        return self._lookup(task_token(name), f"task {name!r}")

    def res_id(self, h: int, w: int) -> int:
        return self._lookup(res_token(h, w), f"resolution {h}x{w}")

    def frames_id(self, n: int) -> int:
        return self._lookup(frames_token(n), f"length {n} frames")

    def name(self, id: int) -> str:
        if id not in self._names:
            raise UnknownTokenError(f"id {id} is not a named token (it is a {self.modality(id)} id)")
        return self._names[id]

    @property
    def tasks(self) -> list[str]:
        """Task names in id order (slots first, then any in extra)."""
        return self._slot_tasks + [t[len("<task:"):-1] for t in self._extra if t.startswith("<task:")]

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """(H, W) pixel resolutions in id order."""
        extra = [tuple(map(int, t[len("<res:"):-1].split("x"))) for t in self._extra if t.startswith("<res:")]
        return self._base_resolutions + extra

    @property
    def lengths(self) -> list[int]:
        """Clip lengths in frames that have a ``<frames:N>`` token, in id order."""
        return [int(t[len("<frames:"):-1]) for t in self._extra if t.startswith("<frames:")]

    @property
    def extra(self) -> tuple[str, ...]:
        return tuple(self._extra)

    # -- ranges and modalities ------------------------------------------------------------------

    def range(self, name: str, level: int | None = None) -> tuple[int, int]:
        """(start, stop) of a contiguous block: special, resolution, task (all slots), text, video,
        audio (all levels, or ``level=q``), audio0 .. audio{Q-1}, extra."""
        if name == "audio" and level is not None:
            name = f"audio{self._level(level)}"
        if name == "audio":
            video_stop = self._ranges["video"][1]
            return (video_stop, video_stop + self.audio_levels * self.audio_codes)
        if name == "extra":
            return (self._base_size, len(self))
        if name not in self._ranges:
            blocks = ", ".join([*self._ranges, "audio", "extra"])
            raise ValueError(f"unknown id range {name!r} (one of: {blocks})")
        return self._ranges[name]

    def modality(self, id: int) -> str:
        """One of special, resolution, task, text, video, audio. Free task slots count as task."""
        id = self._check_id(id)
        if id >= self._base_size:
            return "task" if self._extra[id - self._base_size].startswith("<task:") else "resolution"
        name = next(n for n, (start, stop) in self._ranges.items() if start <= id < stop)
        return "audio" if name.startswith("audio") else name

    def audio_level(self, id: int) -> int:
        id, (start, stop) = self._check_id(id), self.range("audio")
        if not start <= id < stop:
            raise ValueError(f"id {id} is a {self.modality(id)} id, not an audio id [{start}, {stop})")
        return (id - start) // self.audio_codes

    def modality_mask(self, name: str, ids, level: int | None = None):
        """Which ``ids`` belong to ``name`` (a `range` name). For task and resolution this also
        covers their tokens in extra, so it agrees with `modality`."""
        start, stop = self.range(name, level)
        array = _int_array(ids)
        mask = (array >= start) & (array < stop)
        prefix = {"task": ("<task:",), "resolution": ("<res:", "<frames:")}.get(name)
        extra_ids = [self._ids[t] for t in self._extra if prefix and t.startswith(prefix)]
        if extra_ids and isinstance(array, torch.Tensor):
            mask |= torch.isin(array, torch.tensor(extra_ids, device=array.device))
        elif extra_ids:
            mask |= np.isin(array, extra_ids)
        return bool(mask) if _is_scalar(ids) else mask

    def allowed(self, name: str, level: int | None = None, device=None) -> torch.Tensor:
        """(len(vocab),) bool: the ids that `modality_mask` accepts for ``name``."""
        return self.modality_mask(name, torch.arange(len(self), device=device), level)

    # -- per-modality mapping -------------------------------------------------------------------

    def text_to_ids(self, local):
        return self._shift(local, "text", to_ids=True)

    def ids_to_text(self, ids):
        return self._shift(ids, "text", to_ids=False)

    def video_to_ids(self, codes):
        return self._shift(codes, "video", to_ids=True)

    def ids_to_video(self, ids):
        return self._shift(ids, "video", to_ids=False)

    def audio_to_ids(self, codes, level: int | None = None):
        """``codes[..., q]`` is the level-q code, so (..., Q) codes map level by level; with
        ``level=`` every code is taken at that level."""
        return self._shift(codes, "audio" if level is None else f"audio{self._level(level)}", to_ids=True)

    def ids_to_audio(self, ids, level: int | None = None):
        """(..., Q) ids, ``ids[..., q]`` at level q -> (..., Q) codes; with ``level=`` any shape."""
        return self._shift(ids, "audio" if level is None else f"audio{self._level(level)}", to_ids=False)

    def _shift(self, values, block: str, to_ids: bool):
        """values + start (to ids) or values - start (to codes), checking that the codes lie in
        [0, size). Block "audio" shifts the last axis level by level."""
        array = _int_array(values)
        if block == "audio":
            if array.ndim == 0 or array.shape[-1] != self.audio_levels:
                raise ValueError(f"audio needs a last axis of {self.audio_levels} levels (got shape "
                                 f"{tuple(array.shape)}); pass level= for codes of one level")
            starts = [self._ranges[f"audio{q}"][0] for q in range(self.audio_levels)]  # (Q,)
            if isinstance(array, torch.Tensor):
                starts = torch.tensor(starts, dtype=torch.int64, device=array.device)
            else:
                starts = np.array(starts, np.int64)
            size = self.audio_codes
        else:
            starts, stop = self._ranges[block]
            size = stop - starts
        local = array if to_ids else array - starts
        bad = (local < 0) | (local >= size)
        if bad.any():
            self._raise_out_of_range(array, bad, block, size, to_ids)
        out = array + starts if to_ids else local
        return int(out) if _is_scalar(values) else out

    def _raise_out_of_range(self, array, bad, block: str, size: int, to_ids: bool):
        bad = bad.cpu().numpy() if isinstance(bad, torch.Tensor) else bad
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = int(array[index])
        block = f"audio{index[-1]}" if block == "audio" else block
        what = block.replace("audio", "audio level ") if block.startswith("audio") else block
        if to_ids:
            raise ValueError(f"{what} code {value} is outside [0, {size})")
        start = self._ranges[block][0]
        raise ValueError(f"id {value} is outside the {what} range [{start}, {start + size})")

    # -- saving ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"text_size": self.text_size, "video_codes": self.video_codes,
                "audio_levels": self.audio_levels, "audio_codes": self.audio_codes,
                "task_slots": self.task_slots, "resolutions": [list(hw) for hw in self._base_resolutions],
                "tasks": list(self._slot_tasks), "extra": list(self._extra)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        saved = from_dict(_Saved, data)
        vocab = cls(saved.text_size, saved.video_codes, saved.audio_levels, saved.audio_codes,
                    tasks=saved.tasks, resolutions=saved.resolutions, task_slots=saved.task_slots)
        for token in saved.extra:
            if token in vocab._ids or not _EXTRA_TOKEN.fullmatch(token):
                raise ConfigError(f"vocabulary extra token {token!r} is malformed or repeated")
            vocab._append_extra(token)
        expected = {**vars(saved), "resolutions": [list(hw) for hw in saved.resolutions],
                    "tasks": list(saved.tasks), "extra": list(saved.extra)}
        if vocab.to_dict() != expected:
            raise ConfigError("vocabulary layout is inconsistent "
                              "(repeated tasks or resolutions, or more tasks than task_slots)")
        return vocab

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / FILE_NAME, {"kind": "vocabulary", "format": FORMAT, "vocabulary": self.to_dict()})
        return folder / FILE_NAME

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """From a folder holding ``vocab.json``, or from the file itself."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        data = read_json(path, f"{path}: no vocabulary there (file not found)")
        if not isinstance(data, dict) or data.get("kind") != "vocabulary" or "vocabulary" not in data:
            raise ConfigError(f"{path}: not a saved vocabulary")
        if data.get("format") != FORMAT:
            raise ConfigError(f"{path}: vocabulary format {data.get('format')!r}, expected {FORMAT}")
        try:
            return cls.from_dict(data["vocabulary"])
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name} {stop - start}" for name, (start, stop) in self._ranges.items())
        return f"Vocabulary({len(self)} ids: {sizes}, extra {len(self._extra)}; tasks {self.tasks})"

    # -- internals ------------------------------------------------------------------------------

    def _lookup(self, token: str, what: str) -> int:
        if token not in self._ids:
            tasks = ", ".join(self.tasks) or "none"
            resolutions = ", ".join(f"{h}x{w}" for h, w in self.resolutions) or "none"
            lengths = ", ".join(map(str, self.lengths)) or "none"
            raise UnknownTokenError(f"unknown {what} (this vocabulary has tasks: {tasks}; "
                                    f"resolutions: {resolutions}; lengths in frames: {lengths})")
        return self._ids[token]

    def _register(self, token: str, id: int) -> int:
        self._ids[token] = id
        self._names[id] = token
        return id

    def _append_extra(self, token: str) -> int:
        self._extra.append(token)
        return self._register(token, len(self) - 1)

    def _check_id(self, id) -> int:
        if not _is_scalar(id) or not 0 <= id < len(self):
            raise ValueError(f"{id!r} is not an id of this vocabulary [0, {len(self)})")
        return int(id)

    def _level(self, level: int) -> int:
        if not _is_scalar(level) or not 0 <= level < self.audio_levels:
            raise ValueError(f"audio level {level!r} is outside [0, {self.audio_levels})")
        return int(level)


def _int_array(values):
    """values as an int64 torch tensor (if a tensor) or numpy array; TypeError for non-integers."""
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TypeError(f"token ids and codes must be integers, got {values.dtype}")
        return values.long()
    array = np.asarray(values)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"token ids and codes must be integers, got {array.dtype}")
    return array.astype(np.int64)


def _is_scalar(values) -> bool:
    return isinstance(values, (int, np.integer)) and not isinstance(values, bool)


def _count(name: str, value, minimum: int) -> int:
    if not _is_scalar(value) or value < minimum:
        raise ConfigError(f"vocabulary {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _task_name(name) -> str:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ConfigError(f"task name {name!r} must be letters, digits, '_', '.' or '-'")
    return name


def _resolution(h, w) -> tuple[int, int]:
    if not (_is_scalar(h) and _is_scalar(w) and h > 0 and w > 0):
        raise ConfigError(f"resolution must be two positive integers (H, W), got {h!r}x{w!r}")
    return int(h), int(w)
