"""`videolm lm fit`: the prefix LM trained on a task mixture, from token shards or tokenizing on the fly.

The trainer (`videolm.lm.training`) sees ids only; this module picks the data, turns clips into
sequences through the tasks named in the config, sizes the model to the vocabulary, and hands
the trainer a function that writes sample outputs (generated with the engine, decoded through
the tokenizers) every ``train.sample_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videolm.lm.data import TaskSequences, TokenizedClips, TokenShards
from videolm.lm.engine import generate
from videolm.lm.model import LMConfig, VideoLM
from videolm.lm.training import LMTrainConfig, fit
from videolm.tasks.base import Task, build_tasks
from videolm.tokenizers.errors import ConfigError
from videolm.tokenizers.schema import to_dict


@dataclass
class LMDataConfig:
    shards: str | None = None  # a folder written by `videolm tokenize`
    source: str | None = None  # or tokenize on the fly: "shapes" or a folder of videos
    num: int = 100_000  # on the fly: Shapes training clips (seeds 0 .. num-1) or a folder's first clips
    frames: int = 17  # on the fly: clip size
    height: int = 64
    width: int = 64
    model: str | None = None  # tokenizers (to tokenize on the fly and decode samples); None: the shards'
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0, "v2a": 1.0})  # name or module:Class -> weight
    text_dropout: float = 0.1  # classifier-free guidance: the text is emptied this often in training

    def __post_init__(self):
        if (self.shards is None) == (self.source is None):
            raise ConfigError("data: give exactly one of shards (token shards) or source (tokenize on the fly)")
        if not self.tasks:
            raise ConfigError("data.tasks: name at least one task")


@dataclass
class SampleConfig:
    """Sample outputs written every ``train.sample_every`` steps, for the first clips of the data."""

    clips: int = 2  # per task
    cfg_scale: float = 3.0  # classifier-free guidance for tasks with text
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0


@dataclass
class LMFitConfig:
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the LMConfig preset's fields
    data: LMDataConfig = field(default_factory=lambda: LMDataConfig(shards="runs/tokens/shapes-64"))
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    out: str = "runs/lm"


def training_data(cfg: LMDataConfig):
    """The samples (shards, or clips tokenized on the fly), their vocabulary and the tokenizers'
    model folder."""
    if cfg.shards is not None:
        shards = TokenShards(cfg.shards)
        return shards, shards.vocab(), cfg.model or shards.model
    from videolm.tasks.token_shards import ClipSource, ClipTokenizer

    source = ClipSource(data=cfg.source, num=cfg.num, frames=cfg.frames, height=cfg.height, width=cfg.width)
    tokenizer = ClipTokenizer(cfg.model or "shapes-64")
    tokenizer.vocab.add_resolution(cfg.height, cfg.width)
    return TokenizedClips(source.dataset(), tokenizer), tokenizer.vocab, str(tokenizer.folder)


def build_model(cfg: LMFitConfig, vocab_size: int, vocab) -> VideoLM:
    """The preset, sized to the vocabulary (rounded up to a multiple of 64) unless set."""
    overrides = {"vocab_size": -(-vocab_size // 64) * 64, "pad_id": vocab["<pad>"], "bos_id": vocab["<bos>"],
                 "eos_id": vocab["<eos>"], **cfg.model}
    lm = LMConfig.from_name(cfg.preset, **overrides)
    if lm.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={lm.vocab_size} is smaller than the vocabulary ({vocab_size} ids)")
    if lm.max_seq_len < cfg.train.row_len:
        raise ConfigError(f"train.row_len={cfg.train.row_len} exceeds the model's max_seq_len={lm.max_seq_len}")
    return VideoLM.from_lm_config(lm)


def run_fit(cfg: LMFitConfig):
    """Train as ``cfg`` says; returns OUT/model (None on the extra processes of a multi-process run)."""
    samples, vocab, model_dir = training_data(cfg.data)
    tasks = build_tasks(list(cfg.data.tasks), vocab)
    data = TaskSequences(samples, tasks, list(cfg.data.tasks.values()), cfg.data.text_dropout, cfg.train.row_len)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, len(vocab), vocab)
    sample = None
    if cfg.train.sample_every:
        sample = SampleWriter(tasks, samples, model_dir, Path(cfg.out) / "samples", cfg.samples)
    return fit(model, cfg.train, data, cfg.out, [t.name for t in tasks], vocab=vocab, pad_id=vocab["<pad>"],
               sample=sample, run_config={"entry": "lm fit", **to_dict(cfg)})


class SampleWriter:
    """``(model, step)`` -> for each task, outputs generated for the first clips it accepts, decoded
    and written beside the truth: video as ``step_NNNNNN_TASK.png`` (truth above, generated below)
    and ``.gif`` (truth | generated), audio as ``.wav`` (generated, then truth)."""

    def __init__(self, tasks: list[Task], samples, model_dir: str | None, out: Path, cfg: SampleConfig):
        self.tasks, self.out, self.cfg = tasks, Path(out), cfg
        self.model_dir = model_dir
        self._tokenizer = None
        self.prompts = {t.name: _first_accepted(t, samples, cfg.clips) for t in tasks}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from videolm.tasks.token_shards import ClipTokenizer

            if self.model_dir is None:
                raise ConfigError("samples need the tokenizers: set data.model to a model folder")
            self._tokenizer = ClipTokenizer(self.model_dir)
        return self._tokenizer

    def __call__(self, model: VideoLM, step: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for task in self.tasks:
            items = self.prompts[task.name]
            if items:
                codes = self.generate(model, task, items)
                self.write(task, items, codes, self.out / f"step_{step:06d}_{task.name}")

    def generate(self, model: VideoLM, task: Task, items: list[dict]) -> list[torch.Tensor]:
        """Each item's generated output as local codes of its target's shape."""
        shapes = [tuple(item[task.output].shape) for item in items]
        guided = "text" in task.inputs and self.cfg.cfg_scale != 1
        ids = generate(model, [task.prefix(item) for item in items], constraint=[task.layout(s) for s in shapes],
                       cfg_scale=self.cfg.cfg_scale if guided else 1.0,
                       uncond_prompts=[task.prefix(item, drop_text=True) for item in items] if guided else None,
                       temperature=self.cfg.temperature, top_k=self.cfg.top_k, pad_id=task.vocab["<pad>"],
                       generator=self.cfg.seed)  # (B, N)
        return [task.output_codes(row, shape) for row, shape in zip(ids.cpu(), shapes)]

    def write(self, task: Task, items: list[dict], codes: list[torch.Tensor], stem: Path) -> None:
        from videolm.tokenizers.media import write_audio, write_grid, write_video

        tok = self.tokenizer
        if task.output == "video":
            h, w = items[0]["height"], items[0]["width"]
            truth = np.stack([tok.decode_video(item["video"], h, w) for item in items])  # (B, T, H, W, 3)
            made = np.stack([tok.decode_video(c, h, w) for c in codes])  # (B, T, H, W, 3)
            write_grid(stem.with_suffix(".png"), np.concatenate([truth, made]))
            write_video(stem.with_suffix(".gif"), np.concatenate([truth[0], made[0]], axis=2), fps=8)
        else:
            n = items[0].get("num_samples")
            made, truth = tok.decode_audio(codes[0], n), tok.decode_audio(items[0]["audio"], n)  # (S,) each
            write_audio(stem.with_suffix(".wav"), np.concatenate([made, truth]))


def _first_accepted(task: Task, samples, num: int) -> list[dict]:
    found = []
    for i in range(min(len(samples), 64)):
        if len(found) == num:
            break
        sample = samples[i]
        if task.accepts(sample):
            found.append(sample)
    return found


__all__ = ["LMDataConfig", "LMFitConfig", "SampleConfig", "SampleWriter", "build_model", "run_fit", "training_data"]
