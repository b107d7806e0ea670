"""The photo world: seeded clips cut from real photographs, with camera and object motion.

Shapes has flat colours and hard edges; real footage has texture, noise, gradients and motion of
the whole frame. With nothing to download, the photographs come from packages this project
installs (scikit-image's data folder, matplotlib's sample data), and motion is synthesized, a
standard way to train and test motion models without video (e.g. the FlyingChairs / FlyingThings
family of optical-flow datasets pastes moving cut-outs over moving photographs).

A clip is a window moving over one photograph:

- camera: a pan (constant velocity), zoom in or out, a slow rotation, and hand-held shake, at a
  scale drawn log-uniformly from 1 to many source pixels per output pixel (read from an
  anti-aliased pyramid, so zoomed-out frames do not alias);
- objects: with some probability, a soft-edged cut-out of another photograph of the same split
  crosses the frame at its own velocity (parallax against the background);
- light: a brightness and colour-temperature drift over the clip, saturation changes, and a
  little sensor noise.

Photographs are split by image: the ``eval`` split draws only from `HELD_OUT`, which the training
split never uses. Every image's source and licence is in `PHOTOS` (and in each written dataset's
``sources.json``). Any H x W (multiples of 8) and 1 + 4k frames work; the seed decides everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import Dataset

from videolm.core.config import check_clip_numbers, check_range, to_dict
from videolm.core.errors import DataError
from videolm.core.outputs import atomic_output_dir
from videolm.data.media import write_video
from videolm.data.shapes_data import split_seeds


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # the installed package that ships the file
    path: str  # inside the package
    subject: str  # a few words for captions
    source: str
    licence: str


_SK, _MPL = "skimage", "matplotlib"
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", _SK, "data/astronaut.png", "an astronaut in front of a flag",
          "NASA Great Images database (scikit-image data)", "public domain"),
    Photo("chelsea", _SK, "data/chelsea.png", "a tabby cat", "Stefan van der Walt (scikit-image data)", "CC0"),
    Photo("rocket", _SK, "data/rocket.jpg", "a rocket on its launch pad", "SpaceX (scikit-image data)",
          "public domain"),
    Photo("hubble", _SK, "data/hubble_deep_field.jpg", "a field of distant galaxies",
          "NASA Hubble deep field (scikit-image data)", "public domain"),
    Photo("retina", _SK, "data/retina.jpg", "the back of an eye", "Mikael Häggström, Wikimedia (scikit-image data)",
          "CC0"),
    Photo("ihc", _SK, "data/ihc.png", "stained tissue", "immunohistochemistry sample (scikit-image data)",
          "no known copyright restrictions"),
    Photo("camera", _SK, "data/camera.png", "a photographer with a camera", "Lav Varshney (scikit-image data)", "CC0"),
    Photo("coins", _SK, "data/coins.png", "old coins", "Brooklyn Museum, Greek coins from Pompeii (scikit-image data)",
          "no known copyright restrictions"),
    Photo("brick", _SK, "data/brick.png", "a brick wall", "CC0Textures Bricks25 (scikit-image data)", "CC0"),
    Photo("grass", _SK, "data/grass.png", "grass", "CC0Textures (scikit-image data)", "CC0"),
    Photo("cell", _SK, "data/cell.png", "a cell under a microscope", "scikit-image data", "CC0"),
    Photo("text", _SK, "data/text.png", "printed text", "Wikipedia (scikit-image data)", "public domain"),
    # held out: never in the training split
    Photo("coffee", _SK, "data/coffee.png", "a cup of coffee", "Rachel Michetti, Pikolo Espresso Bar (scikit-image data)",
          "CC0"),
    Photo("grace_hopper", _MPL, "mpl-data/sample_data/grace_hopper.jpg", "a portrait of Grace Hopper",
          "US Navy (matplotlib sample data)", "public domain"),
    Photo("gravel", _SK, "data/gravel.png", "gravel", "CC0Textures Gravel04 (scikit-image data)", "CC0"),
)
HELD_OUT = ("coffee", "grace_hopper", "gravel")
MAX_LEVELS = 6  # pyramid levels: up to 32 source pixels per output pixel stay anti-aliased


def split_photos(split: str) -> list[Photo]:
    return [p for p in PHOTOS if (p.name in HELD_OUT) == (split == "eval")]


@lru_cache(maxsize=None)
def _pyramid(name: str) -> tuple[torch.Tensor, ...]:
    """The photograph as float (1, 3, H, W) in [0, 1], then halved by area averaging level by level."""
    photo = next(p for p in PHOTOS if p.name == name)
    try:
        with resources.as_file(resources.files(photo.package) / photo.path) as path, Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (ImportError, OSError) as e:
        raise DataError(f"photo {name!r}: cannot read {photo.path} from the package {photo.package} ({e}); "
                        f"install {'scikit-image' if photo.package == _SK else photo.package}") from e
    levels = [torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()]
    while len(levels) < MAX_LEVELS and min(levels[-1].shape[-2:]) >= 32:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return tuple(levels)


@dataclass
class PhotoConfig:
    """The geometry and timing of photo-world clips, and how much of each kind of motion."""

    height: int = 64  # multiples of 8
    width: int = 64
    frames: int = field(default=17, metadata={"flags": ["--frames"]})  # 1 + 4k
    fps: int = field(default=8, metadata={"flags": ["--fps"]})
    max_scale: float = 8.0  # the most source pixels per output pixel (zoomed out); the least is 1
    object_prob: float = 0.5  # share of clips with a moving cut-out
    noise: float = 0.01  # sensor noise (standard deviation, in [0, 1] units) at most

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "fps", "max_scale")
        check_range(self, 0, 1, "object_prob")
        check_range(self, 0, 0.2, "noise")


@dataclass
class PhotoClip:
    video: np.ndarray  # (T, H, W, 3) uint8
    caption: str
    meta: dict


def _window_grid(h, w, cy, cx, scale, angle, src_h, src_w) -> torch.Tensor:
    """A sampling grid (1, h, w, 2) for grid_sample: output pixel (i, j) reads the source at centre
    (cy, cx) + R(angle) * scale * offset, in the source's normalized coordinates."""
    ys = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) * scale
    xs = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) * scale
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    c, s = float(np.cos(angle)), float(np.sin(angle))
    sx, sy = cx + c * xx - s * yy, cy + s * xx + c * yy
    return torch.stack([(2 * sx + 1) / src_w - 1, (2 * sy + 1) / src_h - 1], dim=-1)[None]


def _sample(name: str, h, w, cys, cxs, scales, angles) -> torch.Tensor:
    """(3, n, h, w): n windows of the photograph `name`, each read from the pyramid level that
    matches its scale (in full-resolution pixels per output pixel); one grid_sample per level."""
    levels = _pyramid(name)
    out = torch.empty(len(scales), 3, h, w)
    picks = np.clip(np.floor(np.log2(np.maximum(scales, 1.0))), 0, len(levels) - 1).astype(int)
    for level in np.unique(picks):
        idx = np.flatnonzero(picks == level)
        img, f = levels[level], 2.0 ** level
        # source pixel centre c is level pixel centre (c + 0.5) / f - 0.5 (each level averages f x f pixels)
        grid = torch.cat([_window_grid(h, w, (cys[i] + 0.5) / f - 0.5, (cxs[i] + 0.5) / f - 0.5, scales[i] / f,
                                       angles[i], *img.shape[-2:]) for i in idx])
        out[idx] = F.grid_sample(img.expand(len(idx), -1, -1, -1), grid, mode="bilinear",
                                 padding_mode="reflection", align_corners=False)
    return out.transpose(0, 1)


def _camera(rng, photo_hw, h, w, frames, max_scale):
    """Per-frame (cy, cx, scale, angle) of the camera, and words describing its motion."""
    src_h, src_w = photo_hw
    fit = min(src_h / h, src_w / w) * 0.9  # the largest scale whose window still fits the photo
    top = max(1.0, min(max_scale, fit))
    scale0 = float(np.exp(rng.uniform(0, np.log(top))))
    kind = rng.choice(["pan", "zoom", "rotate", "still", "pan"])
    zoom = float(np.exp(rng.uniform(0.01, 0.04) * rng.choice([-1, 1]))) if kind == "zoom" else 1.0
    spin = rng.uniform(0.01, 0.04) * rng.choice([-1, 1]) if kind == "rotate" else 0.0
    speed = rng.uniform(0.5, 3.0) if kind == "pan" else rng.uniform(0, 0.3)  # output pixels per frame
    heading = rng.uniform(0, 2 * np.pi)
    shake = rng.uniform(0, 0.8) if rng.random() < 0.4 else 0.0  # output pixels
    angle0 = rng.normal(0, 0.05)
    t = np.arange(frames)
    scales = scale0 * zoom ** t
    # the path, in source pixels: velocity scaled by the current zoom, jitter on top
    step = speed * np.stack([np.sin(heading), np.cos(heading)]) * scale0
    jitter = rng.normal(0, shake, (frames, 2)) * scales[:, None]
    half = np.array([h, w]) * scales.max() / 2 * 1.45  # room for rotation
    lo, hi = half, np.array([src_h, src_w]) - half
    travel = step[None] * t[:, None]
    span = travel.max(0) - travel.min(0)
    start = np.where(hi - lo > span, rng.uniform(lo - travel.min(0), np.maximum(hi - travel.max(0), lo - travel.min(0))),
                     np.array([src_h, src_w]) / 2 - travel.mean(0))
    path = start[None] + travel + jitter
    angles = angle0 + spin * t
    words = {"pan": f"the camera pans {_direction(heading)}", "still": "the camera holds still",
             "zoom": "the camera zooms " + ("in" if zoom < 1 else "out"),
             "rotate": "the camera turns " + ("clockwise" if spin > 0 else "anticlockwise")}[kind]
    if shake:
        words += " with a shaky hand"
    return path, scales, angles, words


def _direction(heading: float) -> str:
    names = ["right", "down and right", "down", "down and left", "left", "up and left", "up", "up and right"]
    return names[int(np.round(heading / (np.pi / 4))) % 8]


def _soft_ellipse(h, w, cy, cx, ry, rx, edge=1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    r = torch.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return torch.clamp((1 - r) * min(ry, rx) / edge, 0, 1)


def make_photo_clip(seed: int, world: PhotoConfig | None = None, split: str = "train") -> PhotoClip:
    """The clip of `seed` in `split` (photographs of the other split never appear)."""
    world = world or PhotoConfig()
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1])
    photos = split_photos(split)
    photo = photos[int(rng.integers(len(photos)))]
    h, w, n = world.height, world.width, world.frames
    src = _pyramid(photo.name)[0]
    path, scales, angles, words = _camera(rng, src.shape[-2:], h, w, n, world.max_scale)
    frames = _sample(photo.name, h, w, path[:, 0], path[:, 1], scales, angles)  # (3, T, H, W)
    caption = f"{photo.subject}, {words}"
    meta = {"photo": photo.name, "scale": round(float(scales[0]), 3)}
    if rng.random() < world.object_prob:
        frames, what = _add_object(rng, frames, photos, photo.name)
        caption += f", {what}"
        meta["object"] = what
    frames = _light(rng, frames, world.noise)
    video = frames.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return PhotoClip(np.ascontiguousarray(video), caption, meta)


def _add_object(rng, frames: torch.Tensor, photos: list[Photo], background: str):
    """Paste a soft elliptical cut-out of another photograph, moving across the frame."""
    _, n, h, w = frames.shape
    others = [p for p in photos if p.name != background] or photos
    other = others[int(rng.integers(len(others)))]
    src_h, src_w = _pyramid(other.name)[0].shape[-2:]
    ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
    scale = float(np.exp(rng.uniform(0, np.log(max(1.0, min(4.0, src_h / h / 2))))))
    centre = (rng.uniform(src_h * 0.3, src_h * 0.7), rng.uniform(src_w * 0.3, src_w * 0.7))
    patch = _sample(other.name, h, w, [centre[0]], [centre[1]], np.array([scale]), [0.0])[:, 0]  # moves with it
    y0, x0 = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.5, 2.5)
    vy, vx = speed * np.sin(heading), speed * np.cos(heading)
    out = frames.clone()
    for t in range(n):
        dy, dx = vy * t, vx * t
        mask = _soft_ellipse(h, w, y0 + dy, x0 + dx, ry, rx)
        moved = torch.roll(patch, shifts=(int(round(dy)), int(round(dx))), dims=(1, 2))
        out[:, t] = frames[:, t] * (1 - mask) + moved * mask
    return out, f"{other.subject} moves {_direction(heading)}"


def _light(rng, frames: torch.Tensor, noise: float) -> torch.Tensor:
    """Brightness and colour-temperature drift, a saturation change, and sensor noise."""
    n = frames.shape[1]
    t = torch.linspace(0, 1, n).view(1, n, 1, 1)
    gain = 1 + rng.uniform(-0.25, 0.25) * t if rng.random() < 0.5 else torch.ones_like(t)
    warm = rng.uniform(-0.08, 0.08) if rng.random() < 0.4 else 0.0
    tint = torch.tensor([1 + warm, 1.0, 1 - warm]).view(3, 1, 1, 1)
    x = frames * gain * (1 + (tint - 1) * t)
    grey = x.mean(0, keepdim=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)
    if noise:
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = x + torch.randn(x.shape, generator=g) * rng.uniform(0, noise)
    return x


# ------------------------------------------------------------------------------------- datasets


class PhotoDataset(Dataset):
    """Photo-world clips drawn on the fly; item ``i`` is the clip of the split's ``i``-th seed.
    Items carry the keys of ``FolderDataset`` (silent audio)."""

    def __init__(self, num: int, seed: int = 0, split: str = "train", world: PhotoConfig | None = None):
        self.seeds = split_seeds(split, seed, num)
        self.split, self.world = split, world or PhotoConfig()

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict:
        clip = make_photo_clip(self.seeds[i], self.world, self.split)
        seconds = self.world.frames / self.world.fps
        return {"video": clip.video, "audio": np.zeros(round(seconds * 16000), np.float32), "has_audio": False,
                "caption": clip.caption, "seed": self.seeds[i], "meta": clip.meta}


@dataclass
class PhotoDataConfig:
    """What `videolm data photos` writes: ``num`` clips of ``split`` from offset ``seed``."""

    num: int = 64  # clips
    seed: int = 0  # first seed; clip i uses seed + i
    split: Literal["train", "eval"] = "train"  # eval: clips of the held-out photographs only
    world: PhotoConfig = field(default_factory=PhotoConfig)

    def __post_init__(self):
        check_range(self, 1, None, "num")
        check_range(self, 0, 2**63 - 1, "seed")
        self.seeds = split_seeds(self.split, self.seed, self.num)


def write_photos(out: str | Path, cfg: PhotoDataConfig, overwrite: bool = False, progress=None) -> Path:
    """Write the clips as lossless video/ID.mkv with manifest.jsonl, config.yaml and sources.json
    (all or nothing); `FolderDataset` reads the folder back through its manifest."""
    with atomic_output_dir(out, overwrite=overwrite, command="data photos") as tmp:
        (tmp / "video").mkdir()
        with open(tmp / "manifest.jsonl", "w") as manifest:
            for seed in cfg.seeds:
                clip = make_photo_clip(seed, cfg.world, cfg.split)
                name = f"{seed:07d}"
                write_video(tmp / "video" / f"{name}.mkv", clip.video, fps=cfg.world.fps, quality="lossless")
                manifest.write(json.dumps({"id": name, "caption": clip.caption, "video": f"video/{name}.mkv",
                                           "meta": clip.meta}) + "\n")
                if progress:
                    progress(1)
        (tmp / "config.yaml").write_text(yaml.safe_dump({"entry": "data photos", **to_dict(cfg)}, sort_keys=False))
        sources = [{"name": p.name, "file": f"{p.package}/{p.path}", "source": p.source, "licence": p.licence}
                   for p in split_photos(cfg.split)]
        (tmp / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    return Path(out)
