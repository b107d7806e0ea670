"""Which clips a command reads: the Shapes world (seeded) or a folder of the user's videos."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch.utils.data import Dataset, Subset

from videolm.core.config import check_clip_numbers, check_range
from videolm.core.errors import DataError
from videolm.data.folder import FolderDataset
from videolm.data.shapes import ShapesConfig
from videolm.data.shapes_data import ShapesDataset


@dataclass
class ClipSource:
    """Which clips to tokenize: Shapes (seeded) or a folder of videos."""

    data: str = "shapes"  # "shapes" (seeded clips) or a folder of videos
    num: int = 1024  # clips
    seed: int = 0  # Shapes: first seed offset (clip i uses seed + i); folder: first clip
    split: Literal["train", "eval"] = "train"  # Shapes only: eval draws the held-out seeds (>= 1,000,000)
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64
    width: int = 64
    fps: int = 8
    backgrounds: list[str] = field(default_factory=lambda: ["black"], metadata={"comma": True})  # Shapes only

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 0, 2**63 - 1, "seed")

    def dataset(self) -> Dataset:
        if self.data == "shapes":
            world = ShapesConfig(height=self.height, width=self.width, frames=self.frames, fps=self.fps,
                                 backgrounds=list(self.backgrounds))
            return ShapesDataset(self.num, seed=self.seed, split=self.split, world=world)
        folder = FolderDataset(self.data, frames=self.frames, fps=self.fps, size=(self.height, self.width))
        if self.seed >= len(folder):
            raise DataError(f"{self.data}: has {len(folder)} clips; none from clip {self.seed} on")
        return Subset(folder, range(self.seed, min(self.seed + self.num, len(folder))))


__all__ = ["ClipSource"]
