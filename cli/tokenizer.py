"""`videolm tokenizer fit | eval | bundle`: the video and audio tokenizers trained, measured and put in a
model folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from videolm.cli.args import Command, data_input, input_folder, media_input, print_json
from videolm.core.config import check_clip_numbers, check_range, size_pair
from videolm.core.errors import UsageError
from videolm.core.models import DEFAULT_MODEL
from videolm.core.outputs import check_output_dir, check_output_file
from videolm.core.training import starting_run
from videolm.evaluation.tokenizer import evaluate_tokenizer, reconstruct
from videolm.train.tokenizer import TokenizerFitConfig, build_bundle, run_fit


def run_fit_cmd(cfg: TokenizerFitConfig) -> int:
    data_input(cfg.data.source)
    with starting_run(cfg, "tokenizer fit"):
        model_dir = run_fit(cfg)
    if model_dir is not None:  # rank 0 of a data-parallel run
        print(f"trained {cfg.modality} tokenizer saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


@dataclass
class EvalArgs:
    model: str = DEFAULT_MODEL  # a tokenizer folder, a model bundle, or a shipped name
    modality: Literal["video", "audio"] | None = None  # which tokenizer of a bundle (default video)
    data: str = "shapes"  # 'shapes' (held-out seeds), 'photos' (held-out photographs), a mix, a folder or a pack
    num: int = 256  # clips
    seed: int = 0  # first held-out seed offset / first folder clip
    batch_size: int = 8
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64  # frame size of the clips (--size HxW sets both)
    width: int = 64
    held_out: float | None = None  # a folder: the share of its videos held out, as `tokenizer fit` holds them out;
    #   those are the videos scored (default 0.1)

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "num", "batch_size")
        check_range(self, 0, 0.9, "held_out", low_open=True)
        check_range(self, 0, 2**63 - 1, "seed")


def run_eval(args: EvalArgs) -> int:
    data_input(args.data)
    print_json(evaluate_tokenizer(args.model, data=args.data, num=args.num, seed=args.seed,
                                  batch_size=args.batch_size, modality=args.modality, frames=args.frames,
                                  size=(args.height, args.width), held_out=args.held_out))
    return 0


@dataclass
class ReconstructArgs:
    video: str  # the clip to encode and decode (any video ffmpeg reads)
    out: str  # where to write the reconstruction (.mp4, .mkv, .webm or .gif)
    model: str = DEFAULT_MODEL  # a video tokenizer folder, a model bundle, or a shipped name
    size: str | None = None  # HxW to resize to first (default: the input's own size, cut to multiples of 8)
    frames: int | None = None  # the first N frames, 1 + 4k (default: all, cut to 1 + 4k)
    fit: Literal["crop", "pad", "stretch"] = "crop"  # with --size: cover and centre-crop, pad, or stretch
    refine: bool | None = None  # clean the decode with the model folder's refiner (default: when it has one)
    overwrite: bool = False  # replace --out if it exists

    def __post_init__(self):
        check_range(self, 1, None, "frames")
        if self.frames is not None and (self.frames - 1) % 4:
            raise UsageError(f"--frames {self.frames}: a clip has 1 + 4k frames (1, 5, 9, 13, 17, ...)")
        if self.size is not None:
            try:
                h, w = size_pair(self.size)
            except ValueError as e:
                raise UsageError(f"--size {e}") from None
            if h % 8 or w % 8:
                raise UsageError(f"--size {self.size}: height and width must be multiples of 8")
            if h * w > 2048 * 2048:
                raise UsageError(f"--size {self.size}: at most 2048x2048 pixels a frame")
        elif self.fit != "crop":
            raise UsageError(f"--fit {self.fit}: applies with --size (without it the clip keeps its own size)")


def run_reconstruct(args: ReconstructArgs) -> int:
    media_input(args.video, "--video")
    check_output_file(args.out, args.overwrite, inputs=(args.video, args.model))
    if Path(args.out).suffix.lower() not in (".mp4", ".mkv", ".webm", ".mov", ".gif"):
        raise UsageError(f"--out {args.out}: write a video file (.mp4, .mkv, .webm, .mov or .gif)")
    size = size_pair(args.size) if args.size else None
    result = reconstruct(args.model, args.video, args.out, size=size, frames=args.frames, fit=args.fit,
                         refine_output=args.refine)
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print_json(result)
    return 0


@dataclass
class BundleArgs:
    out: str  # the model folder to fill (e.g. models/shapes-64)
    video: str | None = None  # a trained video tokenizer folder (e.g. RUN/model)
    audio: str | None = None  # a trained audio tokenizer folder
    data: str = "shapes"  # captions from a world (shapes: all backgrounds; photos), a folder or a pack (none: Shapes')
    captions: int = field(default=4000)  # how many captions to train the text tokenizer on
    text_vocab: int = 512  # text vocabulary size

    def __post_init__(self):
        check_range(self, 1, None, "captions")
        check_range(self, 16, 1_000_000, "text_vocab")


def run_bundle(args: BundleArgs) -> int:
    for flag in ("video", "audio"):
        if getattr(args, flag):
            input_folder(getattr(args, flag), f"--{flag}")
    data_input(args.data)
    out = Path(args.out)
    if not out.is_dir() or not any(out.iterdir()):
        check_output_dir(out)  # a new model folder
    elif out.is_symlink() or not any((out / part).exists() for part in ("vocab.json", "video_tokenizer", "audio_tokenizer")):
        raise UsageError(f"--out {out}: holds files but is not a model folder (no vocab.json or tokenizers); "
                         "give a new folder or a model folder to fill in place")
    print_json(build_bundle(args.out, args.video, args.audio, data=args.data, captions=args.captions,
                            text_vocab=args.text_vocab))
    return 0


COMMANDS = {
    "fit": Command(TokenizerFitConfig, run_fit_cmd, "train a tokenizer from a YAML config (a rerun resumes it)",
                   "Train the tokenizer a config describes (configs/tokenizer/*.yaml). The run folder gets "
                   "checkpoints/last.ckpt (a rerun resumes from it exactly), samples/*.png, metrics.jsonl and "
                   "model/ (safetensors). Flags override the config.", config="tokenizer fit"),
    "eval": Command(EvalArgs, run_eval, "reconstruction quality on held-out clips, as one JSON object",
                    "Encode and decode held-out clips (Shapes seeds >= 1,000,000, or a folder's clips) and print one "
                    "JSON object: video: psnr, ssim, codebook_usage, perplexity, clips_per_s; audio: stft_distance, "
                    "frequency_agreement (dominant frequency within 3%), codebook_usage, perplexity, clips_per_s."),
    "reconstruct": Command(ReconstructArgs, run_reconstruct, "encode and decode your own clip, write it, print PSNR/SSIM",
                           "Encode and decode --video with the video tokenizer and write the result to --out at the "
                           "input's frame rate. By default the input's size and frame count are kept (cut to multiples "
                           "of 8 pixels and 1 + 4k frames, said in a note). Prints one JSON object: psnr and ssim "
                           "against the input, baseline_psnr and baseline_ssim of the same-bits codec (every 4th "
                           "frame at 1/8 size, 4 bits per channel, upsampled linearly: the tokenizer's 12 bits per "
                           "4x8x8 block), size, frames, notes. A model folder with a refiner (e.g. shapes-64) cleans "
                           "the decode by default (--no-refine: not); psnr_decoded then gives the decode alone."),
    "bundle": Command(BundleArgs, run_bundle, "assemble a model folder: tokenizers, a text tokenizer, the vocabulary",
                      "Copy trained video/audio tokenizers into OUT (stored as fp16), train the sentencepiece text "
                      "tokenizer on the data's captions into OUT/text.model, write the prompt table OUT/prompts.json "
                      "and the unified vocabulary OUT/vocab.json. Tokenizers already in OUT are kept unless replaced."),
}
