"""`videolm refiner fit | eval | apply`: the diffusion refiner trained, measured and run on a video."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from videolm.cli.args import Command, data_input, media_input, print_json, progress, size
from videolm.core.config import check_clip_numbers, check_range
from videolm.core.errors import UsageError
from videolm.core.models import DEFAULT_MODEL
from videolm.core.outputs import check_output_file
from videolm.core.training import starting_run
from videolm.data.media import carried_sound, probe_video, read_video, write_video
from videolm.data.worlds import is_world
from videolm.diffusion.refiner import load_refiner, refine
from videolm.evaluation.refiner import evaluate_refiner
from videolm.train.refiner import RefinerFitConfig, run_fit


def run_fit_cmd(cfg: RefinerFitConfig) -> int:
    data_input(cfg.data.source)
    with starting_run(cfg, "refiner fit"), progress(cfg.data.num, "pairs") as bar:
        model_dir = run_fit(cfg, progress=bar.update)
    print(f"trained refiner saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


@dataclass
class EvalArgs:
    model: str = DEFAULT_MODEL  # a refiner folder, a model folder or a shipped name
    tokenizer: str = DEFAULT_MODEL  # the video tokenizer whose decodes are refined
    data: str = "shapes"  # whose held-out clips: 'shapes' or 'photos' (held-out photographs)
    num: int = 256  # held-out clips
    seed: int = 0  # offset among the held-out seeds, and the noise seed
    steps: int | None = None  # Euler steps (default: the refiner's)
    noise_scale: float | None = None  # sampling temperature in [0, 1] (default: the refiner's)
    gate_tau: float | None = None  # uncertainty gate threshold in levels of 255; 0 turns the gate off (default:
    #   the refiner's)
    batch_size: int = 8  # network rows refined at once
    threads: int | None = None  # CPU threads for torch
    frames: int = 17  # frames per held-out clip, 1 + 4k
    height: int = 64  # frame size of the held-out clips (--size HxW sets both)
    width: int = 64

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "num", "batch_size", "threads")
        check_range(self, 1, 10_000, "steps")
        check_range(self, 0, 2**63 - 1, "seed")
        check_range(self, 0, 1, "noise_scale")
        check_range(self, 0, 255, "gate_tau")


def run_eval(args: EvalArgs) -> int:
    if not is_world(args.data) or "+" in args.data:
        raise UsageError(f"--data {args.data}: choose shapes or photos")
    if args.threads:
        torch.set_num_threads(args.threads)
    with progress(args.num, "refine") as bar:
        print_json(evaluate_refiner(args.model, num=args.num, seed=args.seed, steps=args.steps,
                                    noise_scale=args.noise_scale, gate_tau=args.gate_tau, tokenizer=args.tokenizer,
                                    batch_size=args.batch_size, progress=bar.update, frames=args.frames,
                                    size=(args.height, args.width), data=args.data))
    return 0


@dataclass
class ApplyArgs:
    video: str  # the video to refine
    out: str  # the output video (.mp4, .mkv, .webm or .gif)
    model: str = DEFAULT_MODEL  # a refiner folder or a model folder
    steps: int | None = None  # Euler steps (default: the refiner's)
    seed: int = 0
    size: str | None = None  # resize frames to N or HxW first
    threads: int | None = None  # CPU threads for torch
    overwrite: bool = False  # replace --out if it exists

    def __post_init__(self):
        check_range(self, 1, 10_000, "steps")
        check_range(self, 1, None, "threads")
        check_range(self, 0, 2**63 - 1, "seed")


def run_apply(args: ApplyArgs) -> int:
    media_input(args.video, "--video")
    check_output_file(args.out, args.overwrite, inputs=(args.video, args.model))
    if args.threads:
        torch.set_num_threads(args.threads)
    print_json(refine_file(args.video, args.out, model=args.model, steps=args.steps, seed=args.seed,
                           size=size(args.size)))
    return 0


def refine_file(video: str | Path, out: str | Path, model: str | Path = DEFAULT_MODEL, steps: int | None = None,
                seed: int = 0, size: tuple[int, int] | None = None) -> dict:
    """Refine every frame of a video file and write the result (mp4, or any format write_video knows)."""
    refiner = load_refiner(model)
    m = refiner.config.multiple
    if size is not None and (size[0] % m or size[1] % m):
        raise UsageError(f"--size {size[0]}x{size[1]}: the refiner needs height and width multiples of {m}")
    frames = read_video(video, size=size)  # (T, H, W, 3)
    _, h, w, _ = frames.shape
    if h % m or w % m:
        raise UsageError(f"--video {video}: frames of {h}x{w}; the refiner needs height and width multiples of {m} "
                         f"(resize with --size)")
    t0 = time.perf_counter()
    refined = refine(refiner, frames[None], steps, seed=seed)[0]  # (T, H, W, 3)
    seconds = time.perf_counter() - t0
    info = probe_video(video)
    sound, note = carried_sound(video, out, len(refined), info.fps or 8)
    write_video(out, refined, fps=info.fps or 8, audio=sound)
    result = {"out": str(out), "frames": len(refined), "height": h, "width": w,
              "steps": steps or refiner.config.steps, "seconds": round(seconds, 3)}
    if note:
        result["sound"] = note
    if (info.height, info.width) != (h, w):
        same = info.height * w == info.width * h
        result["resized"] = (f"{info.height}x{info.width} -> {h}x{w}" +
                             ("" if same else " (scaled to cover, the centre kept: the aspects differ)"))
    return result


COMMANDS = {
    "fit": Command(RefinerFitConfig, run_fit_cmd, "train a refiner from a YAML config (a rerun resumes it)",
                   "Make (decoded, clean) pairs through the config's video tokenizer (cached in OUT/pairs.safetensors), "
                   "then train the refiner (configs/refiner/*.yaml). The run folder gets checkpoints/last.ckpt (a rerun "
                   "resumes exactly), metrics.jsonl and model/ (safetensors, EMA weights). Flags override the config.",
                   config="refiner fit"),
    "eval": Command(EvalArgs, run_eval, "PSNR, SSIM, probe agreement and speed on held-out clips, as one JSON object",
                    "Encode and decode held-out Shapes clips (seeds >= 1,000,000) with --tokenizer, refine them, and "
                    "print one JSON object: psnr_raw/psnr_refined and ssim_raw/ssim_refined against the clean clips, "
                    "probe_agreement (refined vs unrefined readings, overall and per attribute), seconds_per_clip at "
                    "the torch thread count given, steps and network evaluations."),
    "apply": Command(ApplyArgs, run_apply, "refine a video file",
                     "Refine every frame of a video (any file the media layer reads; height and width multiples of "
                     "the refiner's, 4 for the shipped one) and write --out. Prints a JSON summary."),
}
