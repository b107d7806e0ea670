"""The Shapes world: a seeded, procedural generator of captioned audio-visual clips.

Everything here follows docs/design.md ("The Shapes world") exactly, because tests and
evaluation rely on it: one or two coloured shapes move across a dark background, bounce off the
frame's edges, each hums a tone set by its shape, and each bounce clicks.

A clip is drawn in two steps: ``sample_scene`` turns a seed into a `Scene` (the attributes: which
shapes, colours, sizes, directions, start positions, background), then ``render`` turns a scene
into pixels, a structure video and audio. Both are deterministic, so ``make_clip(seed)`` gives the
same arrays every time. Rendering goes through one label map per clip (0 = background, k = object
k), from which the RGB video and the structure video are both looked up, so they always agree.

Choices the design leaves open, fixed here:
- Shapes are drawn with hard edges (no anti-aliasing), so every object pixel has its exact colour.
- Two objects in one clip always have different colours, so a caption names each unambiguously.
- Positions are whole pixels at 64x64; at other sizes the speed scales with the frame and the
  drawn position is the rounded one. A bounce happens on the frame where the object touches or
  would cross an edge; it is reflected back inside the frame on that same frame.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from videolm.core.errors import DataError, UsageError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40),
    "green": (40, 220, 40),
    "blue": (60, 90, 255),
    "yellow": (255, 230, 40),
    "cyan": (40, 230, 230),
    "magenta": (230, 40, 230),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 12, "large": 20}  # side of the bounding box in pixels at 64x64
DIRECTIONS = ("left", "right", "up", "down", "still")
ATTRIBUTES = ("shape", "color", "size", "direction")  # what each object of a clip is described by
VELOCITY = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
SPEED = 2  # pixels per frame at 64x64
TONES = {"circle": 330.0, "square": 494.0, "triangle": 740.0}  # Hz
AMPLITUDES = {"large": 0.3, "small": 0.15}
BACKGROUNDS = ("black", "gray", "striped", "checkered", "noise")
CLICK_SECONDS = 0.015
CLICK_PEAK = 0.5
STRUCTURE_LEVELS = (0, 255, 160)  # background, first object, second object
NO_BOUNCE_FRAMES = 8  # the first bounce happens on frame 8 or later
EVAL_SEED_START = 1_000_000  # evaluation draws seeds from here up; training never does


@dataclass
class ShapesConfig:
    """The geometry and timing of a Shapes world. The defaults are the design's."""

    height: int = 64  # multiples of 8, at least 32
    width: int = 64
    frames: int = field(default=17, metadata={"flags": ["--frames"]})  # 1 + 4k
    fps: int = field(default=8, metadata={"flags": ["--fps"]})
    sample_rate: int = 16000
    backgrounds: list[str] = field(default_factory=lambda: ["black"], metadata={"flags": ["--background"],
                                                                                "comma": True})  # or 'all'
    max_objects: int = 2

    def __post_init__(self):
        if self.backgrounds == ["all"]:
            self.backgrounds = list(BACKGROUNDS)
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 32:
            raise UsageError(f"frame size {self.height}x{self.width}: H and W must be multiples of 8, at least 32")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise UsageError(f"frames={self.frames}: a clip has 1 + 4k frames (1, 5, 9, 13, 17, ...)")
        if self.fps < 1 or self.sample_rate < 1000:
            raise UsageError(f"fps={self.fps}, sample_rate={self.sample_rate}: both must be positive (sample rate >= 1000)")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown or not self.backgrounds:
            raise UsageError(f"background {unknown or '[]'}: choose from {', '.join(BACKGROUNDS)}")
        if self.max_objects not in (1, 2):
            raise UsageError(f"max_objects={self.max_objects}: a Shapes clip has 1 or 2 objects")

    @property
    def scale(self) -> float:
        return min(self.height, self.width) / 64

    @property
    def num_samples(self) -> int:
        return round(self.frames / self.fps * self.sample_rate)

    def size_px(self, size: str) -> int:
        return round(SIZES[size] * self.scale)


@dataclass
class ShapeObject:
    shape: str
    color: str
    size: str
    direction: str
    start: tuple[float, float]  # top-left corner (x, y) on frame 0

    def phrase(self) -> str:
        motion = "stays still" if self.direction == "still" else f"moves {self.direction}"
        return f"a {self.size} {self.color} {self.shape} {motion}"


@dataclass
class Scene:
    seed: int
    background: str
    objects: list[ShapeObject]

    @property
    def caption(self) -> str:
        text = " and ".join(o.phrase() for o in self.objects)
        return text if self.background == "black" else f"{text} on a {self.background} background"


@dataclass
class ShapesClip:
    video: np.ndarray  # (T, H, W, 3) uint8
    structure: np.ndarray  # (T, H, W, 3) uint8, gray levels STRUCTURE_LEVELS
    audio: np.ndarray  # (S,) float32 in [-1, 1]
    caption: str
    meta: dict


# ---------------------------------------------------------------------------------------- scenes


def _start_range(direction_sign: int, max_pos: int, speed: float) -> tuple[int, int]:
    """Whole-pixel start positions along one axis that keep the first bounce at frame >= 8."""
    travel = speed * (NO_BOUNCE_FRAMES - 1)
    if direction_sign > 0:  # must stay strictly below max_pos through frame 7
        return 0, int(np.ceil(max_pos - travel)) - 1
    if direction_sign < 0:  # must stay strictly above 0 through frame 7
        return int(np.floor(travel)) + 1, max_pos
    return 0, max_pos


def sample_object(rng: np.random.Generator, cfg: ShapesConfig, exclude_colors=()) -> ShapeObject:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colors = [c for c in PALETTE if c not in exclude_colors]
    color = colors[rng.integers(len(colors))]
    size = ("small", "large")[rng.integers(2)]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    return ShapeObject(shape, color, size, direction, _sample_start(rng, cfg, size, direction))


def _sample_start(rng: np.random.Generator, cfg: ShapesConfig, size: str, direction: str) -> tuple[float, float]:
    s = cfg.size_px(size)
    vx, vy = VELOCITY[direction]
    speed = SPEED * cfg.scale
    x_lo, x_hi = _start_range(vx, cfg.width - s, speed)
    y_lo, y_hi = _start_range(vy, cfg.height - s, speed)
    return float(rng.integers(x_lo, x_hi + 1)), float(rng.integers(y_lo, y_hi + 1))


def sample_scene(seed: int, cfg: ShapesConfig) -> Scene:
    rng = np.random.default_rng(seed)
    background = cfg.backgrounds[rng.integers(len(cfg.backgrounds))]
    objects = [sample_object(rng, cfg)]
    if cfg.max_objects == 2 and rng.integers(2):
        objects.append(sample_object(rng, cfg, exclude_colors={objects[0].color}))
    return Scene(seed, background, objects)


# -------------------------------------------------------------------------------------- motion


def trajectory(obj: ShapeObject, cfg: ShapesConfig) -> tuple[np.ndarray, list[int]]:
    """Top-left positions per frame, (T, 2) float as (x, y), and the frames where it bounced."""
    s = cfg.size_px(obj.size)
    max_pos = np.array([cfg.width - s, cfg.height - s], dtype=np.float64)
    vel = np.array(VELOCITY[obj.direction], dtype=np.float64) * SPEED * cfg.scale
    pos = np.array(obj.start, dtype=np.float64)
    out = np.empty((cfg.frames, 2))
    out[0] = pos
    bounces = []
    for t in range(1, cfg.frames):
        pos = pos + vel
        low, high = pos <= 0, pos >= max_pos
        hit = (low | high) & (vel != 0)
        if hit.any():
            pos = np.where(hit & low, -pos, pos)
            pos = np.where(hit & high, 2 * max_pos - pos, pos)
            vel = np.where(hit, -vel, vel)
            bounces.append(t)
        out[t] = pos
    return out, bounces


# ------------------------------------------------------------------------------------- drawing

_MASKS: dict[tuple[str, int], np.ndarray] = {}


def shape_mask(shape: str, s: int) -> np.ndarray:
    """A boolean (s, s) stamp of the shape, hard-edged, sampled at pixel centres."""
    key = (shape, s)
    if key not in _MASKS:
        c = np.arange(s) + 0.5
        x, y = c[None, :], c[:, None]
        if shape == "circle":
            mask = (x - s / 2) ** 2 + (y - s / 2) ** 2 <= (s / 2) ** 2
        elif shape == "square":
            mask = np.ones((s, s), dtype=bool)
        elif shape == "triangle":  # apex at the top centre, base along the bottom row
            mask = np.abs(x - s / 2) <= (y + 0.5) / 2  # 2 px wide at the apex row
        else:
            raise UsageError(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        _MASKS[key] = mask
    return _MASKS[key]


def background_image(name: str, cfg: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8, every channel <= 110 so objects (each with a channel >= 220) stand out."""
    h, w = cfg.height, cfg.width
    cell = max(1, round(8 * cfg.scale))
    if name == "black":
        return np.zeros((h, w, 3), np.uint8)
    if name == "gray":
        return np.full((h, w, 3), 80, np.uint8)
    if name == "striped":  # vertical stripes
        band = (np.arange(w) // cell) % 2
        return np.broadcast_to(np.where(band, 70, 30).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    if name == "checkered":
        ys, xs = np.arange(h)[:, None] // cell, np.arange(w)[None, :] // cell
        board = np.where((ys + xs) % 2, 75, 25).astype(np.uint8)
        return np.repeat(board[:, :, None], 3, axis=2)
    if name == "noise":  # static for the clip
        return rng.integers(0, 101, size=(h, w, 3), dtype=np.uint8)
    raise UsageError(f"unknown background {name!r}: choose from {', '.join(BACKGROUNDS)}")


def _label_map(scene: Scene, cfg: ShapesConfig, tracks: list[np.ndarray]) -> np.ndarray:
    labels = np.zeros((cfg.frames, cfg.height, cfg.width), np.uint8)  # (T, H, W)
    for k, (obj, track) in enumerate(zip(scene.objects, tracks), start=1):
        s = cfg.size_px(obj.size)
        mask = shape_mask(obj.shape, s)
        corners = np.rint(track).astype(int)  # (T, 2)
        for t, (x, y) in enumerate(corners):
            labels[t, y : y + s, x : x + s][mask] = k  # later objects are drawn over earlier ones
    return labels


def _click(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    n = round(CLICK_SECONDS * sample_rate)
    burst = rng.uniform(-1.0, 1.0, n) * np.exp(-np.arange(n) / (n / 5))
    return (burst * (CLICK_PEAK / np.abs(burst).max())).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _tone(freq: float, num_samples: int, sample_rate: int) -> np.ndarray:
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    return np.sin(2 * np.pi * freq * t)


def _audio(scene: Scene, cfg: ShapesConfig, bounces: list[list[int]], rng: np.random.Generator) -> np.ndarray:
    n = cfg.num_samples
    audio = np.zeros(n, np.float64)
    for obj, hits in zip(scene.objects, bounces):
        audio += AMPLITUDES[obj.size] * _tone(TONES[obj.shape], n, cfg.sample_rate)
        for frame in hits:
            click = _click(rng, cfg.sample_rate)
            start = round(frame / cfg.fps * cfg.sample_rate)
            end = min(n, start + len(click))
            audio[start:end] += click[: end - start]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def render(scene: Scene, cfg: ShapesConfig) -> ShapesClip:
    rng = np.random.default_rng([scene.seed, 1])  # texture and click noise, apart from the scene draw
    tracks, bounces = zip(*(trajectory(o, cfg) for o in scene.objects))
    labels = _label_map(scene, cfg, tracks)  # (T, H, W)
    colors = np.array([(0, 0, 0)] + [PALETTE[o.color] for o in scene.objects], np.uint8)
    video = np.empty((cfg.frames, cfg.height, cfg.width, 3), np.uint8)  # (T, H, W, 3)
    video[:] = background_image(scene.background, cfg, rng)
    drawn = labels > 0
    video[drawn] = colors[labels[drawn]]
    gray = np.repeat(np.array(STRUCTURE_LEVELS, np.uint8)[:, None], 3, axis=1)  # (3 levels, 3 channels)
    structure = gray[labels]  # (T, H, W, 3)
    audio = _audio(scene, cfg, list(bounces), rng)
    return ShapesClip(video, structure, audio, scene.caption, _meta(scene, cfg, tracks, bounces))


def _meta(scene: Scene, cfg: ShapesConfig, tracks, bounces) -> dict:
    objects = []
    for obj, track, hits in zip(scene.objects, tracks, bounces):
        s = cfg.size_px(obj.size)
        centers = np.rint(track) + s / 2
        objects.append(
            {
                "shape": obj.shape,
                "color": obj.color,
                "size": obj.size,
                "size_px": s,
                "direction": obj.direction,
                "centers": centers.round(3).tolist(),  # bounding-box centres (x, y) per frame
                "bounces": list(hits),
            }
        )
    return {
        "seed": scene.seed,
        "background": scene.background,
        "caption": scene.caption,
        "height": cfg.height,
        "width": cfg.width,
        "frames": cfg.frames,
        "fps": cfg.fps,
        "sample_rate": cfg.sample_rate,
        "objects": objects,
    }


def make_clip(seed: int, cfg: ShapesConfig | None = None) -> ShapesClip:
    """The clip for ``seed``: the same arrays on every call and every machine."""
    cfg = cfg or ShapesConfig()
    return render(sample_scene(seed, cfg), cfg)


# ------------------------------------------------------------------------------------- captions

_PHRASE = re.compile(
    r"a (?P<size>small|large) (?P<color>\w+) (?P<shape>\w+) (?:moves (?P<direction>left|right|up|down)|stays still)"
)


def parse_caption(caption: str) -> dict:
    """Inverse of the caption grammar: ``{"background", "objects": [{shape, color, size, direction}]}``.

    Raises DataError on a caption outside the grammar.
    """
    body, background = caption, "black"
    m = re.fullmatch(r"(?P<body>.+) on a (?P<bg>\w+) background", caption)
    if m:
        body, background = m["body"], m["bg"]
    objects = []
    for part in body.split(" and "):
        p = _PHRASE.fullmatch(part)
        if not p or p["color"] not in PALETTE or p["shape"] not in SHAPES:
            raise DataError(f"caption {caption!r} does not follow the Shapes grammar (at {part!r})")
        objects.append({"shape": p["shape"], "color": p["color"], "size": p["size"], "direction": p["direction"] or "still"})
    if background not in BACKGROUNDS or background == "black" and m:
        raise DataError(f"caption {caption!r} names an unknown background {background!r}")
    if len(objects) > 2:
        raise DataError(f"caption {caption!r} has {len(objects)} objects; Shapes clips have 1 or 2")
    return {"background": background, "objects": objects}
