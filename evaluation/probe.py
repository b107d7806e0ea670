"""The Shapes probe: a small CNN that reads a clip's attributes back from its pixels.

Evaluation of generated Shapes clips (docs/design.md, "Evaluation") needs a judge that knows
the world: this classifier, trained on ground-truth clips, predicts for a clip (B, T, 64, 64, 3)
uint8, any T >= 1 (T = 1: a still image):

- ``count``: 1 or 2 objects; ``background``: one of BACKGROUNDS;
- per object slot s in {0, 1}: ``shape_s``, ``color_s``, ``size_s``, ``direction_s``.

Slots follow the objects' centres on frame 0, left to right, ties top to bottom, so the order is
visible in the pixels; slot 1 means something only when the count is 2, and direction only when
T > 1 (it is not trained on still images). ``Probe.features`` is the penultimate layer, the space of
the Fréchet distance (``frechet_distance``; reported as FD-probe, never FVD).

How it looks. Objects are told apart by colour: the world draws the two objects of a clip in
different palette colours, so "the red object" names one object. The probe looks at frames 0, 2,
4, 7, 10, 13 and 16 (clamped to the clip's last frame): Shapes objects never bounce before frame
8, so the first four show the initial direction, which is what a caption names, and the later ones
show an object that starts hidden behind the other. Each pixel is softly assigned to its nearest
palette colour (or to "dark": every background is nearer black than any object colour), giving
per colour a silhouette in each of those frames. One small CNN, shared by all colours, reads a
colour's silhouettes (stacked as channels, with two coordinate channels) down to an 8x8 map, from
which come: whether the colour is present, a softmax over cells of where its object is centred on
frame 0, and its shape, size and direction averaged under that softmax. Attributes are thus bound
to objects by construction, even when the two overlap; the slot order is read off the located
centres. A second small CNN reads the RGB frames for the background; the features are its maps
averaged over frames and space, the per-colour maps averaged and max-pooled over colours, and the
two likeliest colours' presence, through one linear layer.

Training (`videolm.train.probe.fit_probe`) draws clips on the fly from training seeds on all backgrounds, cuts each
batch to T in {1, 5, 9, 17} frames, and perturbs pixels the way generated clips differ from
drawn ones, without changing a colour's palette identity: per-channel gain and offset, a partial
3x3 blur (sometimes applied twice), gaussian noise. It then measures accuracy on held-out seeds (>= EVAL_SEED_START),
pairing predicted objects with true ones as ``videolm.evaluation.metrics.match_objects`` does.

The shipped probe (``models/shapes-64/probe``: 36k parameters, 0.15 MB) was trained by::

    fit_probe("models/shapes-64/probe", num_clips=100_000, steps=2000, batch_size=32, seed=0,
              threads=1, preset="default", eval_clips=512, lr=3e-3)

(the defaults; as a command, ``videolm probe fit --out models/shapes-64/probe``) in 9.5
minutes on one CPU thread of a machine busy with another job. On its 512 held-out clips (all
backgrounds) it reads whole clips right for shape 99.5%, colour 100%, size 99.7%, direction
99.1%, count 100%, background 100%; first frames alone: shape 99.2%, colour 99.6%, size 99.2%
(the folder's ``metrics.json``). On 512 held-out black-background clips (the default world):
shape 99.0%, colour 99.6%, size 99.2%, direction 98.6%. What it misses is mostly an object
hidden behind the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.core.saving import CONFIG_NAME, Pretrained
from videolm.data.shapes import BACKGROUNDS, DIRECTIONS, PALETTE, SHAPES, SIZES, ShapesConfig, make_clip
from videolm.data.shapes_data import split_seeds
from videolm.evaluation.metrics import match_objects

SLOTS = 2
COLORS = tuple(PALETTE)
OBJECT_CLASSES: dict[str, tuple[str, ...]] = {
    "shape": tuple(SHAPES),
    "color": COLORS,
    "size": tuple(SIZES),
    "direction": tuple(DIRECTIONS),
}
PER_COLOR = {"locate": 1, "shape": len(SHAPES), "size": len(SIZES), "direction": len(DIRECTIONS)}  # dense maps per colour
COUNTS = (1, 2)
HEADS: dict[str, int] = {
    "count": len(COUNTS),
    "background": len(BACKGROUNDS),
    **{f"{a}_{s}": len(names) for s in range(SLOTS) for a, names in OBJECT_CLASSES.items()},
}
IGNORE = -100  # label of a target that does not apply (a colour not in the clip, the direction of an image)
LOSS_WEIGHTS = {"shape": 2.0}  # shape is the slowest attribute to learn
TRAIN_FRAMES = {1: 0.25, 5: 0.1, 9: 0.25, 17: 0.4}  # clip length -> share of training batches


@dataclass
class ProbeConfig:
    """Sizes of a `Probe`. Plain JSON types only."""

    name: str = "default"
    height: int = 64
    width: int = 64
    frames: list[int] = field(default_factory=lambda: [0, 2, 4, 7, 10, 13, 16])  # the frames it looks at
    object_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 32])  # per-colour CNN, at H/2 .. H/8
    scene_channels: list[int] = field(default_factory=lambda: [8, 16, 32])  # RGB CNN, at H/2, H/4, H/8
    sharpness: float = 20.0  # palette membership: softmax of -sharpness * squared RGB distance (in [0, 1] units)
    hidden: int = 128  # D, the feature dimension

    def __post_init__(self):
        if len(self.object_channels) != 4 or len(self.scene_channels) != 3:
            raise UsageError("ProbeConfig: object_channels needs 4 entries (H/2 .. H/8), scene_channels 3")
        if self.height % 8 or self.width % 8:
            raise UsageError(f"probe frame size {self.height}x{self.width}: must be multiples of 8")
        if not self.frames or min(self.frames) < 0:
            raise UsageError("ProbeConfig.frames: give frame indices >= 0")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ProbeConfig":
        if name not in PRESETS:
            raise UsageError(f"unknown probe preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{"name": name, **PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "debug": {"object_channels": [4, 8, 8, 8], "scene_channels": [4, 4, 8], "hidden": 16},
    "default": {},
}


# ------------------------------------------------------------------------------------- labels


def clip_targets(metas: list[dict], with_direction: bool = True, height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    """Training targets for a batch of clip metadata, indexed by palette colour (a clip's objects
    always differ in colour): ``count``, ``background``: int64 (B,); ``present``: float (B, 7);
    ``cell``: int64 (B, 7), the 8x8 cell (row * W/8 + col) holding the frame-0 centre of the
    object of that colour; ``shape``, ``size``, ``direction``: int64 (B, 7) classes. IGNORE where
    a colour is absent (and for every direction when ``with_direction`` is false)."""
    rows, cols = height // 8, width // 8
    out = {k: [] for k in ("count", "background", "present", "cell", "shape", "size", "direction")}
    for meta in metas:
        out["count"].append(COUNTS.index(len(meta["objects"])))
        out["background"].append(BACKGROUNDS.index(meta["background"]))
        row = {k: [IGNORE] * len(COLORS) for k in ("cell", "shape", "size", "direction")}
        for obj in meta["objects"]:
            c = COLORS.index(obj["color"])
            x, y = obj["centers"][0]
            row["cell"][c] = min(int(y) // 8, rows - 1) * cols + min(int(x) // 8, cols - 1)
            for a in ("shape", "size", "direction"):
                if a != "direction" or with_direction:
                    row[a][c] = OBJECT_CLASSES[a].index(obj[a])
        out["present"].append([float(cell != IGNORE) for cell in row["cell"]])
        for k, v in row.items():
            out[k].append(v)
    return {k: torch.tensor(v, dtype=torch.float if k == "present" else torch.long) for k, v in out.items()}


# -------------------------------------------------------------------------------------- model


def as_input(frames) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) (array or tensor), or float in [0, 1] -> float tensor (B, T, H, W, 3) in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
    if x.ndim != 5 or x.shape[-1] != 3 or x.shape[1] < 1:
        raise UsageError(f"the probe takes clips (B, T, H, W, 3) with T >= 1, got shape {tuple(x.shape)}")
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    """Conv, batch norm, ReLU."""
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _cnn(cin: int, channels: list[int], strides: tuple[int, ...]) -> nn.Sequential:
    layers = []
    for cout, stride in zip(channels, strides):
        layers += _conv(cin, cout, 3, stride)
        cin = cout
    return nn.Sequential(*layers)


class Probe(nn.Module, Pretrained):
    """Attribute classifier for Shapes clips; ``forward`` gives logits per head (see HEADS)."""

    config_class = ProbeConfig
    kind = "shapes_probe"

    def __init__(self, config: ProbeConfig):
        super().__init__()
        self.config = config
        oc, sc, f = config.object_channels, config.scene_channels, len(config.frames)
        self.objects = _cnn(f + 2, oc, (2, 2, 2, 1))  # one colour's membership in each frame, + (x, y)
        self.dense = nn.Conv2d(oc[-1], sum(PER_COLOR.values()), 1)
        self.present = nn.Linear(oc[-1], 1)
        self.scene = _cnn(3 + 2, sc, (2, 2, 2))
        self.fc = nn.Linear(sc[-1] + 2 * oc[-1] + SLOTS, config.hidden)
        self.heads = nn.ModuleDict({"count": nn.Linear(config.hidden, len(COUNTS)),
                                    "background": nn.Linear(config.hidden, len(BACKGROUNDS))})
        h, w = config.height, config.width
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, H, W)
        gy, gx = torch.meshgrid(torch.arange(h // 8.0), torch.arange(w // 8.0), indexing="ij")
        self.register_buffer("cells", torch.stack([gx, gy], -1).reshape(-1, 2), persistent=False)  # (N, 2) as (col, row)
        refs = torch.tensor([PALETTE[c] for c in COLORS] + [(0, 0, 0)], dtype=torch.float) / 255
        self.register_buffer("palette", refs, persistent=False)  # (7 + 1, 3): the colours, then "dark"

    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """Soft nearest palette colour of frames (N, 3, H, W) in [0, 1] -> (N, 7, H, W): a softmax,
        over the palette and a dark class (every background is nearer black than any object
        colour), of minus ``sharpness`` times the squared distance; the dark share is dropped.
        (|x|^2 is common to every class, so the logits are linear in x: a 1x1 convolution.)"""
        k = self.config.sharpness
        logits = F.conv2d(x, 2 * k * self.palette[:, :, None, None], -k * self.palette.pow(2).sum(-1))  # (N, 8, H, W)
        return logits.softmax(1)[:, :-1]

    def rescale(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, F, H, W, 3) of another size scaled so that their shorter side is the probe's
        (objects in the Shapes world are sized by the shorter side), each side rounded to a
        multiple of 8; clips of the probe's own size as they are."""
        b, f, h, w, _ = x.shape
        if (h, w) == (self.config.height, self.config.width):
            return x
        scale = min(self.config.height, self.config.width) / min(h, w)
        size = (max(8, 8 * round(h * scale / 8)), max(8, 8 * round(w * scale / 8)))
        if size == (h, w):
            return x
        flat = x.reshape(b * f, h, w, 3).permute(0, 3, 1, 2)
        flat = F.interpolate(flat, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
        return flat.permute(0, 2, 3, 1).reshape(b, f, *size, 3)

    def grid(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The coordinate channels (1, 2, H, W) and the 8x8 cells (N, 2) of frames H x W: at the
        probe's size its own; at another, the same step per pixel about the centre."""
        if (h, w) == (self.config.height, self.config.width):
            return self.coords, self.cells
        device = self.coords.device
        ys = (torch.arange(h, device=device) - (h - 1) / 2) * (2 / (self.config.height - 1))
        xs = (torch.arange(w, device=device) - (w - 1) / 2) * (2 / (self.config.width - 1))
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        cy, cx = torch.meshgrid(torch.arange(h // 8.0, device=device), torch.arange(w // 8.0, device=device),
                                indexing="ij")
        return torch.stack([gx, gy])[None], torch.stack([cx, cy], -1).reshape(-1, 2)

    def pick_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, ...) -> the frames the probe looks at, (B, F, ...) (indices past T - 1 clamp)."""
        return x[:, [min(k, x.shape[1] - 1) for k in self.config.frames]]

    def outputs(self, frames, picked: bool = False) -> dict[str, torch.Tensor]:
        """Everything the probe computes for clips (B, T, H, W, 3) (uint8, or float in [0, 1]);
        ``picked``: the frames are already ``pick_frames``'s.

        ``features`` (B, D); ``count``, ``background`` logits; ``color`` (B, 7): logits that each
        palette colour is in the clip; per colour, ``locate`` (B, 7, N): logits over the N = H/8 *
        W/8 cells of where that colour's object is centred on frame 0, ``where`` (B, 7, 2): its
        expected (col, row) under them; ``shape``, ``size``, ``direction`` (B, 7, classes): that
        colour's dense logits averaged over those cells.
        """
        x = as_input(frames).to(self.coords.device)
        if not picked:
            x = self.pick_frames(x)  # (B, F, H, W, 3)
        x = self.rescale(x)
        b, _, h, w, _ = x.shape
        coords, cells = self.grid(h, w)
        f, k = x.shape[1], len(COLORS)
        rgb = x.reshape(b * f, h, w, 3).permute(0, 3, 1, 2)  # (B*F, 3, H, W)
        member = self.membership(rgb).reshape(b, f, k, h, w).transpose(1, 2).reshape(b * k, f, h, w)  # (B*7, F, H, W)
        maps = self.objects(torch.cat([member, coords.expand(b * k, -1, -1, -1)], 1))  # (B*7, C, h, w)
        pooled = maps.amax((2, 3))  # (B*7, C)
        dense = self.dense(maps).flatten(2).reshape(b, k, sum(PER_COLOR.values()), -1)  # (B, 7, K, N)
        out = dict(zip(PER_COLOR, dense.split(list(PER_COLOR.values()), 2)))
        out["locate"] = out["locate"][:, :, 0]  # (B, 7, N)
        weights = out["locate"].softmax(-1)  # (B, 7, N)
        out["where"] = weights @ cells  # (B, 7, 2)
        for a in ("shape", "size", "direction"):
            out[a] = (out[a] * weights[:, :, None]).sum(-1)  # (B, 7, classes)
        out["color"] = self.present(pooled).reshape(b, k)  # (B, 7)
        scene = self.scene(torch.cat([rgb * 2 - 1, coords.expand(b * f, -1, -1, -1)], 1))  # (B*F, S, h, w)
        per_color = pooled.reshape(b, k, -1)  # (B, 7, C)
        peaks = out["color"].sigmoid().topk(SLOTS, -1).values  # (B, 2): how sure the two likeliest colours are
        summary = [scene.reshape(b, f, -1, h // 8 * (w // 8)).mean((1, 3)), per_color.mean(1), per_color.amax(1), peaks]
        out["features"] = F.relu(self.fc(torch.cat(summary, 1)))  # (B, D)
        out.update({name: head(out["features"]) for name, head in self.heads.items()})
        return out

    def features(self, frames) -> torch.Tensor:
        """Clips (B, T, H, W, 3) -> the penultimate-layer embedding (B, D), for FD-probe."""
        return self.outputs(frames)["features"]

    def forward(self, frames) -> dict[str, torch.Tensor]:
        """Clips (B, T, H, W, 3) -> logits per HEADS name, each (B, classes).

        The objects are the most likely colours (as many as the count head says; slot 1 of a
        one-object clip is the runner-up colour), in slot order: left to right by where each
        colour's object is centred on frame 0, then top down. A slot's ``color`` logits are the
        colour logits with the other slot's colour masked out.
        """
        out = self.outputs(frames)
        colors = slot_colors(out["color"], out["where"], out["count"].argmax(-1) + 1)  # (B, 2)
        logits = {"count": out["count"], "background": out["background"]}
        for s in range(SLOTS):
            index = colors[:, s, None, None]  # (B, 1, 1)
            for a in ("shape", "size", "direction"):
                logits[f"{a}_{s}"] = out[a].gather(1, index.expand(-1, 1, out[a].shape[-1]))[:, 0]  # (B, classes)
            other = F.one_hot(colors[:, 1 - s], len(COLORS)).bool()  # (B, 7)
            logits[f"color_{s}"] = out["color"].masked_fill(other, -torch.inf)
        return {name: logits[name] for name in HEADS}

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 64) -> list[dict]:
        """uint8 clips (B, T, H, W, 3) -> per clip ``{"background", "objects": [{shape, color, size,
        direction}, ...]}`` with as many objects (in slot order) as the count head says. For T = 1
        the direction is read out all the same, but means nothing."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(frames), batch_size):
            logits = self(frames[i : i + batch_size])
            best = {name: v.argmax(-1).tolist() for name, v in logits.items()}
            for j in range(len(best["count"])):
                objects = [{a: names[best[f"{a}_{s}"][j]] for a, names in OBJECT_CLASSES.items()}
                           for s in range(COUNTS[best["count"][j]])]
                out.append({"background": BACKGROUNDS[best["background"][j]], "objects": objects})
        self.train(was_training)
        return out


def slot_colors(color: torch.Tensor, where: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The palette index of each slot's object, (B, 2), from ``color`` logits (B, 7), ``where``
    (B, 7, 2) frame-0 positions as (col, row), and ``count`` (B,) in {1, 2}: the two likeliest
    colours; with two objects ordered left to right (then top down), with one the likeliest first."""
    top = color.topk(SLOTS, -1).indices  # (B, 2)
    pos = where.gather(1, top[..., None].expand(-1, -1, 2))  # (B, 2, 2)
    later = (pos[:, 0, 0] > pos[:, 1, 0]) | ((pos[:, 0, 0] == pos[:, 1, 0]) & (pos[:, 0, 1] > pos[:, 1, 1]))
    swap = (count == 2) & later
    return torch.where(swap[:, None], top.flip(-1), top)


def probe_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Training loss from ``Probe.outputs`` and ``clip_targets``: cross-entropy of the count and
    the background, binary cross-entropy of which colours are present, and for each present
    colour the cross-entropy of its object's frame-0 cell among all cells and of its attributes."""
    loss = F.cross_entropy(out["count"], targets["count"]) + F.cross_entropy(out["background"], targets["background"])
    loss = loss + F.binary_cross_entropy_with_logits(out["color"], targets["present"]) * len(COLORS)
    present = targets["cell"] != IGNORE  # (B, 7)
    loss = loss + F.cross_entropy(out["locate"][present], targets["cell"][present])
    for a in ("shape", "size", "direction"):
        keep = targets[a] != IGNORE  # (B, 7)
        if keep.any():
            loss = loss + LOSS_WEIGHTS.get(a, 1.0) * F.cross_entropy(out[a][keep], targets[a][keep])
    return loss


def load_probe(name_or_dir: str | Path = "shapes-64") -> Probe:
    """A probe folder, or the ``probe/`` of a model bundle (a folder or a shipped name)."""
    folder = resolve_model(name_or_dir)
    if not (folder / CONFIG_NAME).exists() and (folder / "probe").is_dir():
        folder = folder / "probe"
    return Probe.from_pretrained(folder)


# ------------------------------------------------------------------------------ Fréchet distance


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), in float64, no scipy."""
    a = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: need (N, D) and (M, D) with N, M >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()  # tr((...)^1/2)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)


# ------------------------------------------------------------------------------------ training


def shapes_world() -> ShapesConfig:
    """The world the probe is trained and measured on: the design's clips on every background."""
    return ShapesConfig(backgrounds=list(BACKGROUNDS))


@torch.no_grad()
def evaluate_probe(probe: Probe, num: int = 512, seed: int = 0, world: ShapesConfig | None = None,
                   batch_size: int = 64) -> dict:
    """Held-out accuracy (seeds EVAL_SEED_START + seed ...), for whole clips and for their first frames.

    Returns ``{"num", "clips": {count, background, shape, color, size, direction}, "images":
    {count, background, shape, color, size}}``; object attributes are scored as
    ``match_objects`` scores them (best pairing, a missed object wrong on everything).
    """
    world = world or shapes_world()
    seeds = split_seeds("eval", seed, num)
    views = {"clips": (None, ("shape", "color", "size", "direction")), "images": (1, ("shape", "color", "size"))}
    tallies = {view: {k: [0, 0] for k in ("count", "background", *attrs)} for view, (_, attrs) in views.items()}
    for i in range(0, num, batch_size):
        clips = [make_clip(s, world) for s in seeds[i : i + batch_size]]
        for view, (frames, attrs) in views.items():
            video = np.stack([c.video[:frames] for c in clips])
            tally = tallies[view]
            for clip, guess in zip(clips, probe.predict(video)):
                truth = clip.meta["objects"]
                tally["count"][0] += len(guess["objects"]) == len(truth)
                tally["background"][0] += guess["background"] == clip.meta["background"]
                tally["count"][1] += 1
                tally["background"][1] += 1
                for a, (right, total) in match_objects(truth, guess["objects"], attrs).items():
                    tally[a][0] += right
                    tally[a][1] += total
    result = {"num": num}
    for view, tally in tallies.items():
        result[view] = {k: round(right / total, 4) for k, (right, total) in tally.items()}
    return result


__all__ = [
    "HEADS",
    "PRESETS",
    "Probe",
    "ProbeConfig",
    "clip_targets",
    "evaluate_probe",
    "frechet_distance",
    "load_probe",
    "probe_loss",
    "slot_colors",
]
