"""Shapes as datasets: drawn on the fly for training, or written to disk by ``videolm data shapes``.

Seeds decide everything. The training split uses seeds ``seed, seed+1, ...`` below
``EVAL_SEED_START``; the evaluation split uses ``EVAL_SEED_START + seed + i``, so no training clip
is ever an evaluation clip.

On disk (``write_shapes``) a dataset is a folder::

    DIR/manifest.jsonl        one JSON object per clip: id, caption, video, audio, structure, meta
    DIR/config.yaml           the `data shapes` config that regenerates it byte for byte
    DIR/video/ID.mkv          the clip, lossless (FFV1): training frames are kept exactly
    DIR/structure/ID.mkv      the structure video (for stylize), lossless
    DIR/audio/ID.wav          16 kHz mono float32 wav

``FolderDataset`` reads such a folder back through its manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from torch.utils.data import Dataset

from videolm.core.config import check_range, to_dict
from videolm.core.errors import UsageError
from videolm.core.outputs import atomic_output_dir
from videolm.data.media import write_audio, write_video
from videolm.data.shapes import EVAL_SEED_START, ShapesConfig, make_clip


def split_seeds(split: str, seed: int, num: int) -> range:
    """The seeds of ``num`` clips of ``split`` starting at offset ``seed``."""
    if num < 1 or seed < 0:
        raise UsageError(f"num={num}, seed={seed}: need num >= 1 and seed >= 0")
    if split == "eval":
        return range(EVAL_SEED_START + seed, EVAL_SEED_START + seed + num)
    if split != "train":
        raise UsageError(f"split {split!r}: choose train or eval")
    if seed + num > EVAL_SEED_START:
        raise UsageError(
            f"training seeds {seed}..{seed + num - 1} reach the evaluation seeds (>= {EVAL_SEED_START}); "
            f"choose a smaller seed or number of clips (clips for evaluation: --split eval, where a command has it)"
        )
    return range(seed, seed + num)


@dataclass
class ShapesDataConfig:
    """What `videolm data shapes` writes: ``num`` clips of ``split`` from offset ``seed``."""
    num: int = 64  # clips
    seed: int = 0  # first seed; clip i uses seed + i
    split: Literal["train", "eval"] = "train"  # eval draws the held-out seeds (>= 1,000,000)
    world: ShapesConfig = field(default_factory=ShapesConfig)

    def __post_init__(self):
        check_range(self, 1, None, "num")
        check_range(self, 0, 2**63 - 1, "seed")
        self.seeds = split_seeds(self.split, self.seed, self.num)


class ShapesDataset(Dataset):
    """Shapes clips drawn on the fly; item ``i`` is the clip of the split's ``i``-th seed.

    Items carry the same keys as ``FolderDataset`` (video, audio, has_audio, caption) plus
    ``structure``, ``seed`` and ``meta``.
    """

    def __init__(self, num: int, seed: int = 0, split: str = "train", world: ShapesConfig | None = None):
        self.seeds = split_seeds(split, seed, num)
        self.world = world or ShapesConfig()

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict:
        seed = self.seeds[i]
        clip = make_clip(seed, self.world)
        return {
            "video": clip.video,  # (T, H, W, 3) uint8
            "structure": clip.structure,  # (T, H, W, 3) uint8
            "audio": clip.audio,  # (S,) float32
            "has_audio": True,
            "caption": clip.caption,
            "seed": seed,
            "meta": clip.meta,
        }


def clip_id(seed: int) -> str:
    return f"{seed:07d}"


def write_shapes(out: str | Path, cfg: ShapesDataConfig, overwrite: bool = False, progress=None) -> Path:
    """Write ``cfg.num`` clips to the folder ``out`` (all or nothing); returns its path."""
    with atomic_output_dir(out, overwrite=overwrite, command="data shapes") as tmp:
        for sub in ("video", "structure", "audio"):
            (tmp / sub).mkdir()
        with open(tmp / "manifest.jsonl", "w") as manifest:
            for seed in cfg.seeds:
                manifest.write(json.dumps(_write_clip(tmp, seed, cfg.world)) + "\n")
                if progress:
                    progress(1)
        config = {"entry": "data shapes", **to_dict(cfg)}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(out)


def _write_clip(root: Path, seed: int, world: ShapesConfig) -> dict:
    clip = make_clip(seed, world)
    name = clip_id(seed)
    paths = {"video": f"video/{name}.mkv", "audio": f"audio/{name}.wav", "structure": f"structure/{name}.mkv"}
    write_video(root / paths["video"], clip.video, fps=world.fps, quality="lossless")
    write_video(root / paths["structure"], clip.structure, fps=world.fps, quality="lossless")
    write_audio(root / paths["audio"], clip.audio, sample_rate=world.sample_rate, subtype="FLOAT")
    return {"id": name, "caption": clip.caption, **paths, "meta": clip.meta}


def read_manifest(root: str | Path) -> list[dict]:
    with open(Path(root) / "manifest.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
