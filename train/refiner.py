"""`videolm refiner fit | eval | apply`: the refiner trained on (decoded, clean) pairs and measured.

Two stages, as for the LM: a frozen video tokenizer turns clean clips into decoded ones once
(kept in memory as uint8, and cached in ``OUT/pairs.safetensors`` so a resumed run skips it);
the refiner then trains on random space-time crops of the pairs (it is fully convolutional, so
it learns the same operators on cheaper inputs and still refines whole clips).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch.utils.data import Dataset

from videolm.core.config import check_clip_numbers, check_keys, check_range, to_dict
from videolm.core.errors import ConfigError, UsageError
from videolm.core.models import resolve_model
from videolm.core.saving import CONFIG_NAME
from videolm.data.sources import ClipSource
from videolm.diffusion.process import FlowMatching
from videolm.diffusion.refiner import (
    Refiner,
    RefinerConfig,
    load_refiner,
    make_pairs,
    start_point,
)
from videolm.evaluation.probe import load_probe
from videolm.tasks.tokenizing import load_video_tokenizer
from videolm.train.diffusion_module import DiffusionTrainConfig, fit

PAIRS_NAME = "pairs.safetensors"


@dataclass
class RefinerDataConfig:
    source: str = field(default="shapes", metadata={"flags": ["--data"]})  # "shapes" (training seeds) or a folder
    #   of videos
    num: int = 4096  # clips made into pairs (Shapes seeds seed .. seed+num-1, or a folder's first clips)
    seed: int = 0
    frames: int = 17
    height: int = 64
    width: int = 64
    fps: int = 8
    backgrounds: list[str] = field(default_factory=lambda: ["black"])  # Shapes only
    tokenizer: str = "shapes-64"  # the video tokenizer whose decodes are refined: a folder or a shipped name
    crop_frames: int | None = 9  # training crops; None: whole clips
    crop_size: int | None = 32
    focus: float = 0.5  # fraction of crops centred on a pixel the tokenizer got wrong
    encode_batch: int = 16  # clips per tokenizer call when building the pairs

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 0, None, "seed")
        check_range(self, 1, None, "encode_batch", "crop_frames", "crop_size")
        check_range(self, 0, 1, "focus")

    def clips(self, split: str = "train") -> Dataset:
        return ClipSource(self.source, self.num, self.seed, split, self.frames, self.height, self.width, self.fps,
                          list(self.backgrounds)).dataset()


@dataclass
class ConsistencyConfig:
    """A second training stage through the sampler itself: the refiner's whole few-step path is
    unrolled (with gradients) on whole clips, and its output is held to the clean clip (mean
    squared error) and to the decisions an attribute reader takes on the *unrefined* decode
    (count, colours, and each object's shape, size and direction; see `probe_divergence`). The reader is a Shapes probe
    trained apart from the one that evaluates (other seeds, other clips): the refiner learns to
    keep content, not to please the evaluator."""

    probe: str  # the guide probe's folder (`videolm probe fit --seed 100000 --out ...`)
    weight: float = 1.0  # of the probe term, beside the mean squared error
    steps: int | None = None  # sampler steps unrolled (default: the model's)

    def __post_init__(self):
        if self.weight < 0 or (self.steps is not None and self.steps < 1):
            raise ConfigError(f"consistency: weight={self.weight} must be >= 0 and steps={self.steps} >= 1")


@dataclass
class RefinerFitConfig:
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the RefinerConfig preset's fields
    data: RefinerDataConfig = field(default_factory=RefinerDataConfig)
    train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    out: str = "runs/refiner"
    init: str | None = None  # start from these refiner weights (a folder, or a bundle's refiner/)
    consistency: ConsistencyConfig | None = None  # train through the sampler (needs whole clips: no crops)


# ------------------------------------------------------------------------------------------ pairs


def _pairs_key(data: RefinerDataConfig, tokenizer_folder: Path) -> str:
    weights = hashlib.sha1((tokenizer_folder / "model.safetensors").read_bytes()).hexdigest()
    keep = {k: v for k, v in to_dict(data).items() if k not in ("crop_frames", "crop_size", "focus", "encode_batch")}
    return json.dumps({**keep, "tokenizer_weights": weights}, sort_keys=True)


def cached_pairs(data: RefinerDataConfig, out: Path, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's pairs: read from ``out/pairs.safetensors`` if it was made from the same data and
    tokenizer, else made (and cached there)."""
    tok = load_video_tokenizer(data.tokenizer)  # fails early on a bad tokenizer
    key, path = _pairs_key(data, _tokenizer_folder(data.tokenizer)), out / PAIRS_NAME
    if path.exists():
        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}).get("key") == key
        if same:
            pairs = load_file(str(path))
            return pairs["decoded"], pairs["clean"]
    clips = data.clips()
    tok.check_shape(torch.zeros(1, 3, data.frames, data.height, data.width))
    decoded, clean = make_pairs(clips, tok, data.encode_batch, progress)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"decoded": decoded.contiguous(), "clean": clean.contiguous()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)
    return decoded, clean


def _tokenizer_folder(name: str | Path) -> Path:
    folder = resolve_model(name)
    return folder if (folder / CONFIG_NAME).exists() else folder / "video_tokenizer"


class PairCrops(Dataset):
    """Random space-time crops of the pairs: ``{"cond", "x0"}`` float (3, t, h, w) in [-1, 1].

    A fraction ``focus`` of the crops is centred on a pixel the tokenizer got wrong (its middle
    frame), so fewer steps are spent on empty background, which the refiner learns at once."""

    def __init__(self, decoded: torch.Tensor, clean: torch.Tensor, frames: int | None = None,
                 size: int | None = None, focus: float = 0.0):
        self.decoded, self.clean = decoded, clean  # (N, T, H, W, 3) uint8
        _, t, h, w, _ = clean.shape
        self.frames, self.size = min(frames or t, t), (min(size or h, h), min(size or w, w))
        self.focus = focus
        if (frames or 0) > t or (size or 0) > min(h, w):  # said, not clamped in silence
            warnings.warn(f"data.crop_frames={frames}, data.crop_size={size}: the clips are {t}x{h}x{w}; crops are "
                          f"{self.frames}x{self.size[0]}x{self.size[1]}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.clean)

    def _corner(self, i: int, t0: int) -> tuple[int, int]:
        _, _, h, w, _ = self.clean.shape
        (ch, cw), mid = self.size, t0 + self.frames // 2
        if float(torch.rand(())) < self.focus:
            wrong = (self.decoded[i, mid].int() - self.clean[i, mid].int()).abs().amax(-1) > 24  # (H, W)
            where = wrong.nonzero()  # (K, 2)
            if len(where):
                y, x = where[int(torch.randint(len(where), ()))].tolist()
                jitter = lambda n: int(torch.randint(-(n // 4), n // 4 + 1, ()))  # noqa: E731
                y0, x0 = y - ch // 2 + jitter(ch), x - cw // 2 + jitter(cw)
                return min(max(y0, 0), h - ch), min(max(x0, 0), w - cw)
        return int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))

    def __getitem__(self, i: int) -> dict:
        t0 = int(torch.randint(self.clean.shape[1] - self.frames + 1, ()))
        y0, x0 = self._corner(i, t0)
        window = (slice(t0, t0 + self.frames), slice(y0, y0 + self.size[0]), slice(x0, x0 + self.size[1]))
        crop = lambda v: v[i][window].permute(3, 0, 1, 2).float().div(127.5).sub(1.0)  # noqa: E731  (3, t, h, w)
        return {"cond": crop(self.decoded), "x0": crop(self.clean)}


def stratified_times(n: int, device=None, t_min: float = 0.0) -> torch.Tensor:
    """n times covering [0, 1] evenly: one uniform draw in each of n equal bins (variance reduction,
    as in Kingma et al. 2021, arXiv:2107.00630), shuffled. (n,)"""
    t = (torch.arange(n, device=device) + torch.rand(n, device=device)) / n
    return t[torch.randperm(n, device=device)].clamp_min(t_min)


def refiner_loss(model: Refiner, batch: dict) -> torch.Tensor:
    """Flow-matching loss with t uniform on [t_min, 1] (the few sampling steps visit t = 1 down to
    small t evenly), weighted by t², which makes it the mean squared error of the clean estimate."""
    x0, cond = batch["x0"], batch["cond"]  # (B, 3, t, h, w)
    t = stratified_times(x0.shape[0], x0.device, model.config.t_min)  # (B,)
    noise = start_point(model.config, cond, torch.randn_like(x0))
    w = t.pow(2)  # (B,)
    return FlowMatching().loss(model, x0, cond, t=t, noise=noise, weight=w.view(-1, 1, 1, 1, 1)) * w.mean()


class ConsistencyLoss:
    """``(model, batch) -> loss`` of the consistency stage (see `ConsistencyConfig`)."""

    def __init__(self, cfg: ConsistencyConfig, model_cfg: RefinerConfig):
        self.probe = load_probe(cfg.probe).eval().requires_grad_(False)
        self.weight, self.steps = cfg.weight, cfg.steps or model_cfg.steps

    def __call__(self, model: Refiner, batch: dict) -> torch.Tensor:
        cond, x0 = batch["cond"], batch["x0"]  # (B, 3, T, H, W)
        start = start_point(model.config, cond, torch.zeros_like(cond))  # the deterministic path (noise scale 0)
        out = FlowMatching(shift=model.config.shift).integrate(model, start, cond, steps=self.steps)
        loss = (out.float() - x0.float()).pow(2).mean()
        if not self.weight:
            return loss
        with torch.no_grad():
            seen = self.probe.outputs(_probe_frames(cond))
        return loss + self.weight * probe_divergence(self.probe.outputs(_probe_frames(out.clamp(-1, 1))), seen)


def _probe_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> the probe's input (B, T, H, W, 3) in [0, 1]."""
    return x.permute(0, 2, 3, 4, 1).add(1).div(2)


def probe_divergence(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """How far the probe's reading ``out`` (`Probe.outputs`) is from the decisions it takes on
    ``ref``: cross-entropy against ref's argmax for the count and background, binary
    cross-entropy of each colour's presence against ref's yes/no (its ``count`` likeliest colours),
    and for each colour ref says is there, cross-entropy of its shape, size and direction against
    ref's argmax. Decisions, not distributions: the refined clip should read the same, not be as unsure
    as the blurred decode."""
    ce = torch.nn.functional.cross_entropy
    loss = ce(out["count"], ref["count"].argmax(-1)) + ce(out["background"], ref["background"].argmax(-1))
    count = ref["count"].argmax(-1) + 1  # (B,): objects, 1 or 2
    top = ref["color"].topk(2, -1).indices  # (B, 2): the likeliest colours, as the probe picks them
    present = torch.zeros_like(ref["color"]).scatter(1, top[:, :1], 1.0)  # (B, 7)
    present = present.scatter(1, top[:, 1:], (count[:, None] > 1).float())
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out["color"], present) * present.shape[-1]
    keep = present.bool()  # (B, 7)
    for name in ("shape", "size", "direction"):  # not where: the mean squared error keeps positions
        if keep.any():
            loss = loss + ce(out[name][keep], ref[name][keep].argmax(-1))
    return loss


def run_fit(cfg: RefinerFitConfig, progress=None) -> Path:
    """Build the pairs (or read them back), train, and export OUT/model; returns OUT/model."""
    out = Path(cfg.out)
    try:
        start = None if cfg.init is None else load_refiner(cfg.init).float()
    except UsageError as e:  # the loader speaks of --model; here the setting is init
        raise UsageError(str(e).replace("--model ", "init: ", 1)) from None
    if start is None:
        model_cfg = RefinerConfig.from_name(cfg.preset, **cfg.model)
    else:
        check_keys(RefinerConfig, cfg.model, "model")
        model_cfg = RefinerConfig(**{**to_dict(start.config), **cfg.model})
    data = cfg.data
    m = model_cfg.multiple
    for name, size in (("height", data.height), ("width", data.width), ("crop_size", data.crop_size)):
        if size is not None and size % m:
            raise ConfigError(f"data.{name}={size}: the refiner needs a multiple of {m}")
    loss_fn = refiner_loss
    if cfg.consistency is not None:
        if data.crop_frames is not None or data.crop_size is not None:
            raise ConfigError("consistency: the probe reads whole clips; set data.crop_frames and data.crop_size to null")
        loss_fn = ConsistencyLoss(cfg.consistency, model_cfg)
    decoded, clean = cached_pairs(data, out, progress)
    torch.manual_seed(cfg.train.seed)
    model = Refiner(model_cfg)
    if start is not None:
        model.load_state_dict(start.state_dict())
    export = lambda model, folder: model.save_pretrained(folder, dtype=cfg.train.save_dtype)  # noqa: E731
    crops = PairCrops(decoded, clean, data.crop_frames, data.crop_size, data.focus)
    return fit(model, loss_fn, crops, cfg.train, out, export, run_config={"entry": "refiner fit", **to_dict(cfg)})


# ------------------------------------------------------------------------------------------- eval


# ------------------------------------------------------------------------------------------ apply


__all__ = ["ConsistencyConfig", "ConsistencyLoss", "PairCrops", "RefinerDataConfig", "RefinerFitConfig", "cached_pairs",
           "probe_divergence", "refiner_loss", "run_fit", "stratified_times"]
