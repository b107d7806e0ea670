"""Tasks: how a sample becomes a (prefix, target) sequence, and an output back into codes.

A task is a small subclass of `Task` that names its inputs and its output modality and lays out
the condition part of the prefix (DESIGN.md "Sequence format")::

    <bos> <task:NAME> [<res:HxW>] [<bot_i> text <eot_i>] [<bov_i> video <eov_i>] [<boa_i> audio <eoa_i>]
          <bov_o>|<boa_o>  output  <eov_o>|<eoa_o> <eos>

The prefix runs up to and including the output-begin token; the target is the output, its end
token and ``<eos>``. Samples hold *local* codes (``text (n,)``, ``video (t, n)``, ``audio (F, Q)``,
``structure (t, n)``, as written by ``videolm tokenize``) and their sizes (``height``, ``width``);
the task maps them into the vocabulary's ranges. Video is laid out latent frame by latent frame,
rows then columns; audio frame by frame, levels 0..Q-1.

Built-in tasks are registered by name in ``BUILTIN`` (an import path each, so nothing loads until
used); a task of your own is named by its import path, ``"my_package.my_module:MyTask"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from videolm.lm.constraints import OutputLayout, audio_layout, video_layout
from videolm.tasks.config import resolve
from videolm.tokenizers.errors import ConfigError, UsageError
from videolm.tokenizers.vocab import Vocabulary

# name -> "module:Class"
BUILTIN: dict[str, str] = {
    "t2v": "videolm.tasks.t2v:TextToVideo",
    "v2a": "videolm.tasks.v2a:VideoToAudio",
}

_OUTPUT_MARKERS = {"video": ("<bov_o>", "<eov_o>"), "audio": ("<boa_o>", "<eoa_o>")}


class Task(ABC):
    """One task over one vocabulary. Subclasses set the class fields and `condition`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, for `videolm tasks`
    inputs: ClassVar[tuple[str, ...]] = ()  # sample fields the prefix reads: text, video, audio, structure
    output: ClassVar[Literal["video", "audio"]] = "video"

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.task_id = vocab.task_id(self.name)  # the vocabulary must hold the task (Vocabulary.add_task)

    # -- what subclasses write

    @abstractmethod
    def condition(self, sample: dict, drop_text: bool) -> list[torch.Tensor]:
        """The prefix between ``<task:NAME>`` and the output-begin token, as segments of ids."""

    # -- sequences

    def accepts(self, sample: dict) -> bool:
        """Whether the sample has every field this task reads and writes."""
        return all(sample.get(field) is not None for field in (*self.inputs, self.output))

    def prefix(self, sample: dict, drop_text: bool = False) -> torch.Tensor:
        """``(P,)`` ids from ``<bos>`` to the output-begin token. ``drop_text`` empties the text
        (the unconditional prompt of classifier-free guidance)."""
        begin = self.vocab[_OUTPUT_MARKERS[self.output][0]]
        head = torch.tensor([self.vocab["<bos>"], self.task_id])
        return torch.cat([head, *self.condition(sample, drop_text), torch.tensor([begin])]).long()

    def target(self, sample: dict) -> torch.Tensor:
        """``(N,)`` ids: the output, its end token and ``<eos>``."""
        end = self.vocab[_OUTPUT_MARKERS[self.output][1]]
        tail = torch.tensor([end, self.vocab["<eos>"]])
        return torch.cat([self.output_ids(sample[self.output]), tail]).long()

    def build(self, sample: dict, drop_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prefix(sample, drop_text), self.target(sample)

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

    def resolution(self, sample: dict) -> torch.Tensor:
        return torch.tensor([self.vocab.res_id(int(sample["height"]), int(sample["width"]))])

    def text(self, sample: dict, drop: bool = False) -> torch.Tensor:
        ids = torch.zeros(0, dtype=torch.long) if drop else self.vocab.text_to_ids(sample["text"].long())
        return torch.cat([torch.tensor([self.vocab["<bot_i>"]]), ids, torch.tensor([self.vocab["<eot_i>"]])])

    def video(self, codes: torch.Tensor) -> torch.Tensor:
        ids = self.vocab.video_to_ids(codes.long()).flatten()  # (t * n,)
        return torch.cat([torch.tensor([self.vocab["<bov_i>"]]), ids, torch.tensor([self.vocab["<eov_i>"]])])

    def audio(self, codes: torch.Tensor) -> torch.Tensor:
        ids = self.vocab.audio_to_ids(codes.long()).flatten()  # (F * Q,)
        return torch.cat([torch.tensor([self.vocab["<boa_i>"]]), ids, torch.tensor([self.vocab["<eoa_i>"]])])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {', '.join(self.inputs) or 'nothing'} -> {self.output})"


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


__all__ = ["BUILTIN", "Task", "build_tasks", "task_class"]
