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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from videolm.tasks.base import BUILTIN, Media, Task, TaskInputs, task_class
from videolm.tasks.models import AR_CFG_SCALE, resolve_model
from videolm.tasks.token_shards import ClipTokenizer
from videolm.tasks.views import context_latents, frames_of
from videolm.tokenizers.errors import MediaError, UsageError, VideolmError
from videolm.tokenizers.vocab import Vocabulary

LM_DIR = "lm"
REFINER_DIR = "refiner"  # the diffusion refiner that cleans decoded frames (on by default when present)
DIT_DIR = "dit"  # the DiT baseline (``backend="dit"``)
CUSTOM_TASKS = "tasks.json"  # in lm/: name -> "module:Class" of the tasks not built in
CUSTOM_CODE = "tasks"  # in lm/: their modules' source, imported from there


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

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "shapes-64", device: str = "cpu") -> Pipeline:
        """Load a shipped model by name or a model folder (with an ``lm/`` subfolder)."""
        folder = resolve_model(name_or_dir).absolute()
        lm_dir = folder / LM_DIR
        if not (lm_dir / "config.json").is_file():
            raise UsageError(f"--model {name_or_dir}: {folder} has no language model ({LM_DIR}/config.json); "
                             "a model folder for generation needs one (see `videolm tokenizer bundle --lm`)")
        vocab = Vocabulary.load(lm_dir if (lm_dir / "vocab.json").is_file() else folder)
        model = load_lm(lm_dir).to(device=device, dtype=torch.float32).eval()
        tokenizer = ClipTokenizer(folder, device=device)
        tokenizer.vocab = vocab
        clip = {"frames": 17, "height": 64, "width": 64, "fps": 8}
        if (lm_dir / "clip.json").is_file():
            clip.update(json.loads((lm_dir / "clip.json").read_text()))
        custom = {}
        if (lm_dir / CUSTOM_TASKS).is_file():  # tasks fine-tuned from a user's module, copied beside the weights
            custom = json.loads((lm_dir / CUSTOM_TASKS).read_text())
        return cls(folder, model, vocab, tokenizer, clip, custom)

    # -- the diffusion stages

    @property
    def refiner(self):
        """The folder's refiner (`videolm.diffusion.refiner.Refiner`), or None when it has none."""
        if self._refiner is None and (self.folder / REFINER_DIR / "config.json").is_file():
            from videolm.diffusion.refiner import Refiner

            self._refiner = Refiner.from_pretrained(self.folder / REFINER_DIR).to(self.tokenizer.device)
        return self._refiner

    def refine(self, videos: np.ndarray, seed: int = 0, steps: int | None = None) -> np.ndarray:
        """Decoded clips uint8 (B, T, H, W, 3) through the refiner (clip i with noise seed + i)."""
        from videolm.diffusion.refiner import refine

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

    def geometry(self, frames: int | None = None) -> dict:
        c = self.clip
        return self.tokenizer.geometry(frames or c["frames"], c["height"], c["width"], c["fps"])

    # -- inputs

    def inputs(self, prompt: str | None = None, image=None, video=None, audio=None, mask=None) -> TaskInputs:
        """`TaskInputs` at the model's size from arrays or file paths. ``video`` may be a list
        (``interpolate`` takes a start and an end clip)."""
        from videolm.tokenizers.media import read_audio, read_image, read_video

        size, fps = (self.clip["height"], self.clip["width"]), self.clip["fps"]

        def load(what: str, value, reader):
            if value is None or isinstance(value, np.ndarray):
                return value
            path = Path(value)
            if not path.is_file():
                raise UsageError(f"--{what} {value}: no such file")
            try:
                return reader(path)
            except (MediaError, ValueError, OSError) as e:
                raise UsageError(f"--{what} {value}: cannot read it ({_first_line(e)})") from e

        videos = video if isinstance(video, (list, tuple)) else ([] if video is None else [video])
        videos = [load("video", v, lambda p: read_video(p, fps=fps, size=size)) for v in videos]
        image = load("image", image, lambda p: read_image(p, size=size))
        wave = load("audio", audio, lambda p: read_audio(p, self.tokenizer.audio.config.sample_rate))
        mask = load("mask", mask, lambda p: read_image(p, size=size))
        for name, v in [("video", x) for x in videos] + [("image", image), ("mask", mask)]:
            hw = None if v is None else tuple(v.shape[:2] if name == "mask" else v.shape[-3:-1])
            if hw is not None and hw != size:
                raise UsageError(f"--{name}: {hw[0]}x{hw[1]} pixels, the model makes {size[0]}x{size[1]}")
        return TaskInputs(text=prompt, image=image, videos=videos,
                          audio=None if wave is None else np.asarray(wave, dtype=np.float32), mask=mask)

    # -- generation

    def generate(self, task: str = "t2v", prompt: str | None = None, *, image=None, video=None, audio=None,
                 mask=None, num_samples: int = 1, seed: int = 0, frames: int | None = None,
                 cfg_scale: float | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 with_audio: bool = False, progress: Callable[[int], object] | None = None,
                 refine: bool | None = None, backend: str = "ar", steps: int | None = None) -> list[Result]:
        """``num_samples`` results of ``task``; sample ``i`` uses seed ``seed + i`` (so it is what
        ``num_samples=1, seed=seed + i`` gives). ``frames`` beyond the clip length chains
        ``extend``; ``with_audio`` adds a soundtrack made by ``v2a``. ``progress`` is called with
        the number of tokens drawn as they are. ``refine`` (default: when the folder has a refiner)
        passes the video through the diffusion refiner. ``backend="dit"`` draws ``t2v`` and
        ``extend`` with the DiT baseline instead of the LM (``steps``: its sampling steps)."""
        if backend not in ("ar", "dit"):
            raise UsageError(f"--backend {backend}: choose ar or dit")
        if refine and self.refiner is None:
            raise UsageError(f"--refine: {self.folder} has no refiner ({REFINER_DIR}/config.json)")
        refine = self.refiner is not None if refine is None else refine
        if backend == "dit":
            self.dit_backend().check_task(task)
        elif cfg_scale is None:
            cfg_scale = AR_CFG_SCALE
        t = self.task(task)
        inputs = self.inputs(prompt, image, video, audio, mask)
        if frames is not None and frames < 1:
            raise UsageError(f"--frames {frames} must be >= 1")
        if frames is not None and frames > self.clip["frames"] and t.output != "video":
            raise UsageError(f"--frames applies to video outputs; {task} makes audio")
        if with_audio and t.output != "video":
            raise UsageError(f"--with-audio applies to tasks that make video; {task} makes audio")
        if with_audio:
            self.task("v2a")
        if frames is not None and frames > self.clip["frames"]:
            self.task("extend")
        sample = t.encode_inputs(inputs, self.tokenizer, self.geometry())
        results = []
        for i in range(num_samples):
            start = time.perf_counter()
            if backend == "dit":
                media = Media(video=self.dit_backend().run(task, inputs, seed + i, cfg_scale, steps))
            else:
                media = self._run(t, sample, seed + i, cfg_scale, temperature, top_k, top_p, progress)
            video = media.video
            if video is not None and frames is not None:
                video = self._lengthen(video, frames, seed + i, temperature, top_k, top_p, progress,
                                       backend, steps)
            if video is not None and refine:
                video = self.refine(video[None], seed=seed + i)[0]
            audio = media.audio
            if with_audio:
                audio = self._soundtrack(video, seed + i, temperature, top_k, top_p, progress)
            results.append(Result(task, seed + i, video, audio, time.perf_counter() - start, self.clip["fps"],
                                  self.tokenizer.audio.config.sample_rate,
                                  extra={"backend": backend, "refined": bool(refine and video is not None)}))
        return results

    def codes(self, task: Task, samples: list[dict], seed: int, cfg_scale: float = AR_CFG_SCALE,
              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
              progress=None) -> list[torch.Tensor]:
        """The task's output codes for a batch of samples (one draw with generator ``seed``)."""
        from videolm.tasks.lm_runs import generate_codes

        return generate_codes(self.model, task, samples, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                              top_p=top_p, generator=seed, progress=progress)

    def _run(self, task: Task, sample: dict, seed: int, cfg_scale, temperature, top_k, top_p, progress) -> Media:
        codes = self.codes(task, [sample], seed, cfg_scale, temperature, top_k, top_p, progress)[0]
        return task.to_media(codes, sample, self.tokenizer)

    def _lengthen(self, video: np.ndarray, frames: int, seed: int, temperature, top_k, top_p, progress,
                  backend: str = "ar", steps: int | None = None) -> np.ndarray:
        """Trim to ``frames``, or continue with ``extend`` (each step keeps the last frames of
        context and adds the clip's remaining frames) until there are that many."""
        extend = self.task("extend") if frames > len(video) else None
        step = 0
        while len(video) < frames:
            step += 1
            if backend == "dit":
                made = self.dit_backend().run("extend", TaskInputs(videos=[video]), seed + 7919 * step, None, steps)
            else:
                sample = extend.encode_inputs(TaskInputs(videos=[video]), self.tokenizer, self.geometry())
                made = self._run(extend, sample, seed + 7919 * step, 1.0, temperature, top_k, top_p,
                                 progress).video
            keep = frames_of(context_latents(self.geometry()["latents"]))
            video = np.concatenate([video, made[keep:]])
        return video[:frames]

    def _soundtrack(self, video: np.ndarray, seed: int, temperature, top_k, top_p, progress) -> np.ndarray:
        """``v2a`` over consecutive clip-length windows of ``video`` (the last one padded with its
        final frame), joined and cut to the video's duration."""
        v2a, n = self.task("v2a"), self.clip["frames"]
        geometry = self.geometry()
        parts = []
        for k, start in enumerate(range(0, len(video), n)):
            window = video[start:start + n]
            if len(window) < n:
                window = np.concatenate([window, np.repeat(window[-1:], n - len(window), 0)])
            sample = v2a.encode_inputs(TaskInputs(videos=[window]), self.tokenizer, geometry)
            parts.append(self._run(v2a, sample, seed + 104729 * (k + 1), 1.0, temperature, top_k, top_p,
                                   progress).audio)
        rate = self.tokenizer.audio.config.sample_rate
        return np.concatenate(parts)[:round(len(video) * rate / self.clip["fps"])]


class DiTBackend:
    """The DiT baseline of a model folder, behind the same inputs as the LM's tasks."""

    def __init__(self, folder: Path, tokenizer: ClipTokenizer):
        from videolm.diffusion.dit_pipeline import DEFAULT_CFG, DEFAULT_STEPS, TASKS, DiTGenerator

        self.folder, self.tasks = folder, TASKS
        self.default_steps, self.default_cfg = DEFAULT_STEPS, DEFAULT_CFG
        self.generator = DiTGenerator.from_folder(folder, tokenizer=tokenizer.video, text_tokenizer=tokenizer.text,
                                                  device=str(tokenizer.device))

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise UsageError(f"--backend dit: the DiT baseline does {', '.join(self.tasks)}, not {task}")

    def generate(self, task: str, prompts: list[str] | None = None, videos: np.ndarray | None = None,
                 seeds: list[int] | None = None, steps: int | None = None,
                 cfg_scale: float | None = None) -> tuple[np.ndarray, int]:
        """A batch: ``t2v`` from captions, ``extend`` from clips (their first 9 frames). Returns
        uint8 clips (B, T, H, W, 3) and network evaluations per clip."""
        self.check_task(task)
        n = len(prompts) if prompts is not None else len(videos)
        out = self.generator.generate(task, prompts=prompts, video=videos, seed=seeds or list(range(n)),
                                      steps=steps or self.default_steps,
                                      cfg_scale=self.default_cfg if cfg_scale is None else cfg_scale)
        return out.video, out.evaluations

    def run(self, task: str, inputs: TaskInputs, seed: int, cfg_scale: float | None, steps: int | None) -> np.ndarray:
        """One clip from a user's inputs (``extend`` continues from the video's last frames)."""
        self.check_task(task)
        if task == "t2v":
            if not inputs.text:
                raise UsageError("t2v needs --prompt")
            return self.generate("t2v", prompts=[inputs.text], seeds=[seed], steps=steps, cfg_scale=cfg_scale)[0][0]
        if inputs.video is None:
            raise UsageError("extend needs --video")
        need = frames_of(context_latents(self.generator.model.config.latent_shape[0]))
        if len(inputs.video) < need:
            raise UsageError(f"--video has {len(inputs.video)} frames; extend needs at least {need}")
        return self.generate("extend", videos=inputs.video[-need:][None], seeds=[seed], steps=steps)[0][0]

    def describe(self) -> dict:
        model = self.generator.model
        return {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "training": _read_training(self.folder),
                "sampler": f"flow matching, {self.default_steps} Euler steps, CFG {self.default_cfg}"}


def _read_training(folder: Path) -> dict | None:
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_lm(folder: Path):
    """A saved `VideoLM`, without transformers' progress bar on stderr."""
    from transformers.utils import logging as hf_logging

    from videolm.lm.model import VideoLM

    hf_logging.disable_progress_bar()
    try:
        return VideoLM.from_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["LM_DIR", "Pipeline", "Result", "VideolmError"]
