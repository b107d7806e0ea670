"""`videolm dit fit`: the DiT baseline trained on the same Shapes clips as the LM.

Two stages, as for the LM: the frozen video tokenizer encodes the training clips once into
latents (`videolm.diffusion.latents`), cached with the captions' text ids in
``OUT/latents/*.safetensors`` (a rerun, or a resumed run, reads them back); then the DiT trains on
the cache with the shared flow-matching loss. Each example is a ``t2v`` one (nothing given) or an
``extend`` one (its first latent frames given, no loss on them), drawn by ``data.tasks``' weights;
captions are emptied at ``data.text_dropout`` for guidance (``extend_text_dropout`` for extend,
so that it also works from a video alone, as the LM's extend does). The run folder::

    OUT/latents/shapes-S-N.safetensors   latents (N, D, t, h, w) and text ids (N, K), -1 padded
    OUT/checkpoints/last.ckpt, OUT/metrics.jsonl, OUT/run.json
    OUT/model/   config.json + model.safetensors (EMA weights), text.model, training.json
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from videolm.core.config import check_clip_numbers, check_range, to_dict
from videolm.core.errors import ConfigError
from videolm.core.models import GENERATION_CONFIG, resolve_model
from videolm.core.outputs import write_json_atomic
from videolm.data.shapes import ShapesConfig
from videolm.data.shapes_data import ShapesDataset
from videolm.diffusion.dit import DiT, DiTConfig, null_text
from videolm.diffusion.dit_pipeline import conditioned
from videolm.diffusion.latents import encode_latents
from videolm.diffusion.process import FlowMatching
from videolm.tokenizers.geometry import context_latents, latent_frames
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, to_tensor
from videolm.train.diffusion_module import DiffusionTrainConfig, fit

TASKS = ("t2v", "extend")
TRAINING_JSON = "training.json"


@dataclass
class DiTDataConfig:
    num: int = 8192  # Shapes training clips, seeds seed .. seed+num-1 (the LM's: 0 .. 8191)
    seed: int = 0
    model: str = "shapes-64"  # the model folder whose video tokenizer and text.model make the data
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0, "extend": 0.5})  # name -> weight
    text_dropout: float = 0.1  # classifier-free guidance: captions emptied this often
    extend_text_dropout: float = 0.5  # for extend examples
    encode_batch: int = 64  # clips encoded at once when the cache is made
    frames: int = 17  # clip length, 1 + 4k: the DiT's latent grid follows the clip's size
    height: int = 64  # frame size (--size HxW sets both)
    width: int = 64

    def __post_init__(self):
        check_clip_numbers(self)
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks or min(self.tasks.values()) < 0 or sum(self.tasks.values()) <= 0:
            raise ConfigError(f"data.tasks: give positive weights for some of {', '.join(TASKS)}"
                              + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        if self.num < 1:
            raise ConfigError(f"data.num={self.num} must be >= 1")
        t = latent_frames(self.frames)
        if self.tasks.get("extend", 0) > 0 and t - context_latents(t) < 1:
            raise ConfigError(f"data.tasks: extend at {self.frames} frames has nothing to make (its context takes "
                              "every frame); give it weight 0 or use 5 frames or more")
        check_range(self, 0, None, "seed")
        check_range(self, 1, None, "encode_batch")
        for name in ("text_dropout", "extend_text_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be in [0, 1]")

    @property
    def extend_share(self) -> float:
        return self.tasks.get("extend", 0.0) / sum(self.tasks.values())


@dataclass
class DiTFitConfig:
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the DiTConfig preset's fields
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    process: FlowMatching = field(default_factory=FlowMatching)
    train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    out: str = "runs/dit"  # the run folder (a rerun resumes it)
    sample_steps: int = 32  # the model's default Euler steps when it generates (its generation_config.json)
    guidance_scale: float = 4.0  # and its default classifier-free guidance

    def __post_init__(self):
        check_range(self, 1, 10_000, "sample_steps")
        check_range(self, 0, 100, "guidance_scale")


# ------------------------------------------------------------------------------------ data


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def latent_cache(cfg: DiTDataConfig, out: Path, progress=None) -> tuple[dict[str, torch.Tensor], float]:
    """``{"latents": (N, D, t, h, w), "ids": (N, K) int64, -1 padded}`` of the Shapes training clips,
    read from ``out/latents/`` when it holds them for the same clips and tokenizer, else encoded
    (once) and written there; and the seconds the encoding took."""
    folder = resolve_model(cfg.model)
    size = "" if (cfg.frames, cfg.height, cfg.width) == (17, 64, 64) else f"-{cfg.height}x{cfg.width}x{cfg.frames}"
    path = out / "latents" / f"shapes-{cfg.seed}-{cfg.num}{size}.safetensors"
    key = {"num": str(cfg.num), "seed": str(cfg.seed), "size": f"{cfg.height}x{cfg.width}x{cfg.frames}",
           "tokenizer": _file_digest(folder / "video_tokenizer" / "model.safetensors"),
           "text": _file_digest(folder / "text.model")}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if f.metadata() == key:
                return load_file(str(path)), json.loads(path.with_suffix(".json").read_text())["seconds"]
    start = time.perf_counter()
    tokenizer = VideoTokenizer.from_pretrained(folder / "video_tokenizer").eval()
    text = TextTokenizer.load(folder / "text.model")
    world = ShapesConfig(height=cfg.height, width=cfg.width, frames=cfg.frames)
    data = ShapesDataset(cfg.num, seed=cfg.seed, split="train", world=world)
    latents, ids = [], []
    for first in range(0, cfg.num, cfg.encode_batch):
        clips = [data[i] for i in range(first, min(first + cfg.encode_batch, cfg.num))]
        latents.append(encode_latents(tokenizer, to_tensor(torch.stack([torch.from_numpy(c["video"]) for c in clips]))))
        ids += [text.encode(c["caption"]) for c in clips]
        if progress:
            progress(len(clips))
    width = max(len(r) for r in ids)
    tensors = {"latents": torch.cat(latents).contiguous(),  # (N, D, t, h, w)
               "ids": torch.tensor([r + [-1] * (width - len(r)) for r in ids], dtype=torch.long)}  # (N, K)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=key)
    os.chmod(tmp, 0o644)
    seconds = round(time.perf_counter() - start, 1)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}) + "\n")
    os.replace(tmp, path)
    return tensors, seconds


class LatentClips(Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.latents, self.ids = tensors["latents"], tensors["ids"]

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "ids": self.ids[i]}


def latent_stats(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, D, t, h, w), rounded (they go into the model's config)."""
    flat = latents.transpose(0, 1).flatten(1).double()  # (D, N*t*h*w)
    return [round(float(v), 4) for v in flat.mean(1)], [round(float(v), 4) for v in flat.std(1)]


# ------------------------------------------------------------------------------------ training


def text_rows(ids: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    """(B, K) ids, -1 padded -> (B, K + 1) DiT text rows, as `text_batch` lays them out."""
    begin = torch.full_like(ids[:, :1], config.begin_id)
    return torch.cat([begin, ids.masked_fill(ids < 0, config.pad_id)], 1)


def task_batch(model: DiT, batch: dict, data: DiTDataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch with its tasks drawn: normalized latents (B, D, t, h, w), text rows (B, L)
    (some emptied) and the given-frames mask (B, 1, t, h, w)."""
    z = model.normalize(batch["latents"].float())  # (B, D, t, h, w)
    b, _, t, h, w = z.shape
    extend = torch.rand(b, device=z.device) < data.extend_share  # (B,)
    given_mask = torch.zeros(b, 1, t, h, w, device=z.device)
    given_mask[extend, :, :context_latents(t)] = 1
    text = text_rows(batch["ids"], model.config)
    drop = torch.rand(b, device=z.device) < torch.where(extend, data.extend_text_dropout, data.text_dropout)
    text = torch.where(drop[:, None], null_text(text, model.config), text)
    return z, text, given_mask


def dit_loss(process: FlowMatching, data: DiTDataConfig):
    """``loss_fn(model, batch)`` for `videolm.train.diffusion_module.fit`."""

    def loss_fn(model: DiT, batch: dict) -> torch.Tensor:
        z, text, given_mask = task_batch(model, batch, data)
        return process.loss(conditioned(model, z, given_mask), z, text, weight=1 - given_mask)

    return loss_fn


def build_model(cfg: DiTFitConfig, latents: torch.Tensor, text_tokens: int, text_vocab: int) -> DiT:
    """The preset sized to the data: its latent shape, the text vocabulary and the latents' statistics."""
    mean, std = latent_stats(latents)
    overrides = {"latent_channels": latents.shape[1], "latent_shape": tuple(latents.shape[2:]),
                 "text_vocab": text_vocab, "latent_mean": mean, "latent_std": std, **cfg.model}
    config = DiTConfig.from_name(cfg.preset, **overrides)
    if text_tokens + 1 > config.text_len:
        raise ConfigError(f"model.text_len={config.text_len} is too short for captions of {text_tokens} tokens from "
                          f"{cfg.data.model}'s text tokenizer (give --model '{{text_len: {text_tokens + 1}}}' or more)")
    return DiT(config)


def training_record(cfg: DiTFitConfig, out: Path, model: DiT, encode_minutes: float) -> dict:
    """What the run cost: steps, minutes, threads and core- or GPU-hours (from OUT/metrics.jsonl)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1] if rows else {"step": 0, "minutes": 0.0}
    gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    threads = cfg.train.threads or torch.get_num_threads()
    hours = last["minutes"] / 60
    record = {"steps": last["step"], "minutes": last["minutes"], "batch_size": cfg.train.batch_size,
              "clips_seen": last["step"] * cfg.train.batch_size, "train_clips": cfg.data.num,
              "device": torch.cuda.get_device_name() if gpu else "cpu", "threads": threads,
              "encode_minutes": round(encode_minutes, 2),
              "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              "tokenizer_model": cfg.data.model}
    record["gpu_hours" if gpu else "core_hours"] = round(hours if gpu else hours * threads, 3)
    if not gpu:  # with the one-off encoding of the clips (done on the same threads)
        record["core_hours_with_encoding"] = round((hours + encode_minutes / 60) * threads, 3)
    return record


def run_fit(cfg: DiTFitConfig, progress=None) -> Path:
    """Train as ``cfg`` says; returns OUT/model."""
    out = Path(cfg.out)
    DiTConfig.from_name(cfg.preset, **cfg.model)  # a bad preset or override fails before any work
    if cfg.data.num < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is more than the {cfg.data.num} training clips")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    text = TextTokenizer.load(resolve_model(cfg.data.model) / "text.model")
    tensors, encode_seconds = latent_cache(cfg.data, out, progress)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, tensors["latents"], tensors["ids"].shape[1], text.vocab_size)

    def export(trained: DiT, folder: Path) -> None:
        trained.save_pretrained(folder, dtype=cfg.train.save_dtype)
        text.save(folder)
        write_json_atomic(folder / GENERATION_CONFIG, {"guidance_scale": cfg.guidance_scale,
                                                       "num_inference_steps": cfg.sample_steps})
        (folder / TRAINING_JSON).write_text(json.dumps(training_record(cfg, out, trained, encode_seconds / 60), indent=2) + "\n")

    return fit(model, dit_loss(cfg.process, cfg.data), LatentClips(tensors), cfg.train, out, export,
               run_config={"entry": "dit fit", **to_dict(cfg)}, command="dit fit")


__all__ = ["DiTDataConfig", "DiTFitConfig", "LatentClips", "build_model", "dit_loss", "latent_cache",
           "latent_stats", "run_fit", "task_batch", "text_rows"]
