"""`videolm refiner fit | eval | apply`: argument parsing over `videolm.train.refiner`.

Kept apart from the runs module so that building the parser imports nothing heavy (the runs
module imports Lightning, which takes seconds); each command imports it when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from videolm.core.errors import UsageError
from videolm.diffusion.refiner import load_refiner, refine
from videolm.cli.args import (BATCH, COUNT, SEED, THREADS, input_folder, integer, media_input, progress, real,
                                    size)
from videolm.core.models import DEFAULT_MODEL


def _threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise UsageError(f"--threads {n} must be >= 1")
        import torch

        torch.set_num_threads(n)


def run_fit_cmd(args) -> int:
    from videolm.train.refiner import run_fit
    from videolm.cli.main import fit_config

    if args.data and args.data != "shapes":
        input_folder(args.data, "--data")
    cfg = fit_config(args, "refiner fit")
    if args.data:
        cfg.data.source = args.data
    with progress(cfg.data.num, "pairs") as bar:
        model_dir = run_fit(cfg, progress=bar.update)
    print(f"trained refiner saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


def run_eval_cmd(args) -> int:
    from videolm.evaluation.refiner import evaluate_refiner
    from videolm.cli.main import print_json

    _threads(args.threads)
    with progress(args.num, "refine") as bar:
        print_json(evaluate_refiner(args.model, num=args.num, seed=args.seed, steps=args.steps,
                                    noise_scale=args.noise_scale, gate_tau=args.gate_tau,
                                    tokenizer=args.tokenizer, batch_size=args.batch_size, progress=bar.update))
    return 0


def run_apply_cmd(args) -> int:
    from videolm.core.outputs import check_output_file
    from videolm.cli.main import print_json

    media_input(args.video, "--video")
    check_output_file(args.out, args.overwrite, inputs=(args.video,))
    _threads(args.threads)
    print_json(refine_file(args.video, args.out, model=args.model, steps=args.steps, seed=args.seed, size=args.size))
    return 0


def refine_file(video: str | Path, out: str | Path, model: str | Path = "shapes-64", steps: int | None = None,
                seed: int = 0, size: tuple[int, int] | None = None) -> dict:
    """Refine every frame of a video file and write the result (mp4, or any format write_video knows)."""
    from videolm.data.media import probe_video, read_video, write_video

    refiner = load_refiner(model)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps {steps} must be >= 1")
    frames = read_video(video, size=size)  # (T, H, W, 3)
    _, h, w, _ = frames.shape
    m = refiner.config.multiple
    if h % m or w % m:
        raise UsageError(f"--video {video}: frames of {h}x{w}; the refiner needs height and width multiples of {m} "
                         f"(resize with --size)")
    t0 = time.perf_counter()
    refined = refine(refiner, frames[None], steps, seed=seed)[0]  # (T, H, W, 3)
    seconds = time.perf_counter() - t0
    write_video(out, refined, fps=probe_video(video).fps or 8)
    return {"video": str(out), "frames": len(refined), "height": h, "width": w,
            "steps": steps or refiner.config.steps, "seconds": round(seconds, 3)}


def add_refiner(sub) -> None:
    from videolm.cli.main import _fit_args

    ref = sub.add_parser("refiner", help="train, evaluate and apply the diffusion refiner",
                         description="Train, evaluate and apply the diffusion refiner, which cleans decoded frames.")
    ref_sub = ref.add_subparsers(dest="refiner_command", metavar="{fit,eval,apply}", required=True)

    p = ref_sub.add_parser(
        "fit", help="train a refiner from a YAML config (resumes a stopped run)",
        description="Make (decoded, clean) pairs through the config's video tokenizer (cached in OUT/pairs.safetensors), "
        "then train the refiner (configs/refiner/*.yaml). The run folder gets checkpoints/last.ckpt (a rerun resumes), "
        "metrics.jsonl and model/ (safetensors, EMA weights). Flags override the config.",
    )
    _fit_args(p, "refiner fit")
    p.add_argument("--data", help="'shapes' or a folder of videos (default: the config's)")
    p.set_defaults(run=run_fit_cmd)

    p = ref_sub.add_parser(
        "eval", help="PSNR, SSIM, probe agreement and speed on held-out clips, as one JSON object",
        description="Encode and decode held-out Shapes clips (seeds >= 1,000,000) with --tokenizer, refine them, and "
        "print one JSON object: psnr_raw/psnr_refined and ssim_raw/ssim_refined against the clean clips, "
        "probe_agreement (refined vs unrefined readings, overall and per attribute), seconds_per_clip of the "
        "refiner at the torch thread count given, steps and network evaluations.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"a refiner folder, a model folder or a shipped name "
                   f"(default {DEFAULT_MODEL})")
    p.add_argument("--tokenizer", default=DEFAULT_MODEL, help="the video tokenizer whose decodes are refined")
    p.add_argument("--num", type=COUNT, default=256, help="held-out clips (default 256)")
    p.add_argument("--seed", type=SEED, default=0, help="offset among the held-out seeds, and the noise seed")
    p.add_argument("--steps", type=integer(1, 10_000), help="Euler steps (default: the refiner's)")
    p.add_argument("--noise-scale", type=real(0, 1), help="sampling temperature in [0, 1] (default: the refiner's)")
    p.add_argument("--gate-tau", type=real(0, 255), help="uncertainty gate threshold in levels of 255; 0 turns the "
                   "gate off (default: the refiner's)")
    p.add_argument("--batch-size", type=BATCH, default=8, help="clips refined at once (default 8)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch")
    p.set_defaults(run=run_eval_cmd)

    p = ref_sub.add_parser(
        "apply", help="refine a video file",
        description="Refine every frame of a video (any file the media layer reads; height and width multiples of "
        "the refiner's, 4 for the shipped one) and write --out (.mp4, .mkv, .webm or .gif). Prints a JSON summary.",
    )
    p.add_argument("--video", required=True, help="the video to refine")
    p.add_argument("--out", required=True, help="the output video")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"a refiner folder or a model folder (default {DEFAULT_MODEL})")
    p.add_argument("--steps", type=integer(1, 10_000), help="Euler steps (default: the refiner's)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--size", type=size, help="resize frames to N or HxW first")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run_apply_cmd)
