"""Which clips a command reads: a generated world (Shapes, photos, or a weighted mix of both), a
folder of videos, or a clip pack of one (`videolm.data.packs`, local or at a URL).

A world is named by a spec: ``shapes``, ``photos``, or a mix such as ``photos:3+shapes:1`` (item i
of a mix comes from one of the worlds, chosen with the given weights by a low-discrepancy sequence,
so any stretch of items holds them in about those shares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from torch.utils.data import Dataset, Subset

from videolm.core.config import check_clip_numbers, check_range
from videolm.core.errors import DataError, UsageError
from videolm.data.folder import FolderDataset
from videolm.data.packs import ClipPack, is_pack
from videolm.data.photos import PhotoConfig, PhotoDataset
from videolm.data.shapes import ShapesConfig
from videolm.data.shapes_data import ShapesDataset
from videolm.data.worlds import WORLDS, is_world, parse_world

GOLDEN = (math.sqrt(5) - 1) / 2


class MixedDataset(Dataset):
    """Item i of a weighted mix of datasets: part k where the golden-ratio sequence frac(i * 0.618)
    falls in k's share of [0, 1); within a part, its own item i (mod its length)."""

    def __init__(self, parts: list[Dataset], weights: list[float]):
        total = sum(weights)
        self.parts, self.edges = parts, [sum(weights[:k + 1]) / total for k in range(len(weights))]

    def __len__(self) -> int:
        return max(len(p) for p in self.parts)

    def part_of(self, i: int) -> int:
        u = (i * GOLDEN) % 1.0
        return next(k for k, edge in enumerate(self.edges) if u < edge or k == len(self.edges) - 1)

    def __getitem__(self, i: int):
        part = self.parts[self.part_of(i)]
        return part[i % len(part)]


def world_dataset(spec: str, num: int, seed: int = 0, split: str = "train", frames: int = 17, height: int = 64,
                  width: int = 64, fps: int = 8, backgrounds=("black",)) -> Dataset:
    """``num`` clips of a world spec's ``split`` from offset ``seed``."""
    parts = []
    for name, _ in parse_world(spec) or []:
        if name == "shapes":
            world = ShapesConfig(height=height, width=width, frames=frames, fps=fps, backgrounds=list(backgrounds))
            parts.append(ShapesDataset(num, seed=seed, split=split, world=world))
        else:
            world = PhotoConfig(height=height, width=width, frames=frames, fps=fps)
            parts.append(PhotoDataset(num, seed=seed, split=split, world=world))
    if not parts:
        raise UsageError(f"data {spec!r}: not one of {', '.join(WORLDS)} or a mix like photos:3+shapes:1")
    return parts[0] if len(parts) == 1 else MixedDataset(parts, [w for _, w in parse_world(spec)])


@dataclass
class ClipSource:
    """Which clips to tokenize: a world (seeded), a folder of videos or a clip pack."""

    data: str = "shapes"  # "shapes", "photos", a mix like "photos:3+shapes:1" (seeded), a folder of videos or a pack
    num: int = 1024  # clips
    seed: int = 0  # worlds: first seed offset (clip i uses seed + i); folder: first clip
    split: Literal["train", "eval"] = "train"  # eval: a world's held-out seeds / photographs, a pack's held-out
    #   part, a folder's held-out videos (--held-out, default 0.1, as `tokenizer fit` holds them out)
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64
    width: int = 64
    fps: int = 8
    backgrounds: list[str] = field(default_factory=lambda: ["black"], metadata={"comma": True})  # Shapes only
    held_out: float | None = None  # a folder: only the videos held out at this share (as `tokenizer fit` held them)

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 0, 2**63 - 1, "seed")
        check_range(self, 0, 0.9, "held_out", low_open=True)

    def dataset(self) -> Dataset:
        if is_world(self.data):
            return world_dataset(self.data, self.num, self.seed, self.split, self.frames, self.height, self.width,
                                 self.fps, self.backgrounds)
        if is_pack(self.data):  # split when packed: --split eval or --held-out read its held-out part
            held = self.split == "eval" or self.held_out is not None
            pack = open_pack(self.data, "eval" if held else "train", self.height, self.width, self.frames, self.fps)
            if held and not len(pack):
                raise DataError(f"{self.data}: the pack has no held-out clips (packed with --held-out 0, or from "
                                "one video)")
            return _clips_from(pack, self.data, self.seed, self.num)
        held = self.split == "eval" or self.held_out is not None  # --split eval: the default share's held-out videos
        split = {"split": "eval", "held_out": 0.1 if self.held_out is None else self.held_out} if held else {}
        folder = FolderDataset(self.data, frames=self.frames, fps=self.fps, size=(self.height, self.width), **split)
        return _clips_from(folder, self.data, self.seed, self.num)


def _clips_from(clips: Dataset, name: str, first: int, num: int) -> Subset:
    if first >= len(clips):
        raise DataError(f"{name}: has {len(clips)} clips; none from clip {first} on")
    return Subset(clips, range(first, min(first + num, len(clips))))


def open_pack(url: str, part: str, height: int, width: int, frames: int, fps: float) -> ClipPack:
    """A pack's part, checked to hold clips of the size, length and rate asked for."""
    pack = ClipPack(url, part)
    want, have = (height, width, frames, float(fps)), (*pack.size, pack.frames, pack.fps)
    if want != have:
        def clips(h, w, n, rate):
            return f"{h}x{w} clips of {n} frames at {rate:g} fps"

        raise UsageError(f"{url}: the pack holds {clips(*have)}; this command reads {clips(*want)}: set its size, "
                         "frames and fps to the pack's, or pack the folder again")
    return pack


__all__ = ["ClipSource", "MixedDataset", "is_world", "open_pack", "parse_world", "world_dataset"]
