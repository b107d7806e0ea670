"""Generation from a model folder: ``Pipeline.from_pretrained("shapes-64").generate(task="t2v", prompt=...)``.

A model folder holds the tokenizers (``video_tokenizer/``, ``audio_tokenizer/``, ``text.model``),
the vocabulary and the language model in ``lm/`` (a transformers checkpoint with its own
``vocab.json``, which knows the tasks it was trained on). A model fine-tuned on a task of a user's
own module keeps a copy of that module in ``lm/tasks/`` and its name in ``lm/tasks.json``; the
module is imported (its code runs) only when that task is asked for, so load such folders only
from sources you trust, as with any code. `Pipeline.generate` turns the user's
media into a task's prefix (`Task.encode_inputs`), draws the output with the engine (constrained
to the ids valid at each position, with classifier-free guidance for tasks with text) and turns
it back into media (`Task.to_media`). Longer videos chain ``extend`` with overlapping context;
``with_audio`` runs ``v2a`` over the result. `videolm generate` is a thin layer over this.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from videolm.core.config import size_pair
from videolm.core.errors import ConfigError, MediaError, UsageError, VideolmError
from videolm.core.limits import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SAMPLES, MAX_SEED
from videolm.core.models import (
    CUSTOM_CODE,
    CUSTOM_TASKS,
    DIT_DIR,
    LM_DIR,
    REFINER_DIR,
    generation_defaults,
    resolve_model,
)
from videolm.data.folder import fit_length
from videolm.data.media import probe_audio, probe_video, read_audio, read_image, read_video
from videolm.diffusion.dit_pipeline import TASKS, DiTGenerator
from videolm.diffusion.refiner import Refiner, refine
from videolm.lm.model import load_videolm
from videolm.lm.positions import positions_of
from videolm.tasks.base import BUILTIN, Media, Task, TaskInputs, clip_length, task_class
from videolm.tasks.generation import generate_codes
from videolm.tasks.prompts import PromptTable
from videolm.tasks.tokenizing import ClipTokenizer
from videolm.tokenizers.geometry import context_latents, frames_of, latent_frames, parse_clip_size
from videolm.tokenizers.vocab import Vocabulary

FITS = ("resize", "crop", "pad")


def check_size(size: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--size``: "HxW" (or "N" for NxN, or a pair) -> (H, W) in multiples of the tokenizer's stride."""
    if size is None:
        return None
    try:
        h, w = size_pair("x".join(map(str, size)) if isinstance(size, (tuple, list)) else size)
        parse_clip_size(f"{h}x{w}", 1, "--size")
    except ValueError as e:
        raise UsageError(f"--size {e}" if not str(e).startswith("--size") else str(e)) from None
    if h * w > 1024 * 1024:
        raise UsageError(f"--size {h}x{w}: at most 1024x1024 pixels")
    return h, w


def check_frames(frames: int | None) -> int | None:
    """``--frames`` of an evaluation: a clip length of 1 + 4k frames, at most 257."""
    if frames is not None and (frames < 1 or (frames - 1) % 4 or frames > 257):
        raise UsageError(f"--frames {frames}: a clip has 1 + 4k frames, at most 257")
    return frames


def check_sampling(num_samples: int = 1, seed: int = 0, frames: int | None = None, cfg_scale: float | None = None,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   steps: int | None = None, batch_size: int = 1) -> None:
    """The bounds of generation's settings, as `UsageError`s named after the flags."""

    def whole(value, low, high, flag):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise UsageError(f"{flag} {value!r}: give a whole number from {low} to {high}")

    def number(value, low, high, flag, low_open=False):
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value <= low if low_open else value < low) or value > high:
            raise UsageError(f"{flag} {value!r}: give a finite number {'above' if low_open else 'from'} {low:g} "
                             f"{'and at most' if low_open else 'to'} {high:g}")

    whole(num_samples, 1, MAX_SAMPLES, "--num-samples")
    whole(seed, 0, MAX_SEED - num_samples + 1, "--seed")
    if frames is not None:
        whole(frames, 1, MAX_FRAMES, "--frames")
    if cfg_scale is not None:
        number(cfg_scale, 0, 100, "--cfg-scale")
    number(temperature, 0, 100, "--temperature")
    if top_k is not None:
        whole(top_k, 1, 2**31 - 1, "--top-k")
    if top_p is not None:
        number(top_p, 0, 1, "--top-p", low_open=True)
    if steps is not None:
        whole(steps, 1, 10_000, "--steps")
    whole(batch_size, 1, 256, "--batch-size")


@dataclass
class GenerateConfig:
    """What a generation asks for (`Pipeline.generate`'s arguments; `videolm generate`'s flags)."""

    task: str  # a task name (see `videolm tasks`)
    prompt: str | None = None  # the caption, for tasks with text (read in the model's words: see strict_prompt)
    image: str | None = None  # an image file (i2v)
    video: list[str] = field(default_factory=list)  # a video file; interpolate takes two (start, end)
    audio: str | None = None  # an audio file (a2v)
    mask: str | None = None  # a mask image of the clip's shape, white = the region to generate (inpaint, outpaint)
    num_samples: int = 1  # samples to draw, made and written one by one; sample i uses seed + i
    seed: int = 0  # seed of the first sample
    frames: int | None = None  # video length in frames: made at once up to the longest length the model was trained
    #   on (the nearest trained length, cut to this), beyond it continued with extend (default: the model's length)
    size: str | None = None  # frame size HxW, multiples of 8 (default: the model's, or for a video or image input the
    #   trained size nearest its aspect); a size the model was not trained at works, with a warning
    fit: Literal["resize", "crop", "pad"] = "resize"  # an input of another size: resize (to the trained size nearest
    #   its aspect, cutting only the sliver where the aspects differ), crop (its centre, cut to --size or the model's
    #   size), pad (all of it, scaled inside the size chosen as for resize, with black bars)
    batch_size: int = 4  # samples drawn at once (each written as soon as its batch is done)
    cfg_scale: float | None = None  # classifier-free guidance for tasks with text (1: none; default: the model's)
    temperature: float = 1.0  # sampling temperature (0: greedy)
    top_k: int | None = None  # sample among the k most likely ids
    top_p: float | None = None  # sample from the smallest set of ids holding this probability
    with_audio: bool = False  # add a soundtrack made by v2a (muxed into the mp4)
    refine: bool | None = None  # clean the frames with the model's diffusion refiner (default: when it has one)
    backend: Literal["ar", "dit"] = "ar"  # ar: the prefix LM; dit: the DiT baseline (t2v, extend)
    steps: int | None = None  # sampling steps of the DiT baseline (default: its own)
    strict_prompt: bool = False  # a prompt word the model does not know is an error (default: a warning)

    def __post_init__(self):
        check_sampling(self.num_samples, self.seed, self.frames, self.cfg_scale, self.temperature, self.top_k,
                       self.top_p, self.steps, self.batch_size)
        check_size(self.size)
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit}: choose one of {', '.join(FITS)}")


@dataclass
class PromptReading:
    """A prompt as given, as the model reads it, and the words it could not place."""
    given: str
    text: str
    unknown: list[str]


@dataclass
class Plan:
    """The size a generation is made at, and why: ``height`` x ``width`` at ``frames`` frames
    (a length the model makes at once), ``length`` the frames asked for (None: ``frames``), and
    ``notes`` saying what was chosen where it was not simply asked for."""

    height: int
    width: int
    frames: int
    length: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"


@dataclass
class Request:
    """A generation, checked and with its inputs encoded (`Pipeline.prepare`); `Pipeline.draw`
    makes its samples a batch at a time."""

    task: Task
    inputs: TaskInputs
    sample: dict
    num_samples: int
    seed: int
    frames: int | None
    cfg_scale: float | None
    temperature: float
    top_k: int | None
    top_p: float | None
    with_audio: bool
    refine: bool
    backend: str
    steps: int | None
    prompt: PromptReading | None
    notes: list[str]
    plan: Plan
    geometry: dict


@dataclass
class Result:
    """One generated sample: ``video (T, H, W, 3)`` uint8 and/or ``audio (S,)`` float32, and how
    it was made."""

    task: str
    seed: int
    video: np.ndarray | None = None
    audio: np.ndarray | None = None
    seconds: float = 0.0
    fps: int = 8
    sample_rate: int = 16000
    extra: dict = field(default_factory=dict)


class Pipeline:
    """A model folder's language model and tokenizers, ready to generate."""

    def __init__(self, folder: Path, model, vocab: Vocabulary, tokenizer: ClipTokenizer, clip: dict,
                 custom: dict[str, str] | None = None):
        self.folder, self.model, self.vocab, self.tokenizer = folder, model, vocab, tokenizer
        self.clip = clip  # frames, height, width, fps of the clips the model makes
        self.custom = custom or {}  # task name -> "module:Class" of tasks from outside the package
        self._tasks: dict[str, Task] = {}
        self._refiner = self._dit = None
        self.prompts: PromptTable | None = None  # how prompts are read (`read_prompt`)
        self.defaults: dict = {}  # lm/generation_config.json: guidance_scale, temperature, ...

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "shapes-64", device: str = "cpu") -> Pipeline:
        """Load a shipped model by name or a model folder (with an ``lm/`` subfolder)."""
        folder = resolve_model(name_or_dir).absolute()
        lm_dir = folder / LM_DIR
        if not (lm_dir / "config.json").is_file():
            raise UsageError(f"--model {name_or_dir}: {folder} has no language model ({LM_DIR}/config.json); "
                             "a model folder for generation needs one (see `videolm tokenizer bundle --lm`)")
        vocab_dir = lm_dir if (lm_dir / "vocab.json").is_file() else folder
        vocab = Vocabulary.load(vocab_dir)
        model = load_videolm(lm_dir).to(device=device, dtype=torch.float32).eval()
        if len(vocab) > model.config.vocab_size:
            raise ConfigError(f"{vocab_dir / 'vocab.json'}: {len(vocab)} ids, more than the {model.config.vocab_size} of "
                              f"{lm_dir / 'config.json'}: the vocabulary does not fit the model")
        tokenizer = ClipTokenizer(folder, device=device)
        tokenizer.vocab = vocab
        clip = {"frames": 17, "height": 64, "width": 64, "fps": 8}
        if (lm_dir / "clip.json").is_file():
            clip.update(json.loads((lm_dir / "clip.json").read_text()))
        custom = {}
        if (lm_dir / CUSTOM_TASKS).is_file():  # tasks fine-tuned from a user's module, copied beside the weights
            custom = json.loads((lm_dir / CUSTOM_TASKS).read_text())
        pipe = cls(folder, model, vocab, tokenizer, clip, custom)
        pipe.prompts = PromptTable.load(lm_dir) or PromptTable.load(folder)
        pipe.defaults = generation_defaults(lm_dir)
        return pipe

    # -- the diffusion stages

    @property
    def refiner(self):
        """The folder's refiner (`videolm.diffusion.refiner.Refiner`), or None when it has none."""
        if self._refiner is None and (self.folder / REFINER_DIR / "config.json").is_file():
            self._refiner = Refiner.from_pretrained(self.folder / REFINER_DIR).to(self.tokenizer.device)
        return self._refiner

    def refine(self, videos: np.ndarray, seed: int = 0, steps: int | None = None) -> np.ndarray:
        """Decoded clips uint8 (B, T, H, W, 3) through the refiner (clip i with noise seed + i)."""
        if self.refiner is None:
            raise UsageError(f"{self.folder} has no refiner ({REFINER_DIR}/config.json); use --no-refine")
        return refine(self.refiner, videos, steps=steps, seed=seed)

    def dit_backend(self) -> DiTBackend:
        """The folder's DiT baseline, sharing this pipeline's tokenizers."""
        if self._dit is None:
            if not (self.folder / DIT_DIR / "config.json").is_file():
                raise UsageError(f"{self.folder} has no DiT baseline ({DIT_DIR}/config.json); train one with "
                                 f"`videolm dit fit` and copy its model/ there")
            self._dit = DiTBackend(self.folder / DIT_DIR, self.tokenizer)
        return self._dit

    def describe_lm(self) -> dict:
        """Parameters, training compute (``lm/training.json``) and sampler of the AR model."""
        return {"params_m": round(sum(p.numel() for p in self.model.parameters()) / 1e6, 2),
                "positions": positions_of(self.model.config),  # "sequence" or "grid" (lm/positions.py)
                "training": _read_training(self.folder / LM_DIR),
                "sampler": "one token per forward pass (KV cache), constrained, CFG for text"}

    # -- tasks

    @property
    def task_names(self) -> list[str]:
        """The tasks this model was trained on, built-in ones first in their usual order."""
        known = self.vocab.tasks
        return [n for n in BUILTIN if n in known] + [n for n in known if n not in BUILTIN]

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            if name not in self.vocab.tasks and ":" not in name:
                raise UsageError(f"--task {name}: this model was not trained on it "
                                 f"(it knows: {', '.join(self.task_names)})")
            if name in self.custom:  # the model folder's own copy of a user's task module
                code = str(self.folder / LM_DIR / CUSTOM_CODE)
                if code not in sys.path:
                    sys.path.insert(0, code)
                task = task_class(self.custom[name])(self.vocab)
            else:
                task = task_class(name)(self.vocab)
            task.training = False
            self._tasks[name] = task
        return self._tasks[name]

    def geometry(self, frames: int | None = None, size: tuple[int, int] | None = None) -> dict:
        c = self.clip
        h, w = size or (c["height"], c["width"])
        return self.tokenizer.geometry(frames or c["frames"], h, w, c["fps"])

    # -- sizes

    @property
    def trained_sizes(self) -> list[tuple[int, int, int]]:
        """(height, width, frames) of every clip size the LM was trained on (``lm/clip.json``
        ``sizes``; a folder without them was trained at its one clip size)."""
        c = self.clip
        sizes = c.get("sizes") or [[c["height"], c["width"], c["frames"]]]
        return [(int(h), int(w), int(n)) for h, w, n in sizes]

    def plan(self, task: Task, size: tuple[int, int] | None = None, frames: int | None = None,
             fit: str = "resize", source: tuple[int, int] | None = None,
             source_frames: int | None = None, exact: bool = False) -> Plan:
        """The size and length to make ``task`` at: ``size`` when given; else for an input of
        ``source`` (H, W) pixels with ``fit`` resize or pad, the trained size nearest its aspect;
        else the model's. ``frames`` (default: the model's length; for v2a and a2v, the input's
        ``source_frames``) is made at the shortest trained length that holds it, or the longest
        one and then continued with extend; ``exact``: at ``frames`` itself, trained or not (what an
        evaluation at an untrained length needs). The notes say what was chosen and why."""
        trained = self.trained_sizes
        shapes = list(dict.fromkeys((h, w) for h, w, _ in trained))
        lengths = sorted({n for _, _, n in trained})
        notes, sizes_text = [], ", ".join(f"{h}x{w}" for h, w in shapes)
        if size is not None:
            h, w = size
            if (h, w) not in shapes:
                notes.append(f"--size {h}x{w}: the model was not trained at this size (it was at {sizes_text}); "
                             "expect weaker results than at those")
        elif source is not None and fit in ("resize", "pad") and (source[0], source[1]) not in shapes:
            h, w = nearest_size(source, shapes)
            why = "the trained size nearest its aspect" if len(shapes) > 1 else "the one size the model was trained at"
            notes.append(f"made at {h}x{w}, {why} ({source[0]}x{source[1]} given; trained: "
                         f"{sizes_text}; --size HxW to choose)")
        elif source is not None and fit in ("resize", "pad"):
            h, w = source
        else:
            h, w = self.clip["height"], self.clip["width"]
        want = frames
        if want is None and task.name in ("v2a", "a2v") and source_frames:
            fitting = [n for n in lengths if n <= source_frames]
            want = fitting[-1] if fitting else lengths[0]
        want = want or self.clip["frames"]
        native = want if exact else min([n for n in lengths if n >= want], default=lengths[-1])
        if exact and task.output_latents(latent_frames(native)) < 1:
            least = next(n for n in range(native, MAX_FRAMES + 4, 4) if task.output_latents(latent_frames(n)) >= 1)
            raise UsageError(f"--frames {native}: {task.name} makes nothing of a clip that short (its input takes "
                             f"every frame); give at least {least}")
        if exact and native not in lengths:
            notes.append(f"{native} frames: the model was not trained at this length (it was at "
                         f"{', '.join(map(str, lengths))})")
        if frames is not None and native != frames:
            how = f"cut to {frames}" if native > frames else f"continued with extend to {frames}"
            notes.append(f"--frames {frames}: made at {native} frames (trained lengths: "
                         f"{', '.join(map(str, lengths))}), {how}")
        self._geometry_tokens(h, w, native, notes)
        return Plan(h, w, native, frames, notes)

    def _geometry_tokens(self, h: int, w: int, frames: int, notes: list[str]) -> None:
        """The vocabulary's ``<res:HxW>`` (and ``<frames:N>``) for a size the model was not trained
        at: new ids, whose embeddings were never trained (a note says so), where the model has room."""
        vocab, room = self.vocab, self.model.config.vocab_size
        wanted = [("res", (h, w))] + ([("frames", frames)] if vocab.lengths else [])
        for kind, value in wanted:
            known = (value in vocab.resolutions) if kind == "res" else (value in vocab.lengths)
            if known:
                continue
            if len(vocab) + 1 > room:
                raise UsageError(f"the model has no token for {kind} {value} and no room for a new one")
            if kind == "res":
                vocab.add_resolution(*value)
            else:
                vocab.add_frames(value)
            label = f"{h}x{w}" if kind == "res" else f"{frames} frames"
            notes.append(f"{label}: the model has never seen this {'size' if kind == 'res' else 'length'}; "
                         "its token is new and untrained")

    # -- inputs

    def inputs(self, prompt: str | None = None, image=None, video=None, audio=None, mask=None,
               notes: list[str] | None = None, size: tuple[int, int] | None = None, fit: str = "resize") -> TaskInputs:
        """`TaskInputs` at ``size`` (default: the model's) from arrays or file paths. ``video`` may
        be a list (``interpolate`` takes a start and an end clip). A file of another size or frame
        rate is fitted (``fit`` pad: scaled inside with black bars; otherwise centre-cropped to the
        aspect and resized) and resampled, and ``notes`` (when given) receives one line saying so
        for each; an array must already be at the size. A mask must have the shape of the clip (or
        of the size): it is fitted as the clip is, never stretched."""
        size, fps = size or (self.clip["height"], self.clip["width"]), self.clip["fps"]
        how = "pad" if fit == "pad" else "crop"
        notes = [] if notes is None else notes

        def load(what: str, value, reader, frame_rate: bool = True):
            if value is None or isinstance(value, np.ndarray):
                return value, None
            path = Path(value)
            if not path.is_file():
                raise UsageError(f"--{what} {value}: no such file")
            try:
                info = probe_video(path) if what != "audio" else None
                data = reader(path)
            except (MediaError, ValueError, OSError) as e:
                raise UsageError(f"--{what} {value}: cannot read it ({_first_line(e)})") from e
            if info is not None:
                notes.extend(_fit_note(what, value, info, size, fps if frame_rate else None, how))
            return data, info

        videos, shapes = [], []
        for v in video if isinstance(video, (list, tuple)) else ([] if video is None else [video]):
            frames, info = load("video", v, lambda p: read_video(p, fps=fps, size=size, fit=how))
            videos.append(frames)
            shapes.append(None if info is None else (info.height, info.width))
        image = load("image", image, lambda p: read_image(p, size=size, fit=how), frame_rate=False)[0]
        wave = load("audio", audio, lambda p: read_audio(p, self.tokenizer.audio.config.sample_rate))[0]
        mask = self._mask(mask, size, shapes[0] if shapes else None, notes, how)
        for name, v in [("video", x) for x in videos] + [("image", image)]:
            hw = None if v is None else tuple(v.shape[-3:-1])
            if hw is not None and hw != size:
                raise UsageError(f"--{name}: {hw[0]}x{hw[1]} pixels, the model makes {size[0]}x{size[1]}")
        return TaskInputs(text=prompt, image=image, videos=videos,
                          audio=None if wave is None else np.asarray(wave, dtype=np.float32), mask=mask)

    def _mask(self, mask, size: tuple[int, int], video_hw: tuple[int, int] | None, notes: list[str],
              how: str = "crop"):
        """A mask at the model's size: an array of that size as it is; a file of the clip's aspect
        (the video file's, or the model's) cropped and resized as the clip is."""
        if mask is None or isinstance(mask, np.ndarray):
            if mask is not None and tuple(mask.shape[:2]) != size:
                raise UsageError(f"--mask: {mask.shape[0]}x{mask.shape[1]} pixels, the clip is {size[0]}x{size[1]}")
            return mask
        path = Path(mask)
        if not path.is_file():
            raise UsageError(f"--mask {mask}: no such file")
        try:
            info = probe_video(path)
        except MediaError as e:
            raise UsageError(f"--mask {mask}: cannot read it ({e.cause})") from e
        shapes = {size} | ({video_hw} if video_hw else set())
        if not any(abs(info.height * w - info.width * h) <= 0.01 * h * info.width for h, w in shapes):
            want = " or ".join(f"{h}x{w}" for h, w in sorted(shapes))
            raise UsageError(f"--mask {mask}: {info.height}x{info.width} pixels does not have the clip's shape "
                             f"({want}); a mask is never stretched: draw it on a frame of the clip")
        if (info.height, info.width) != size:
            notes.append(f"--mask {mask}: {info.height}x{info.width} pixels, fitted as the clip "
                         f"to {size[0]}x{size[1]}")
        try:
            return read_image(path, size=size, fit=how)
        except MediaError as e:
            raise UsageError(f"--mask {mask}: cannot read it ({e.cause})") from e

    # -- generation

    def prepare(self, task: str = "t2v", prompt: str | None = None, *, image=None, video=None, audio=None,
                mask=None, num_samples: int = 1, seed: int = 0, frames: int | None = None,
                cfg_scale: float | None = None, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, with_audio: bool = False, refine: bool | None = None,
                backend: str = "ar", steps: int | None = None, rewrite: Callable[[str], str] | None = None,
                strict_prompt: bool = False, size: str | tuple[int, int] | None = None, fit: str = "resize",
                batch_size: int = 4) -> Request:
        """Check everything a generation needs, choose its size (`plan`) and encode its inputs,
        before any sample is drawn (`generate`'s arguments; `draw` makes a batch of samples).
        Every bound is a `UsageError`."""
        check_sampling(num_samples, seed, frames, cfg_scale, temperature, top_k, top_p, steps, batch_size)
        size = check_size(size)
        if fit not in FITS:
            raise UsageError(f"--fit {fit}: choose one of {', '.join(FITS)}")
        if backend not in ("ar", "dit"):
            raise UsageError(f"--backend {backend}: choose ar or dit")
        if refine and self.refiner is None:
            raise UsageError(f"--refine: {self.folder} has no refiner ({REFINER_DIR}/config.json)")
        refine = self.refiner is not None if refine is None else refine
        if backend == "dit":
            self.dit_backend().check_task(task)
        elif cfg_scale is None:
            cfg_scale = self.guidance()
        t = self.task(task)
        image, video, audio, mask = _as_arrays(image, video, audio, mask)
        longest = max(n for _, _, n in self.trained_sizes)
        if frames is not None and task == "t2i":
            raise UsageError("--frames applies to video outputs; t2i makes one image")
        if frames is not None and frames > longest and t.output != "video":
            raise UsageError(f"--frames applies to video outputs; {task} makes audio")
        if with_audio and t.output != "video":
            raise UsageError(f"--with-audio applies to tasks that make video; {task} makes audio")
        if with_audio:
            self.task("v2a")
        if frames is not None and frames > longest:
            self.task("extend")
        read = self.read_prompt(prompt, rewrite, strict_prompt) if prompt is not None else None
        if backend == "dit" and task == "t2v" and not (read and read.text):
            raise UsageError("t2v needs --prompt" + (" in words the model knows" if read else ""))
        source, source_frames = self._source(video, image, audio)
        plan = self.plan(t, size, frames, fit, source, source_frames)
        notes: list[str] = list(plan.notes)
        if backend == "dit":
            g = self.dit_backend().generator
            if (plan.height, plan.width, plan.frames) != (g.height, g.width, g.frames):
                notes.append(f"--backend dit: the DiT baseline was trained at {g.height}x{g.width}, {g.frames} frames; "
                             f"its patches and positions follow the {plan.name} grid, {plan.frames} frames, untrained")
        notes += _unused(t, prompt, image, video, audio, mask)
        inputs = self.inputs(read.text if read else None, image, video, audio, mask, notes,
                             size=(plan.height, plan.width), fit=fit)
        notes += self._duration_notes(t, inputs, plan, frames)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        geometry = self.geometry(plan.frames, (plan.height, plan.width))
        sample = t.encode_inputs(inputs, self.tokenizer, geometry)
        self._check_length(t, sample, prompt)
        return Request(t, inputs, sample, num_samples, seed, frames, cfg_scale, temperature, top_k, top_p,
                       with_audio, refine, backend, steps, read, notes, plan, geometry)

    def _duration_notes(self, t: Task, inputs: TaskInputs, plan: Plan, frames: int | None) -> list[str]:
        """What v2a and a2v make of an input longer than the clip: v2a voices the whole video (in
        clip-length windows; `draw`), a2v one clip for the start of the sound."""
        fps, rate = self.clip["fps"], self.tokenizer.audio.config.sample_rate
        if t.name == "v2a" and inputs.videos:
            n = len(inputs.videos[0]) if frames is None else min(frames, len(inputs.videos[0]))
            if n > plan.frames:
                return [f"v2a: the video's {n} frames ({n / fps:.2f} s) are voiced in windows of {plan.frames} "
                        "frames, the trained length"]
        if t.name == "a2v" and inputs.audio is not None:
            made = (frames or plan.frames) / fps
            if len(inputs.audio) / rate > made + 1 / fps:
                return [f"a2v: the sound is {len(inputs.audio) / rate:.2f} s; the clip covers its first {made:.2f} s "
                        f"({frames or plan.frames} frames{'' if frames is None else ', --frames'}) and the rest is "
                        "left out"]
        return []

    def _source(self, video, image, audio) -> tuple[tuple[int, int] | None, int | None]:
        """(H, W) of the first video or image input, and its length in frames at the model's rate
        (of an audio input: its duration in frames), where there is one."""
        first = (video[0] if video else None) if isinstance(video, (list, tuple)) else video
        fps = self.clip["fps"]
        for value in (first, image):
            if isinstance(value, np.ndarray):
                return tuple(value.shape[-3:-1]), (len(value) if value.ndim == 4 else None)
            if value is not None and Path(value).is_file():
                try:
                    info = probe_video(value)
                except MediaError as e:
                    raise UsageError(f"{value}: cannot read it ({e.cause})") from e
                return (info.height, info.width), max(1, int(info.duration * fps)) if value is first else None
        if isinstance(audio, np.ndarray):
            return None, int(len(audio) / self.tokenizer.audio.config.sample_rate * fps)
        if audio is not None and Path(audio).is_file():
            try:
                return None, int(probe_audio(audio) * fps)
            except MediaError as e:
                raise UsageError(f"--audio {audio}: cannot read it ({e.cause})") from e
        return None, None

    def read_prompt(self, prompt: str, rewrite: Callable[[str], str] | None = None,
                    strict: bool = False) -> PromptReading:
        """The prompt as the model will read it: through ``rewrite`` (a user's own rewriter, any
        ``str -> str``), then the model folder's prompt table (`videolm.tasks.prompts`). Words the
        table cannot place are named in a warning (an error with ``strict``)."""
        if not isinstance(prompt, str):
            raise UsageError(f"--prompt: expected text, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UsageError(f"--prompt: {len(prompt):,} characters; prompts are at most {MAX_PROMPT_CHARS:,}")
        text = prompt
        if rewrite is not None:
            try:
                text = rewrite(prompt)
            except Exception as e:  # noqa: BLE001  (the user's code: whatever it raises is reported in one line)
                raise UsageError(f"--prompt-rewriter failed on the prompt: {type(e).__name__}: {_first_line(e)}") from e
            if not isinstance(text, str):
                raise UsageError(f"--prompt-rewriter returned {type(text).__name__}, not text")
            if len(text) > MAX_PROMPT_CHARS:
                raise UsageError(f"--prompt-rewriter returned {len(text):,} characters; at most {MAX_PROMPT_CHARS:,}")
        unknown: list[str] = []
        if self.prompts is not None:
            text, unknown = self.prompts.rewrite(text)
        else:
            text = " ".join(text.split())
        if unknown or (prompt.strip() and not text):
            known = f"it read the prompt as {text!r}" if text else "it read nothing it knows: no caption at all"
            message = (f"the model does not know: {', '.join(unknown) or 'any word of it'} ({known}; "
                       "`videolm tasks --model M --words` lists the words it knows)")
            if strict:
                raise UsageError(f"--strict-prompt: {message}")
            warnings.warn(message, stacklevel=3)
        return PromptReading(prompt, text, unknown)

    def _check_length(self, task: Task, sample: dict, prompt: str | None) -> None:
        """The sequence (prefix and output) must fit the model's context."""
        limit = self.model.config.max_position_embeddings
        total = len(task.prefix(sample)) + int(np.prod(task.output_shape(sample))) + 2
        if total > limit:
            text = len(sample.get("text", ()))
            if prompt is not None and text > total - limit:  # a shorter prompt would fit
                raise UsageError(f"--prompt ({text} text tokens): the {task.name} sequence would be {total} tokens, "
                                 f"more than the model's {limit}; shorten the prompt")
            raise UsageError(f"{sample['height']}x{sample['width']}, {clip_length(sample)} frames: the {task.name} "
                             f"sequence would be {total} tokens, more than the model's {limit}; choose a smaller "
                             "--size or fewer --frames")

    def draw(self, request: Request, first: int, count: int = 1,
             progress: Callable[[int], object] | None = None) -> list[Result]:
        """Samples ``first .. first + count - 1`` of a prepared request, drawn as one batch; sample
        ``i`` uses seed ``request.seed + i`` (its own generator, so it is what a batch of one with
        that seed gives, up to float rounding of the batched forward)."""
        r = request
        seeds = [r.seed + first + j for j in range(count)]
        start = time.perf_counter()
        whole = r.inputs.videos[0][:r.frames] if r.task.name == "v2a" and r.inputs.videos else None
        if whole is not None and len(whole) > r.plan.frames:  # the sound of the whole video, a window at a time
            media = [Media(video=whole, audio=self._soundtrack(whole, r, seed, progress)) for seed in seeds]
        elif r.backend == "dit":
            media = [Media(video=self.dit_backend().run(r.task.name, r.inputs, seed, r.cfg_scale, r.steps, r.plan))
                     for seed in seeds]
        else:
            codes = self.codes(r.task, [r.sample] * count, seeds, r.cfg_scale, r.temperature, r.top_k, r.top_p,
                               progress)
            media = [r.task.to_media(c, r.sample, self.tokenizer) for c in codes]
        videos = [m.video for m in media]
        made = r.task.output == "video"  # v2a's pictures are its input, passed through as they were
        if not made and videos[0] is not None:
            videos = [v[:r.frames] for v in videos]
        elif r.frames is not None and videos[0] is not None:
            videos = [self._lengthen(v, r, seed, progress) for v, seed in zip(videos, seeds)]
        if r.refine and made and videos[0] is not None:
            videos = list(self.refine(np.stack(videos), seed=seeds[0]))  # clip j with noise seed seeds[0] + j
        seconds = (time.perf_counter() - start) / count
        results = []
        for m, video, seed in zip(media, videos, seeds):
            for note in m.notes:
                warnings.warn(note, stacklevel=2)
            audio = self._soundtrack(video, r, seed, progress) if r.with_audio else m.audio
            if audio is not None and video is not None:  # the sound lasts as long as the pictures
                audio = fit_length(audio, round(len(video) * self.tokenizer.audio.config.sample_rate / self.clip["fps"]))
            extra = {"backend": r.backend, "refined": bool(r.refine and made and video is not None),
                     "size": r.plan.name, "native_frames": r.plan.frames}
            if r.prompt is not None:
                extra.update(rewritten_prompt=r.prompt.text, unknown_words=r.prompt.unknown)
            if r.notes or m.notes:
                extra["notes"] = r.notes + m.notes
            results.append(Result(r.task.name, seed, video, audio, seconds, self.clip["fps"],
                                  self.tokenizer.audio.config.sample_rate, extra=extra))
        return results

    def generate(self, task: str = "t2v", prompt: str | None = None, *, image=None, video=None, audio=None,
                 mask=None, num_samples: int = 1, seed: int = 0, frames: int | None = None,
                 cfg_scale: float | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 with_audio: bool = False, progress: Callable[[int], object] | None = None,
                 refine: bool | None = None, backend: str = "ar", steps: int | None = None,
                 rewrite: Callable[[str], str] | None = None, strict_prompt: bool = False,
                 size: str | tuple[int, int] | None = None, fit: str = "resize", batch_size: int = 4) -> list[Result]:
        """``num_samples`` results of ``task``, drawn ``batch_size`` at a time; sample ``i`` uses
        seed ``seed + i``. ``size`` ("HxW") and ``frames`` choose the clip (`plan`: by default the
        model's, or the trained size nearest an input's aspect, fitted by ``fit``); ``frames``
        beyond the longest trained length chains ``extend``; ``with_audio`` adds a soundtrack made
        by ``v2a``. ``progress`` is called with the number of tokens drawn as they are. ``refine``
        (default: when the folder has a refiner) passes the video through the diffusion refiner.
        ``backend="dit"`` draws ``t2v`` and ``extend`` with the DiT baseline instead of the LM
        (``steps``: its sampling steps). The prompt goes through ``rewrite`` (any ``str -> str``)
        and the model's prompt table first (`read_prompt`); ``strict_prompt`` makes words the
        model does not know an error. Each result's ``extra`` says the size used and, in
        ``notes``, why."""
        request = self.prepare(task, prompt, image=image, video=video, audio=audio, mask=mask,
                               num_samples=num_samples, seed=seed, frames=frames, cfg_scale=cfg_scale,
                               temperature=temperature, top_k=top_k, top_p=top_p, with_audio=with_audio,
                               refine=refine, backend=backend, steps=steps, rewrite=rewrite,
                               strict_prompt=strict_prompt, size=size, fit=fit, batch_size=batch_size)
        return [result for first in range(0, num_samples, batch_size)
                for result in self.draw(request, first, min(batch_size, num_samples - first), progress)]

    def guidance(self) -> float:
        """The LM's classifier-free guidance for tasks with text, as its generation_config.json sets it
        (1: none)."""
        return float(self.defaults.get("guidance_scale", 1.0))

    def codes(self, task: Task, samples: list[dict], seed: int | list[int], cfg_scale: float | None = None,
              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
              progress=None) -> list[torch.Tensor]:
        """The task's output codes for a batch of samples (of any sizes), drawn with generator
        ``seed`` (one seed for the batch, or one per sample)."""
        cfg_scale = self.guidance() if cfg_scale is None else cfg_scale
        return generate_codes(self.model, task, samples, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                              top_p=top_p, generator=seed, progress=progress)

    def _run(self, task: Task, sample: dict, seed: int, cfg_scale, temperature, top_k, top_p, progress) -> Media:
        codes = self.codes(task, [sample], seed, cfg_scale, temperature, top_k, top_p, progress)[0]
        return task.to_media(codes, sample, self.tokenizer)

    def _lengthen(self, video: np.ndarray, r: Request, seed: int, progress) -> np.ndarray:
        """Trim to ``r.frames``, or continue with ``extend`` (each step keeps the last frames of
        context and adds the clip's remaining frames) until there are that many."""
        frames, geometry = r.frames, r.geometry
        extend = self.task("extend") if frames > len(video) else None
        step = 0
        while len(video) < frames:
            step += 1
            if r.backend == "dit":
                made = self.dit_backend().run("extend", TaskInputs(videos=[video]), seed + 7919 * step, None, r.steps,
                                              r.plan)
            else:
                sample = extend.encode_inputs(TaskInputs(videos=[video]), self.tokenizer, geometry)
                made = self._run(extend, sample, seed + 7919 * step, 1.0, r.temperature, r.top_k, r.top_p,
                                 progress).video
            keep = frames_of(context_latents(geometry["latents"]))
            video = np.concatenate([video, made[keep:]])
        return video[:frames]

    def _soundtrack(self, video: np.ndarray, r: Request, seed: int, progress) -> np.ndarray:
        """``v2a`` over consecutive clip-length windows of ``video`` (the last one padded with its
        final frame), joined and cut to the video's duration."""
        v2a, geometry = self.task("v2a"), r.geometry
        n = geometry["frames"]
        parts = []
        for k, start in enumerate(range(0, len(video), n)):
            window = video[start:start + n]
            if len(window) < n:
                window = np.concatenate([window, np.repeat(window[-1:], n - len(window), 0)])
            sample = v2a.encode_inputs(TaskInputs(videos=[window]), self.tokenizer, geometry)
            parts.append(self._run(v2a, sample, seed + 104729 * (k + 1), 1.0, r.temperature, r.top_k, r.top_p,
                                   progress).audio)
        rate = self.tokenizer.audio.config.sample_rate
        return np.concatenate(parts)[:round(len(video) * rate / self.clip["fps"])]


class DiTBackend:
    """The DiT baseline of a model folder, behind the same inputs as the LM's tasks."""

    def __init__(self, folder: Path, tokenizer: ClipTokenizer):
        self.folder, self.tasks = folder, TASKS
        self.generator = DiTGenerator.from_folder(folder, tokenizer=tokenizer.video, text_tokenizer=tokenizer.text,
                                                  device=str(tokenizer.device))
        self.default_steps = self.generator.defaults["num_inference_steps"]
        self.default_cfg = self.generator.defaults["guidance_scale"]

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise UsageError(f"--backend dit: the DiT baseline does {', '.join(self.tasks)}, not {task}")

    def generate(self, task: str, prompts: list[str] | None = None, videos: np.ndarray | None = None,
                 seeds: list[int] | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, size: tuple[int, int] | None = None,
                 frames: int | None = None) -> tuple[np.ndarray, int]:
        """A batch: ``t2v`` from captions, ``extend`` from clips (their first 9 frames), at ``size``
        and ``frames`` (default: the trained clip's, for extend the clips' size). Returns uint8
        clips (B, T, H, W, 3) and network evaluations per clip."""
        self.check_task(task)
        n = len(prompts) if prompts is not None else len(videos)
        out = self.generator.generate(task, prompts=prompts, video=videos, seed=seeds or list(range(n)),
                                      steps=steps or self.default_steps,
                                      cfg_scale=self.default_cfg if cfg_scale is None else cfg_scale,
                                      size=size, frames=frames)
        return out.video, out.evaluations

    def run(self, task: str, inputs: TaskInputs, seed: int, cfg_scale: float | None, steps: int | None,
            plan: Plan | None = None) -> np.ndarray:
        """One clip from a user's inputs (``extend`` continues from the video's last frames), at the
        ``plan``'s size and length (default: the DiT's trained clip)."""
        self.check_task(task)
        size, frames = ((plan.height, plan.width), plan.frames) if plan else (None, None)
        if task == "t2v":
            if not inputs.text:
                raise UsageError("t2v needs --prompt")
            return self.generate("t2v", prompts=[inputs.text], seeds=[seed], steps=steps, cfg_scale=cfg_scale,
                                 size=size, frames=frames)[0][0]
        if inputs.video is None:
            raise UsageError("extend needs --video")
        need = frames_of(context_latents(self.generator.latent_shape(size, frames)[0]))
        if len(inputs.video) < need:
            raise UsageError(f"--video has {len(inputs.video)} frames; extend needs at least {need}")
        return self.generate("extend", videos=inputs.video[-need:][None], seeds=[seed], steps=steps,
                             frames=frames)[0][0]

    def describe(self) -> dict:
        model = self.generator.model
        return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "training": _read_training(self.folder),
                "sampler": f"flow matching, {self.default_steps} Euler steps, CFG {self.default_cfg}"}


def _unused(t: Task, prompt, image, video, audio, mask) -> list[str]:
    """A note for each input the task does not read (what its ``needs`` lists), so nothing given is
    dropped without a word."""
    if not t.needs and not t.__module__.startswith("videolm."):  # a user's task that does not say what it
        return []  # reads: no grounds for a note (a built-in task with no needs, uncond, reads nothing)
    given = video if isinstance(video, (list, tuple)) else ([] if video is None else [video])
    takes = t.needs.count("--video")
    notes = []
    if prompt is not None and not t.uses_text and "--prompt" not in t.needs:
        notes.append(f"--prompt: {t.name} does not read a prompt; it is left out")
    if len(given) > takes:
        notes.append(f"--video: {t.name} reads {takes or 'no'} video{'s' if takes != 1 else ''}; "
                     f"{len(given) - takes} given {'is' if len(given) - takes == 1 else 'are'} left out")
    for flag, value in (("--image", image), ("--audio", audio), ("--mask", mask)):
        if value is not None and flag not in t.needs:
            notes.append(f"{flag}: {t.name} does not read one; it is left out")
    return notes


def _as_arrays(image, video, audio, mask):
    """Arrays given to the Python API in the forms the tasks read: pixels uint8 0..255 (floats are
    read as 0..1; grey images get three channels, RGBA drops alpha), ``video (T, H, W, 3)``, ``image
    (H, W, 3)``, mono ``audio (S,)`` (several channels are averaged). File paths pass through."""

    def pixels(x, what: str, ndim: int):
        if not isinstance(x, np.ndarray):
            return x
        one_frame = ndim == 4 and x.ndim == 3 and x.shape[-1] in (3, 4)  # (H, W, 3) given as a video
        if not one_frame and (x.ndim == ndim - 1 or (x.ndim == ndim and x.shape[-1] == 1)):  # grey
            x = np.repeat(x.reshape(*x.shape[:ndim - 1], 1), 3, axis=-1)
        elif x.ndim == ndim and x.shape[-1] == 4:
            x = x[..., :3]
        if x.ndim != ndim or x.shape[-1] != 3:
            form = "(frames, height, width, 3)" if ndim == 4 else "(height, width, 3)"
            hint = "; one frame is an image (image=...)" if ndim == 4 and x.ndim == 3 else ""
            raise UsageError(f"{what}: an array of shape {tuple(x.shape)}; give {form}{hint}")
        if x.dtype == np.uint8:
            return x
        if x.dtype == bool or np.issubdtype(x.dtype, np.floating):
            if x.size and not (np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1):
                raise UsageError(f"{what}: float pixels must lie in 0..1 (or give uint8 0..255), got "
                                 f"{float(np.nanmin(x)):g}..{float(np.nanmax(x)):g}")
            return np.round(x.astype(np.float32) * 255).astype(np.uint8)
        if np.issubdtype(x.dtype, np.integer):
            if x.size and not (0 <= x.min() and x.max() <= 255):
                raise UsageError(f"{what}: integer pixels must lie in 0..255, got {x.min()}..{x.max()}")
            return x.astype(np.uint8)
        raise UsageError(f"{what}: pixels of type {x.dtype}; give uint8 (0..255) or float (0..1)")

    image = pixels(image, "image", 3)
    video = [pixels(v, "video", 4) for v in video] if isinstance(video, (list, tuple)) else pixels(video, "video", 4)
    if isinstance(audio, np.ndarray):
        if audio.ndim == 2:  # channels first or last: the shorter axis
            audio = audio.mean(axis=int(np.argmin(audio.shape)))
        if audio.ndim != 1:
            raise UsageError(f"audio: an array of shape {tuple(audio.shape)}; give samples (S,) or (channels, S)")
        bad = int((~np.isfinite(audio)).sum())
        if bad:  # as a sound file's are read
            warnings.warn(f"audio: {bad} of {len(audio)} samples are NaN or infinite; read as silence", stacklevel=3)
            audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        audio = audio.astype(np.float32, copy=False)
    return image, video, audio, mask


def nearest_size(source: tuple[int, int], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """Of ``sizes`` (H, W), the one whose aspect is nearest ``source``'s (ties: the nearer area)."""
    h, w = source

    def distance(size):
        return abs(math.log((size[1] / size[0]) / (w / h))), abs(math.log(size[0] * size[1] / (h * w)))

    return min(sizes, key=distance)


def _read_training(folder: Path) -> dict | None:
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fit_note(flag: str, value, info, size: tuple[int, int], fps: float | None, how: str = "crop") -> list[str]:
    """One line saying how a user's file was changed to fit the clip, or none when it was not."""
    h, w = info.height, info.width
    changes = []
    if (h, w) != size:
        if abs(h * size[1] - w * size[0]) > 0 and how == "pad":  # another aspect: scaled inside, black bars
            side = min(size[0] / h, size[1] / w)
            changes.append(f"scaled to {round(h * side)}x{round(w * side)} inside {size[0]}x{size[1]} "
                           "with black bars")
        elif abs(h * size[1] - w * size[0]) > 0:  # another aspect: the centre is cut out first
            side = min(h / size[0], w / size[1])
            ch, cw = round(size[0] * side), round(size[1] * side)
            changes.append(f"centre-cropped to {ch}x{cw}")
            changes.append(f"resized to {size[0]}x{size[1]}")
        else:
            changes.append(f"resized to {size[0]}x{size[1]}")
    if fps is not None and info.fps and abs(info.fps - fps) > 1e-3 and info.num_frames != 1:  # (a still has no rate)
        changes.append(f"resampled from {info.fps:g} to {fps:g} fps")
    if not changes:
        return []
    made = f"{size[0]}x{size[1]}" + (f" at {fps:g} fps" if fps is not None else "")
    return [f"--{flag} {value}: {h}x{w} pixels, {', '.join(changes)} (the clip is {made})"]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["FITS", "LM_DIR", "Pipeline", "Plan", "Result", "VideolmError", "check_frames", "check_size",
           "nearest_size"]
