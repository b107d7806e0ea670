"""`videolm tokenizer fit | eval | bundle`: the video and audio tokenizers trained, measured and put in a
model folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from videolm.cli.args import Command, data_input, input_folder, print_json, run_folder
from videolm.core.config import check_clip_numbers, check_range
from videolm.core.errors import UsageError
from videolm.core.models import DEFAULT_MODEL
from videolm.core.outputs import check_output_dir
from videolm.evaluation.tokenizer import evaluate_tokenizer
from videolm.train.tokenizer import TokenizerFitConfig, build_bundle, run_fit


def run_fit_cmd(cfg: TokenizerFitConfig) -> int:
    data_input(cfg.data.source)
    model_dir = run_fit(run_folder(cfg, "tokenizer fit"))
    print(f"trained {cfg.modality} tokenizer saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


@dataclass
class EvalArgs:
    model: str = DEFAULT_MODEL  # a tokenizer folder, a model bundle, or a shipped name
    modality: Literal["video", "audio"] | None = None  # which tokenizer of a bundle (default video)
    data: str = "shapes"  # 'shapes' (held-out seeds) or a folder of videos
    num: int = 256  # clips
    seed: int = 0  # first held-out seed offset / first folder clip
    batch_size: int = 8
    frames: int = 17  # frames per clip, 1 + 4k
    height: int = 64  # frame size of the clips (--size HxW sets both)
    width: int = 64

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "num", "batch_size")
        check_range(self, 0, 2**63 - 1, "seed")


def run_eval(args: EvalArgs) -> int:
    data_input(args.data)
    print_json(evaluate_tokenizer(args.model, data=args.data, num=args.num, seed=args.seed,
                                  batch_size=args.batch_size, modality=args.modality, frames=args.frames,
                                  size=(args.height, args.width)))
    return 0


@dataclass
class BundleArgs:
    out: str  # the model folder to fill (e.g. models/shapes-64)
    video: str | None = None  # a trained video tokenizer folder (e.g. RUN/model)
    audio: str | None = None  # a trained audio tokenizer folder
    data: str = "shapes"  # captions from 'shapes' (all backgrounds) or a folder
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
    "bundle": Command(BundleArgs, run_bundle, "assemble a model folder: tokenizers, a text tokenizer, the vocabulary",
                      "Copy trained video/audio tokenizers into OUT (stored as fp16), train the sentencepiece text "
                      "tokenizer on the data's captions into OUT/text.model, write the prompt table OUT/prompts.json "
                      "and the unified vocabulary OUT/vocab.json. Tokenizers already in OUT are kept unless replaced."),
}
