"""`videolm tokenizer fit` and `videolm tokenizer eval`: the tokenizers trained and measured on clips.

The trainer itself (`videolm.train.tokenizer_module`) knows nothing of datasets; this module picks
the data (Shapes on the fly, or a folder of videos), builds the model from its preset, and runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from videolm.core.config import check_clip_numbers, check_range, to_dict
from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.data.folder import FolderDataset, folder_captions, held_out_videos
from videolm.data.packs import ClipPack, is_pack, pack_captions
from videolm.data.photos import PhotoConfig, make_photo_clip
from videolm.data.shapes import BACKGROUNDS, ShapesConfig, make_clip
from videolm.data.sources import MixedDataset, open_pack, world_dataset
from videolm.data.worlds import is_world, parse_world
from videolm.tasks.prompts import build_table
from videolm.tasks.tokenizing import load_tokenizer
from videolm.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, VideoTokenizerConfig
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.tokenizer_module import TrainConfig, fit

VAL_SEED_START = 999_000  # validation during training: the top of the training seed range
PHOTO_VAL_SEED = 500_000  # ... and held-out photo clips far from the ones `tokenizer eval` reads


@dataclass
class DataConfig:
    source: str = field(default="shapes", metadata={"flags": ["--data"]})  # a world drawn on the fly ("shapes",
    #   "photos", a mix like "photos:3+shapes:1"), a folder of videos or a clip pack (a folder or URL)
    num: int = 900_000  # training clips of a world (seeds 0 .. num-1)
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64
    width: int = 64
    fps: int = 8
    backgrounds: list[str] = field(default_factory=lambda: ["black"], metadata={"comma": True})
    # a folder of videos:
    stride: int | None = None  # frames between clip starts (None: no overlap); each file's tail is kept
    held_out: float = 0.1  # share of the folder's videos held out for validation (at least one of two or more)
    cache: bool = True  # decode each video once into videolm's cache; later epochs and runs read it from there

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "stride")
        check_range(self, 0, 0.9, "held_out")

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
    init: str | None = None  # start from these weights (a tokenizer folder, or a bundle's; same architecture):
    #   with train.freeze_encoder, the decoder fine-tuning stage of MAGVIT-v2 and VidTok


def build_tokenizer(modality: str, preset: str, overrides: dict):
    if modality == "video":
        return VideoTokenizer(VideoTokenizerConfig.from_name(preset, **overrides))

    return AudioTokenizer(AudioTokenizerConfig.from_name(preset, **overrides))


def clip_dataset(data: DataConfig, split: Literal["train", "val", "eval"], num: int, seed: int = 0) -> Dataset:
    """A world's clips of a split, or a folder's clips (train: all; val/eval: the first `num` after `seed`).
    Validation during training reads Shapes seeds at the top of the training range, and photo
    clips of the held-out photographs (seeds apart from those `tokenizer eval` reads)."""
    if is_world(data.source):
        if split == "train" and "shapes" in data.source and data.num > VAL_SEED_START:
            raise UsageError(f"data.num={data.num}: Shapes training seeds must stay below {VAL_SEED_START}")
        parts = []
        for name, weight in parse_world(data.source):
            if split == "val":
                part_split, first = ("train", VAL_SEED_START) if name == "shapes" else ("eval", PHOTO_VAL_SEED)
            else:
                part_split, first = split, (seed if split == "eval" else 0)
            parts.append((world_dataset(name, data.num if split == "train" else num, first, part_split,
                                        data.frames, data.height, data.width, data.fps, data.backgrounds), weight))
        return parts[0][0] if len(parts) == 1 else MixedDataset([p for p, _ in parts], [w for _, w in parts])

    if is_pack(data.source):  # split when packed: its held-out part validates, as a folder's held-out videos do
        part = "train" if split == "train" else "eval"
        if part == "eval" and not len(ClipPack(data.source, "eval")):
            warnings.warn(f"{data.source}: the pack has no held-out clips; validating on training clips", stacklevel=2)
            part = "train"
        pack = open_pack(data.source, part, data.height, data.width, data.frames, data.fps)
        return pack if split == "train" else Subset(pack, range(seed, min(seed + num, len(pack))))
    folder = dict(frames=data.frames, fps=data.fps, size=(data.height, data.width), stride=data.stride,
                  held_out=data.held_out, cache=data.cache)
    if split == "train":
        return FolderDataset(data.source, split="train", **folder)
    if split == "val" and not held_out_videos(FolderDataset(data.source, **folder).paths(), data.held_out):
        warnings.warn(f"{data.source}: no held-out video (one video, or held_out=0); validating on training clips",
                      stacklevel=2)
        ds = FolderDataset(data.source, split="all", **folder)
    else:
        ds = FolderDataset(data.source, split="eval" if split == "val" else "all", **folder)
    return Subset(ds, range(seed, min(seed + num, len(ds))))


def run_fit(cfg: TokenizerFitConfig) -> Path | None:
    if cfg.train.freeze_encoder and (cfg.modality != "video" or not cfg.init):
        raise UsageError("train.freeze_encoder fine-tunes the decoder of a trained video tokenizer: "
                         "give --init (and --modality video)")
    if cfg.train.strategy == "ddp" and cfg.train.adversarial.enabled:
        raise UsageError("train.adversarial with train.strategy ddp is not supported (the discriminator is idle "
                         "before its start step, which DDP does not allow); train on one device")
    torch.manual_seed(cfg.train.seed)  # the initial weights follow the seed
    if cfg.init:
        model = load_tokenizer(cfg.init, cfg.modality).float().train()
    else:
        model = build_tokenizer(cfg.modality, cfg.preset, cfg.model)
    train = clip_dataset(cfg.data, "train", cfg.data.num)
    val = clip_dataset(cfg.data, "val", cfg.train.val_clips)
    return fit(model, cfg.modality, cfg.train, train, val, cfg.out, run_config={"entry": "tokenizer fit", **to_dict(cfg)},
)


# ------------------------------------------------------------------------------------------ eval


# ---------------------------------------------------------------------------------------- bundle


def corpus_captions(data: str = "shapes", num: int = 4000) -> tuple[list[str], str]:
    """Captions to train the text tokenizer on, and where they came from: Shapes (every background,
    so every word of the grammar appears), photo-world clips, or a folder's captions. A folder
    without captions gets the Shapes grammar, so its bundle still reads prompts."""
    parts = dict(parse_world(data) or [])
    if data != "shapes" and not parts:
        captions = [c for c in (pack_captions(data) if is_pack(data) else folder_captions(data)) if c][:num]
        if captions:
            return captions, f"{len(captions)} captions of {data}"
        parts, note = {"shapes": 1.0}, f"Shapes captions ({data} has no captions)"
    else:
        note = f"captions of {data}"
    captions = []
    if "shapes" in parts:
        world = ShapesConfig(backgrounds=list(BACKGROUNDS))
        captions += [make_clip(seed, world).caption for seed in range(num)]
    if "photos" in parts:
        captions += [make_photo_clip(seed, PhotoConfig(height=32, width=32, frames=1)).caption
                     for seed in range(min(num, 1000))]
    return captions, note


def build_bundle(out: str | Path, video: str | None, audio: str | None, data: str = "shapes",
                 captions: int = 4000, text_vocab: int = 512, resolutions=((64, 64),)) -> dict:
    """Assemble a model folder: the trained tokenizers, a text tokenizer fit on the data's captions,
    and the unified vocabulary that lays their ids out. Returns a summary. Everything is read and
    trained before anything is written, in a folder beside ``out`` whose parts then replace
    ``out``'s (a failure leaves ``out`` as it was)."""
    out = Path(out)
    video_tok = audio_tok = None
    if video:
        video_tok = VideoTokenizer.from_pretrained(resolve_model(video))
    elif (out / "video_tokenizer").exists():
        video_tok = VideoTokenizer.from_pretrained(out / "video_tokenizer")
    if audio:
        audio_tok = AudioTokenizer.from_pretrained(resolve_model(audio))
    elif (out / "audio_tokenizer").exists():
        audio_tok = AudioTokenizer.from_pretrained(out / "audio_tokenizer")
    corpus, source = corpus_captions(data, captions)
    text = TextTokenizer.train(corpus, vocab_size=text_vocab)
    vocab = Vocabulary(
        text.vocab_size,
        video_codes=video_tok.codebook_size if video_tok else 4096,
        audio_levels=audio_tok.config.num_quantizers if audio_tok else 4,
        audio_codes=audio_tok.config.codebook_size if audio_tok else 1024,
        resolutions=tuple(resolutions),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.bundle-", dir=out.absolute().parent))
    try:
        if video:
            video_tok.save_pretrained(staging / "video_tokenizer", dtype="float16")
        if audio:
            audio_tok.save_pretrained(staging / "audio_tokenizer", dtype="float16")
        text.save(staging)
        build_table(corpus).save(staging)  # how generate reads prompts as people type them
        vocab.save(staging)
        out.mkdir(exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                old = staging / f".old-{entry.name}"
                os.replace(target, old)  # the old part goes only once the new one is in place
                os.replace(entry, target)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary: dict = {"folder": str(out)}
    for part in ("video_tokenizer", "audio_tokenizer"):
        weights = out / part / "model.safetensors"
        if weights.exists():
            summary[f"{part}_mb"] = round(weights.stat().st_size / 2**20, 2)
    summary.update({"text_vocab": text.vocab_size, "text_corpus": source, "vocabulary": len(vocab)})
    if audio_tok is None:
        summary["note"] = ("no audio tokenizer: this folder reconstructs and tokenizes video only; `videolm tokenize` "
                           "and `lm fit` need one (--audio)")
    return summary
