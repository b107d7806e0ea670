"""`videolm tokenizer fit` and `videolm tokenizer eval`: the tokenizers trained and measured on clips.

The trainer itself (`videolm.train.tokenizer_module`) knows nothing of datasets; this module picks
the data (Shapes on the fly, or a folder of videos), builds the model from its preset, and runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from videolm.core.config import check_clip_numbers, to_dict
from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.data.folder import FolderDataset
from videolm.data.shapes import BACKGROUNDS, ShapesConfig, make_clip
from videolm.data.shapes_data import ShapesDataset
from videolm.tasks.prompts import build_table
from videolm.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, VideoTokenizerConfig
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.tokenizer_module import TrainConfig, fit

VAL_SEED_START = 999_000  # validation during training: the top of the training seed range


@dataclass
class DataConfig:
    source: str = field(default="shapes", metadata={"flags": ["--data"]})  # "shapes" (drawn on the fly) or a folder
    #   of videos
    num: int = 900_000  # Shapes training clips (seeds 0 .. num-1)
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64
    width: int = 64
    fps: int = 8
    backgrounds: list[str] = field(default_factory=lambda: ["black"], metadata={"comma": True})

    def __post_init__(self):
        check_clip_numbers(self)

    def world(self) -> ShapesConfig:
        return ShapesConfig(height=self.height, width=self.width, frames=self.frames, fps=self.fps,
                            backgrounds=list(self.backgrounds))


@dataclass
class TokenizerFitConfig:
    modality: Literal["video", "audio"] = "video"
    preset: str = "default"  # the tokenizer's size (a preset of its config)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/tokenizer"  # the run folder (a rerun resumes it)


def build_tokenizer(modality: str, preset: str, overrides: dict):
    if modality == "video":
        return VideoTokenizer(VideoTokenizerConfig.from_name(preset, **overrides))

    return AudioTokenizer(AudioTokenizerConfig.from_name(preset, **overrides))


def clip_dataset(data: DataConfig, split: Literal["train", "val", "eval"], num: int, seed: int = 0) -> Dataset:
    """Shapes clips of a split, or a folder's clips (train: all; val/eval: the first `num` after `seed`)."""
    if data.source == "shapes":
        if split == "val":
            return ShapesDataset(num, seed=VAL_SEED_START, world=data.world())
        if split == "eval":
            return ShapesDataset(num, seed=seed, split="eval", world=data.world())
        if data.num > VAL_SEED_START:
            raise UsageError(f"data.num={data.num}: Shapes training seeds must stay below {VAL_SEED_START}")
        return ShapesDataset(data.num, seed=0, world=data.world())

    ds = FolderDataset(data.source, frames=data.frames, fps=data.fps, size=(data.height, data.width))
    return ds if split == "train" else Subset(ds, range(seed, min(seed + num, len(ds))))


def run_fit(cfg: TokenizerFitConfig) -> Path:
    torch.manual_seed(cfg.train.seed)  # the initial weights follow the seed
    model = build_tokenizer(cfg.modality, cfg.preset, cfg.model)
    train = clip_dataset(cfg.data, "train", cfg.data.num)
    val = clip_dataset(cfg.data, "val", cfg.train.val_clips)
    return fit(model, cfg.modality, cfg.train, train, val, cfg.out, run_config={"entry": "tokenizer fit", **to_dict(cfg)})


# ------------------------------------------------------------------------------------------ eval


# ---------------------------------------------------------------------------------------- bundle


def corpus_captions(data: str = "shapes", num: int = 4000) -> list[str]:
    """Captions to train the text tokenizer on: Shapes (every background, so every word of the
    grammar appears) or a folder's captions."""
    if data == "shapes":
        world = ShapesConfig(backgrounds=list(BACKGROUNDS))
        return [make_clip(seed, world).caption for seed in range(num)]

    return [c for c in FolderDataset(data).captions() if c][:num]


def build_bundle(out: str | Path, video: str | None, audio: str | None, data: str = "shapes",
                 captions: int = 4000, text_vocab: int = 512, resolutions=((64, 64),)) -> dict:
    """Assemble a model folder: the trained tokenizers, a text tokenizer fit on the data's captions,
    and the unified vocabulary that lays their ids out. Returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"folder": str(out)}
    video_tok = audio_tok = None
    if video:
        video_tok = VideoTokenizer.from_pretrained(resolve_model(video))
        video_tok.save_pretrained(out / "video_tokenizer", dtype="float16")
    elif (out / "video_tokenizer").exists():
        video_tok = VideoTokenizer.from_pretrained(out / "video_tokenizer")
    if audio:
        audio_tok = AudioTokenizer.from_pretrained(resolve_model(audio))
        audio_tok.save_pretrained(out / "audio_tokenizer", dtype="float16")
    elif (out / "audio_tokenizer").exists():
        audio_tok = AudioTokenizer.from_pretrained(out / "audio_tokenizer")
    corpus = corpus_captions(data, captions)
    text = TextTokenizer.train(corpus, vocab_size=text_vocab)
    text.save(out)
    build_table(corpus).save(out)  # how generate reads prompts as people type them
    vocab = Vocabulary(
        text.vocab_size,
        video_codes=video_tok.codebook_size if video_tok else 4096,
        audio_levels=audio_tok.config.num_quantizers if audio_tok else 4,
        audio_codes=audio_tok.config.codebook_size if audio_tok else 1024,
        resolutions=tuple(resolutions),
    )
    vocab.save(out)
    for part in ("video_tokenizer", "audio_tokenizer"):
        weights = out / part / "model.safetensors"
        if weights.exists():
            summary[f"{part}_mb"] = round(weights.stat().st_size / 2**20, 2)
    summary.update({"text_vocab": text.vocab_size, "vocabulary": len(vocab)})
    return summary
