"""Sampling the DiT baseline: an engine over latents and text ids, and a generator over pixels and words.

- `sample_latents(model, text, noise, given=, given_mask=, steps=, cfg_scale=)` knows latents and
  text ids only (the engine): Euler steps of the shared `FlowMatching` process with
  classifier-free guidance against the empty caption, cond and uncond in one batch.
- `DiTGenerator.generate(task, prompts, video, seed, ...)` turns captions into ids and a clip's first
  frames into given latents, runs the engine and decodes the rounded latents with the video
  tokenizer's decoder (the one the LM's tokens go through).

Sample ``i`` draws its noise from its own generator seeded ``seed + i``, so a batch gives the same
clips as one call per prompt.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.core.models import generation_defaults, resolve_model
from videolm.diffusion.dit import DiT, null_text, text_batch
from videolm.diffusion.latents import encode_latents, latents_to_codes
from videolm.diffusion.process import FlowMatching, seeded_noise
from videolm.tokenizers.geometry import context_latents, frames_of, latent_frames
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import SPACE_DOWN, VideoTokenizer, to_frames, to_tensor

DIT_DIR = "dit"  # a model bundle's DiT folder
TASKS = ("t2v", "extend")


def conditioned(model: DiT, given: torch.Tensor | None, given_mask: torch.Tensor | None):
    """The denoiser ``(x_t, t, text) -> v`` with ``given`` latents (B, D, t, h, w) fixed where
    ``given_mask`` (B, 1, t, h, w) is 1: they replace x_t there (in training and sampling alike) and
    enter the network's input channels. Batches that are k times B (guidance) repeat them."""
    if given is None:
        return lambda x, t, text: model(x, t, text)

    def denoiser(x, t, text):
        k = x.shape[0] // given.shape[0]
        g, m = given.repeat(k, 1, 1, 1, 1), given_mask.repeat(k, 1, 1, 1, 1)
        return model(torch.where(m.bool(), g, x), t, text, g, m)

    return denoiser


@torch.no_grad()
def sample_latents(model: DiT, text: torch.Tensor, noise: torch.Tensor, *, given: torch.Tensor | None = None,
                   given_mask: torch.Tensor | None = None, steps: int = 32, cfg_scale: float = 1.0,
                   process: FlowMatching | None = None, callback=None) -> torch.Tensor:
    """Latents (B, D, t, h, w) on the tokenizer's scale, from text ids (B, L) (`text_batch`) and
    normal noise (B, D, t, h, w); ``given`` (tokenizer scale) is copied into the output where
    ``given_mask`` is 1. Guidance mixes in the empty caption when ``cfg_scale != 1``."""
    process = process or FlowMatching()
    dev = next(model.parameters()).device
    text, noise = text.to(dev), noise.to(dev)
    g = None if given is None else model.normalize(given.to(dev))
    m = None if given_mask is None else given_mask.to(dev).float()
    uncond = null_text(text, model.config) if cfg_scale != 1 else None
    z = process.sample(conditioned(model, g, m), noise, text, steps=steps, uncond=uncond, cfg_scale=cfg_scale,
                       callback=callback)  # (B, D, t, h, w), normalized
    if g is not None:
        z = torch.where(m.bool(), g, z)
    return model.denormalize(z)


class Generated(NamedTuple):
    video: np.ndarray  # uint8 (B, T, H, W, 3)
    codes: torch.Tensor  # int64 (B, t, h*w): the rounded latents as the tokenizer's codes
    evaluations: int  # network evaluations per sample (guidance counts two)
    seconds: float


def load_dit_tokenizers(dit_dir: str | Path):
    """The video tokenizer and text tokenizer of a trained DiT folder: ``text.model`` inside it; the
    video tokenizer of the bundle it sits in (``../video_tokenizer``) or of the model folder its
    ``training.json`` names."""
    dit_dir = Path(dit_dir)
    video_dir = dit_dir.parent / "video_tokenizer"
    if not (video_dir / "config.json").is_file():
        record = dit_dir / "training.json"
        if not record.is_file():
            raise UsageError(f"{dit_dir}: no video tokenizer beside it and no training.json naming one")
        video_dir = resolve_model(json.loads(record.read_text())["tokenizer_model"]) / "video_tokenizer"
    text_path = dit_dir / "text.model" if (dit_dir / "text.model").is_file() else dit_dir.parent / "text.model"
    return VideoTokenizer.from_pretrained(video_dir), TextTokenizer.load(text_path)


class DiTGenerator:
    """A DiT with the video tokenizer it was trained on and the text tokenizer of its captions."""

    def __init__(self, model: DiT, tokenizer: VideoTokenizer, text_tokenizer: TextTokenizer,
                 process: FlowMatching | None = None):
        self.model, self.tokenizer, self.text_tokenizer = model.eval(), tokenizer.eval(), text_tokenizer
        self.process = process or FlowMatching()
        self.defaults = {"num_inference_steps": 32, "guidance_scale": 1.0}  # from_folder: the folder's own
        t, h, w = model.config.latent_shape
        self.frames, self.height, self.width = frames_of(t), h * SPACE_DOWN, w * SPACE_DOWN

    @classmethod
    def from_folder(cls, dit_dir: str | Path, tokenizer: VideoTokenizer | None = None,
                    text_tokenizer: TextTokenizer | None = None, device: str = "cpu") -> DiTGenerator:
        """A trained DiT folder (``RUN/model`` or a bundle's ``dit/``). Missing tokenizers come from
        the folder (``text.model``) and the model folder it names in ``training.json`` (or its parent)."""
        dit_dir = Path(dit_dir)
        model = DiT.from_pretrained(dit_dir).to(device)
        if tokenizer is None or text_tokenizer is None:
            video, text = load_dit_tokenizers(dit_dir)
            tokenizer, text_tokenizer = tokenizer or video, text_tokenizer or text
        generator = cls(model, tokenizer.to(device), text_tokenizer)
        generator.defaults.update(generation_defaults(dit_dir))
        return generator

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "shapes-64", device: str = "cpu") -> DiTGenerator:
        """A model bundle's ``dit/`` (a shipped name or a folder), or a DiT folder itself."""

        folder = resolve_model(name_or_dir)
        if (folder / DIT_DIR / "config.json").is_file():
            folder = folder / DIT_DIR
        elif not (folder / "config.json").is_file():
            raise UsageError(f"--model {name_or_dir}: {folder} holds no DiT ({DIT_DIR}/config.json)")
        return cls.from_folder(folder, device=device)

    def text(self, prompts: list[str | None]) -> torch.Tensor:
        """Captions -> (B, L) ids; None or "" is the empty caption."""
        return text_batch([self.text_tokenizer.encode(p) if p else [] for p in prompts], self.model.config)

    def latent_shape(self, size: tuple[int, int] | None = None, frames: int | None = None) -> tuple[int, int, int]:
        """(t, h, w) of clips ``size`` (H, W) pixels and ``frames`` long (default: the trained clip's)."""
        h, w = size or (self.height, self.width)
        if h % SPACE_DOWN or w % SPACE_DOWN:
            raise UsageError(f"size {h}x{w}: height and width must be multiples of {SPACE_DOWN}")
        return latent_frames(frames or self.frames), h // SPACE_DOWN, w // SPACE_DOWN

    def context(self, video, shape: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, T, H, W, 3) with T >= the context's frames -> given latents and mask (B, D|1, t, h, w)
        from its first frames (9 of a 17-frame clip); ``shape``: the latents' (t, h, w) (default:
        the video's size at the trained length)."""
        video = np.asarray(video)
        if video.ndim != 5 or video.shape[-1] != 3:
            raise UsageError(f"extend needs video (B, T, H, W, 3), got {tuple(video.shape)}")
        shape = shape or self.latent_shape(video.shape[2:4])
        ctx = context_latents(shape[0])  # 3 of 5 latent frames, as the LM's extend
        need = frames_of(ctx)
        if video.shape[1] < need or video.shape[2:4] != (shape[1] * SPACE_DOWN, shape[2] * SPACE_DOWN):
            raise UsageError(f"extend needs video (B, T >= {need}, {shape[1] * SPACE_DOWN}, {shape[2] * SPACE_DOWN}, 3), "
                             f"got {tuple(video.shape)}")
        dev = next(self.model.parameters()).device
        z = encode_latents(self.tokenizer, to_tensor(video[:, :need]).to(dev))  # (B, D, ctx, h, w): causal, as in the clip
        given = torch.zeros(len(video), z.shape[1], *shape, device=dev)
        given[:, :, :ctx] = z
        mask = torch.zeros(len(video), 1, *shape, device=dev)
        mask[:, :, :ctx] = 1
        return given, mask

    @torch.no_grad()
    def generate(self, task: Literal["t2v", "extend"] = "t2v", prompts: list[str] | None = None, video=None,
                 seed: int | list[int] = 0, steps: int | None = None, cfg_scale: float | None = None,
                 callback=None, size: tuple[int, int] | None = None, frames: int | None = None) -> Generated:
        """``t2v``: one clip per prompt. ``extend``: the clips of ``video`` continued from their first
        frames (captions optional: without them there is no guidance). Seeds: ``seed + i`` per sample,
        or one per sample. ``steps`` and ``cfg_scale`` default to the folder's generation_config.json.
        ``size`` (H, W) and ``frames``: the clips made (default: the trained clip's; for extend the
        video's size); the DiT's patches and positions follow any grid, trained or not."""
        start = time.perf_counter()
        steps = self.defaults["num_inference_steps"] if steps is None else steps
        cfg_scale = self.defaults["guidance_scale"] if cfg_scale is None else cfg_scale
        if task not in TASKS:
            raise UsageError(f"the DiT does {', '.join(TASKS)}, not {task!r}")
        if task == "t2v" and not prompts:
            raise UsageError("t2v needs prompts")
        if task == "extend" and video is None:
            raise UsageError("extend needs a video")
        n = len(prompts) if prompts else len(video)
        if task == "extend" and prompts and len(prompts) != len(video):
            raise UsageError(f"{len(prompts)} prompts for {len(video)} videos")
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        if len(seeds) != n:
            raise UsageError(f"{len(seeds)} seeds for {n} samples")
        if size is None and task == "extend":
            size = tuple(np.shape(video)[2:4])
        shape = self.latent_shape(size, frames)
        given, mask = self.context(video, shape) if task == "extend" else (None, None)
        if not prompts:
            cfg_scale = 1.0  # nothing to guide towards
        cfg = self.model.config
        noise = seeded_noise(seeds, (cfg.latent_channels, *shape))
        z = sample_latents(self.model, self.text(prompts or [None] * n), noise, given=given, given_mask=mask,
                           steps=steps, cfg_scale=cfg_scale, process=self.process, callback=callback)
        codes = latents_to_codes(self.tokenizer, z)  # (B, t, h*w)
        frames = to_frames(self.tokenizer.decode(codes, shape[1] * SPACE_DOWN, shape[2] * SPACE_DOWN))  # (B, T, H, W, 3)
        return Generated(frames, codes.cpu(), self.process.evaluations(steps, cfg_scale),
                         round(time.perf_counter() - start, 3))


__all__ = ["DIT_DIR", "DiTGenerator", "Generated", "conditioned", "sample_latents",
           "seeded_noise"]
