"""Tasks: how a sample becomes a (prefix, target) sequence, and an output back into codes.

A task is a small subclass of `Task` that names its inputs and its output modality and lays out
the condition part of the prefix (docs/design.md "Sequence format")::

    <bos> <task:NAME> [<res:HxW> [<frames:N>]] [<bot_i> text <eot_i>] [<bov_i> video <eov_i>] [<boa_i> audio <eoa_i>]
          <bov_o>|<boa_o>  output  <eov_o>|<eoa_o> <eos>

The prefix runs up to and including the output-begin token; the target is the output, its end
token and ``<eos>``. Samples hold *local* codes (``text (n,)``, ``video (t, n)``, ``audio (F, Q)``,
``structure (t, n)``, as written by ``videolm tokenize``) and their sizes (``height``, ``width``);
the task maps them into the vocabulary's ranges. Video is laid out latent frame by latent frame,
rows then columns; audio frame by frame, levels 0..Q-1.

A task is one class in one file: its sequence (`condition`), its training views (`views`), what a
user gives it (`encode_inputs`), its decoding back to media (`to_media`) and its metrics with their
copy baselines (`score`). Built-in tasks are registered by name in ``BUILTIN`` (an import path each,
``videolm/tasks/NAME.py``, so nothing loads until used); a task of your own is named by its import
path, ``"my_package.my_module:MyTask"``, and is trained and scored the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from videolm.core.config import resolve
from videolm.core.errors import ConfigError, UsageError
from videolm.data.shapes import ATTRIBUTES
from videolm.lm.constraints import OutputLayout, audio_layout, video_layout
from videolm.lm.positions import GridLayout
from videolm.tasks.tokenizing import has_field
from videolm.tokenizers.geometry import SPACE_DOWN, frames_of
from videolm.tokenizers.vocab import Vocabulary

# name -> "module:Class"
BUILTIN: dict[str, str] = {
    "t2v": "videolm.tasks.t2v:TextToVideo",
    "t2i": "videolm.tasks.t2i:TextToImage",
    "i2v": "videolm.tasks.i2v:ImageToVideo",
    "extend": "videolm.tasks.extend:Extend",
    "extend_back": "videolm.tasks.extend_back:ExtendBack",
    "interpolate": "videolm.tasks.interpolate:Interpolate",
    "loop": "videolm.tasks.loop:Loop",
    "inpaint": "videolm.tasks.inpaint:Inpaint",
    "outpaint": "videolm.tasks.outpaint:Outpaint",
    "stylize": "videolm.tasks.stylize:Stylize",
    "v2a": "videolm.tasks.v2a:VideoToAudio",
    "a2v": "videolm.tasks.a2v:AudioToVideo",
    "uncond": "videolm.tasks.uncond:Unconditional",
}

_OUTPUT_MARKERS = {"video": ("<bov_o>", "<eov_o>"), "audio": ("<boa_o>", "<eoa_o>")}


@dataclass
class TaskInputs:
    """What a user gives a task at generation time, already at the model's size: ``text``,
    ``image (H, W, 3)``, ``videos`` (each ``(T, H, W, 3)`` uint8), ``audio (S,)`` float32 at the
    model's rate, ``mask (H, W)`` bool (True: generate there)."""

    text: str | None = None
    image: np.ndarray | None = None
    videos: list[np.ndarray] = field(default_factory=list)
    audio: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def video(self) -> np.ndarray | None:
        return self.videos[0] if self.videos else None


@dataclass
class Media:
    """A task's result: ``video (T, H, W, 3)`` uint8 and/or ``audio (S,)`` float32, and ``notes``:
    what a user should know about it (the generation shows them as warnings)."""

    video: np.ndarray | None = None
    audio: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


class Task(ABC):
    """One task over one vocabulary. Subclasses set the class fields and `condition`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, for `videolm tasks`
    inputs: ClassVar[tuple[str, ...]] = ()  # sample fields the prefix reads: text, video, audio, structure, ...
    output: ClassVar[Literal["video", "audio"]] = "video"
    target: ClassVar[str] = ""  # the sample field the output is cut from (default: the output's)
    needs: ClassVar[str] = ""  # what a user gives at generation time, for `videolm tasks` and errors
    uses_text: ClassVar[bool] = False  # the prefix holds text (so classifier-free guidance applies)

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.task_id = vocab.task_id(self.name)  # the vocabulary must hold the task (Vocabulary.add_task)
        self.training = True  # False at generation: no random choices in the prefix

    # -- what subclasses write

    @abstractmethod
    def condition(self, sample: dict, drop_text: bool) -> list[torch.Tensor]:
        """The prefix between ``<task:NAME>`` and the output-begin token, as segments of ids."""

    # -- sequences

    def accepts(self, sample: dict) -> bool:
        """Whether the sample has every field this task reads and writes."""
        return all(has_field(sample, name) for name in self.fields)

    @property
    def target_field(self) -> str:
        return self.target or self.output

    @property
    def fields(self) -> tuple[str, ...]:
        """The sample fields a sequence of this task reads and writes."""
        return (*self.inputs, self.target_field)

    def target_codes(self, sample: dict) -> torch.Tensor:
        """The local codes the output is trained to be (default: the whole target field)."""
        return sample[self.target_field]

    def output_shape(self, sample: dict) -> tuple[int, int]:
        """The code shape of the output: ``(t, n)`` for video, ``(F, Q)`` for audio, from the
        sample's geometry (its clip's codes, or what `encode_inputs` wrote)."""
        if self.output == "audio":
            return tuple(sample["audio_shape"]) if "audio_shape" in sample else tuple(sample["audio"].shape)
        return self.output_latents(latents(sample)), tokens_per_frame(sample)

    def output_latents(self, t: int) -> int:
        """Latent frames of a video output for clips of ``t`` latent frames."""
        return t

    # -- scoring (`videolm eval`, `videolm finetune`): how well outputs did what the clip asked

    attributes: ClassVar[tuple[str, ...]] = ATTRIBUTES  # what the probe reads of a video output and checks
    #   against the objects asked for (empty: an output asks for no particular objects)
    frechet: ClassVar[bool] = True  # report ``fd_probe``: how far the outputs' spread is from real clips'

    def truth(self, clip: dict) -> np.ndarray | None:
        """The video this task should make from a held-out Shapes ``clip``, where there is one right
        answer (scored by PSNR beside the ceiling and `baseline`); None where there is not."""
        return None

    def baseline(self, clip: dict) -> np.ndarray | None:
        """A copy baseline for `truth`: the video a trivial rule would make (None: none)."""
        return None

    def truth_objects(self, clip: dict) -> list[dict]:
        """The objects a correct output shows (default: the clip's own)."""
        return clip["meta"]["objects"]

    def score(self, made: list[Media], scorer) -> dict:
        """Metrics of ``made``, one `Media` per clip of ``scorer`` (a `videolm.evaluation.scoring.Scorer`).

        The default: probe accuracy of `attributes` against `truth_objects` and ``fd_probe``; for
        a task with a `truth`, that accuracy and PSNR against the truth, beside the ``ceiling`` (the
        truth's own codes decoded: the best the LM can emit) and the copy `baseline`; for audio,
        the tones and bounce timing. Built-in tasks add what fits them (copy baselines of their
        own, masked PSNR, silhouettes)."""
        if self.output == "audio":
            return scorer.soundtrack([m.audio for m in made])
        videos = scorer.videos(made)
        wanted = [self.truth_objects(c) for c in scorer.clips]
        truth = [self.truth(c) for c in scorer.clips]
        if truth[0] is None:
            return {**scorer.attributes(videos, self.attributes, wanted),
                    **(scorer.frechet(videos) if self.frechet else {}), **self.late(videos, scorer, wanted)}

        def block(videos, record=False) -> dict:
            return {**scorer.attributes(videos, self.attributes, wanted, record), "psnr": scorer.mean_psnr(videos, truth)}

        result = block(videos, record=True)
        result["ceiling"] = block(scorer.decoded_targets(self))
        baselines = [self.baseline(c) for c in scorer.clips]
        if baselines[0] is not None:
            result["baseline"] = block(np.stack(baselines))
        return result

    def late(self, videos: np.ndarray, scorer, wanted: list[list[dict]]) -> dict:
        """For clips longer than the probe's window (17 frames): ``late``, the shape, colour and
        size read from their last 17 frames (what an object is does not change as it moves; its
        direction may, after a bounce), so a long clip is judged over its whole length."""
        window = 17
        names = tuple(a for a in self.attributes if a != "direction")
        if videos.shape[1] <= window or not names:
            return {}
        return {"late": scorer.attributes(videos[:, -window:], names, wanted, record=False)}

    # -- training data

    def views(self, clip: dict) -> dict[str, np.ndarray]:
        """Videos (name -> ``(T, H, W, 3)`` uint8) this task reads besides the built-in views
        (`videolm.tasks.views`), made from a raw clip; `ClipTokenizer.encode` tokenizes them into
        the sample under their names. A new task's way to get its condition into training data."""
        return {}

    # -- generation: a user's media in, media out

    @abstractmethod
    def encode_inputs(self, inputs: TaskInputs, tokenizer, geometry: dict) -> dict:
        """A sample holding what `condition` reads, from a user's media (`TaskInputs`, at the
        model's size), encoded by ``tokenizer`` (a `videolm.tasks.tokenizing.ClipTokenizer`),
        with ``geometry`` (`ClipTokenizer.geometry`: the clip's sizes) merged in. Raise
        `UsageError` naming what is missing."""

    def to_media(self, codes: torch.Tensor, sample: dict, tokenizer) -> Media:
        """Generated codes (`output_shape`) -> media; the default decodes them as they are."""
        if self.output == "audio":
            return Media(audio=tokenizer.decode_audio(codes, sample.get("num_samples")))
        return Media(video=tokenizer.decode_video(codes, int(sample["height"]), int(sample["width"])))

    def prefix(self, sample: dict, drop_text: bool = False) -> torch.Tensor:
        """``(P,)`` ids from ``<bos>`` to the output-begin token. ``drop_text`` empties the text
        (the unconditional prompt of classifier-free guidance)."""
        begin = self.vocab[_OUTPUT_MARKERS[self.output][0]]
        head = torch.tensor([self.vocab["<bos>"], self.task_id])
        return torch.cat([head, *self.condition(sample, drop_text), torch.tensor([begin])]).long()

    def target_ids(self, sample: dict) -> torch.Tensor:
        """``(N,)`` ids: the output, its end token and ``<eos>``."""
        end = self.vocab[_OUTPUT_MARKERS[self.output][1]]
        tail = torch.tensor([end, self.vocab["<eos>"]])
        return torch.cat([self.output_ids(self.target_codes(sample)), tail]).long()

    def build(self, sample: dict, drop_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prefix(sample, drop_text), self.target_ids(sample)

    # -- generation

    def layout(self, shape: tuple[int, int]) -> OutputLayout:
        """The ids allowed at each output position, for an output of code ``shape``: ``(t, n)``
        for video, ``(F, Q)`` for audio."""
        if self.output == "video":
            return video_layout(self.vocab, shape[0] * shape[1])
        return audio_layout(self.vocab, shape[0])

    def output_codes(self, ids: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Generated ids (the output, optionally followed by its end tokens) -> local codes ``shape``."""
        n = shape[0] * shape[1]
        if len(ids) < n:
            raise UsageError(f"{self.name}: {len(ids)} output ids, need {n} for codes of shape {tuple(shape)}")
        body = torch.as_tensor(ids[:n]).long()
        if self.output == "video":
            return self.vocab.ids_to_video(body).view(*shape)  # (t, n)
        return self.vocab.ids_to_audio(body.view(*shape))  # (F, Q)

    def output_ids(self, codes: torch.Tensor) -> torch.Tensor:
        if self.output == "video":
            return self.vocab.video_to_ids(codes.long()).flatten()  # (t * n,)
        return self.vocab.audio_to_ids(codes.long()).flatten()  # (F * Q,) frame by frame, level 0..Q-1

    # -- segments for `condition`

    def text_sample(self, inputs: TaskInputs, tokenizer, geometry: dict, required: bool = True) -> dict:
        """A generation sample with the geometry and the prompt's text codes (none without a prompt)."""
        if required:
            require(inputs, self.name, "text")
        sample = dict(geometry)
        if inputs.text:
            sample["text"] = tokenizer.encode_text(inputs.text)
        return sample

    def resolution(self, sample: dict) -> torch.Tensor:
        """The clip's geometry: ``<res:HxW>``, then ``<frames:N>`` where the vocabulary has length
        tokens (a model trained before them knows one length, and its sequences have none)."""
        ids = [self.vocab.res_id(int(sample["height"]), int(sample["width"]))]
        if self.vocab.lengths:
            ids.append(self.vocab.frames_id(clip_length(sample)))
        return torch.tensor(ids)

    def text(self, sample: dict, drop: bool = False, field: str = "text") -> torch.Tensor:
        """``<bot_i> text <eot_i>``, empty when ``drop`` or when the sample has no text."""
        codes = sample.get(field)
        empty = drop or codes is None or len(codes) == 0
        ids = torch.zeros(0, dtype=torch.long) if empty else self.vocab.text_to_ids(codes.long())
        return torch.cat([torch.tensor([self.vocab["<bot_i>"]]), ids, torch.tensor([self.vocab["<eot_i>"]])])

    def video(self, codes: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """``<bov_i> video <eov_i>``; ``hidden (n,)`` bool: positions of every latent frame that
        become ``<mask>``."""
        ids = self.vocab.video_to_ids(codes.long())  # (t, n)
        if hidden is not None:
            ids = ids.masked_fill(torch.as_tensor(hidden, dtype=torch.bool).flatten()[None], self.vocab["<mask>"])
        return torch.cat([torch.tensor([self.vocab["<bov_i>"]]), ids.flatten(), torch.tensor([self.vocab["<eov_i>"]])])

    def audio(self, codes: torch.Tensor) -> torch.Tensor:
        ids = self.vocab.audio_to_ids(codes.long()).flatten()  # (F * Q,)
        return torch.cat([torch.tensor([self.vocab["<boa_i>"]]), ids, torch.tensor([self.vocab["<eoa_i>"]])])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {', '.join(self.inputs) or 'nothing'} -> {self.output})"


def grid_layout(vocab: Vocabulary) -> GridLayout:
    """Where the tasks' video tokens lie, for a model with grid positions: each ``<res:HxW>`` of
    ``vocab`` on the video tokenizer's latent grid."""
    return GridLayout.from_vocab(vocab, SPACE_DOWN)


def latents(sample: dict) -> int:
    """Latent frames of the sample's clip."""
    return int(sample["latents"]) if "latents" in sample else int(sample["video"].shape[0])


def clip_length(sample: dict) -> int:
    """Frames of the sample's clip."""
    return int(sample["frames"]) if "frames" in sample else frames_of(latents(sample))


def tokens_per_frame(sample: dict) -> int:
    return int(sample["tokens_per_frame"]) if "tokens_per_frame" in sample else int(sample["video"].shape[1])


def require(inputs: TaskInputs, task: str, *names: str) -> None:
    """A `UsageError` naming the first of ``names`` (fields of `TaskInputs`) the user did not give."""
    flags = {"text": "--prompt", "image": "--image", "video": "--video", "audio": "--audio", "mask": "--mask"}
    for name in names:
        if getattr(inputs, name) is None:
            raise UsageError(f"task {task} needs {flags[name]}")


def clip_frames(video: np.ndarray, geometry: dict, task: str, where: str = "first") -> np.ndarray:
    """The first (or ``where="last"``) clip-length frames of a user's video; a `UsageError` if it is shorter."""
    n = geometry["frames"]
    if len(video) < n:
        raise UsageError(f"task {task} needs a video of at least {n} frames, got {len(video)}")
    return video[:n] if where == "first" else video[len(video) - n:]


def task_class(name: str) -> type[Task]:
    """A built-in task by name, or any `Task` subclass by import path ``"module:Class"``."""
    if name in BUILTIN:
        return resolve(BUILTIN[name])
    if ":" not in name:
        raise UsageError(f"unknown task {name!r}; built in: {', '.join(BUILTIN)} (or give module:Class)")
    cls = resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Task) and cls.name):
        raise ConfigError(f"{name}: not a Task subclass with a name")
    return cls


def build_tasks(names, vocab: Vocabulary) -> list[Task]:
    """Task objects for ``names``, adding each task's token to ``vocab`` (no existing id moves)."""
    classes = [task_class(n) for n in names]
    for cls in classes:
        vocab.add_task(cls.name)
    return [cls(vocab) for cls in classes]


__all__ = ["BUILTIN", "Media", "Task", "TaskInputs", "build_tasks", "clip_frames", "clip_length", "grid_layout", "latents", "require", "task_class",
           "tokens_per_frame"]
