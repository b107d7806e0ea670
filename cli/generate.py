"""`videolm generate`: a task run from a model folder, each sample written as soon as it is made."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from videolm.cli.args import Command, media_input, progress
from videolm.core.config import check_range, resolve
from videolm.core.errors import UsageError, VideolmError
from videolm.core.limits import MAX_PROMPT_CHARS
from videolm.core.models import DEFAULT_MODEL
from videolm.core.outputs import StreamingOutput, write_json_atomic
from videolm.data.media import write_audio, write_image, write_video
from videolm.tasks.pipeline import GenerateConfig, Pipeline


@dataclass
class GenerateArgs(GenerateConfig):
    out: str = field(kw_only=True)  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    model: str = DEFAULT_MODEL  # a model folder or a shipped name
    prompt_rewriter: str | None = None  # rewrite the prompt with your own function, MODULE:FUNCTION (str -> str;
    #   e.g. a local LLM), before the model's own table reads it
    save_frames: bool = False  # also write the frames as sample_NNN.npy (T, H, W, 3)
    overwrite: bool = False  # replace an earlier output of videolm in --out
    threads: int | None = None  # CPU threads for torch (default: torch's own, about one per core)

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise UsageError("--out is required")
        check_range(self, 1, None, "threads")


def _inputs_exist(args: GenerateArgs) -> None:
    """Every input file looked into before the model loads."""
    for path in args.video:
        media_input(path, "--video")
    if args.image:
        media_input(args.image, "--image")
    if args.mask:
        media_input(args.mask, "--mask")
    if args.audio:
        media_input(args.audio, "--audio", kind="audio")
    if args.prompt is not None and len(args.prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"--prompt: {len(args.prompt):,} characters; prompts are at most {MAX_PROMPT_CHARS:,}")


def _rewriter(path: str | None):
    """The user's prompt rewriter named by import path ``module:function``."""
    if path is None:
        return None
    if ":" not in path:
        raise UsageError(f"--prompt-rewriter {path}: give MODULE:FUNCTION (a module on the Python path)")
    sys.path.insert(0, str(Path.cwd()))  # a module beside the user, as `python -m` would find it
    try:
        function = resolve(path)
    except VideolmError as e:
        raise UsageError(f"--prompt-rewriter {path}: {e}") from None
    if not callable(function):
        raise UsageError(f"--prompt-rewriter {path}: not a function")
    return function


def run(args: GenerateArgs) -> int:
    out = StreamingOutput(args.out, args.overwrite, command="generate",  # checked before anything loads
                          inputs=[*args.video, args.image, args.mask, args.audio, args.model])
    _inputs_exist(args)
    rewrite = _rewriter(args.prompt_rewriter)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    pipe.task(args.task)  # an unknown task fails before any work
    settings = {f.name: getattr(args, f.name) for f in fields(GenerateConfig)}
    request = pipe.prepare(**settings, rewrite=rewrite)
    manifest = {"model": str(pipe.folder), "samples": []}
    try:
        folder = out.open()
        (path,) = out.reserve("manifest.json")
        write_json_atomic(path, manifest)
        with progress(None, f"generate {args.task}", unit="tok") as bar:
            for first in range(0, args.num_samples, args.batch_size):
                count = min(args.batch_size, args.num_samples - first)
                for i, result in enumerate(pipe.draw(request, first, count, progress=bar.update), first):
                    manifest["samples"].append(_write(out, i, result, args))
                    write_json_atomic(path, manifest)  # after each sample: a stopped run keeps every finished one
    except BaseException:
        out.close(ok=False, kept=bool(manifest["samples"]))  # nothing made: an overwritten output comes back
        raise
    out.close(ok=True)
    plan = request.plan
    what = "image(s)" if args.task == "t2i" else f"sample(s) of {plan.length or plan.frames} frames"
    print(f"wrote {args.num_samples} {what} of {args.task} at {plan.name} to {folder}/")
    return 0


def _write(out: StreamingOutput, index: int, result, args: GenerateArgs) -> dict:
    """One sample's files, each written whole and listed in the output's marker first."""
    stem = f"sample_{index:03d}"
    entry = {"index": index, "task": result.task, "prompt": args.prompt, **result.extra, "seed": result.seed,
             "video": None, "image": None, "frames": None, "audio": None, "num_frames": None,
             "seconds": round(result.seconds, 3)}
    if result.audio is not None:
        (wav,) = out.reserve(f"{stem}.wav")
        write_audio(wav, result.audio, result.sample_rate)
        entry["audio"] = wav.name
    if result.video is not None:
        if len(result.video) == 1 and result.audio is None:  # an image (t2i): a PNG, not a one-frame video
            (png,) = out.reserve(f"{stem}.png")
            write_image(png, result.video[0])
            entry["image"] = png.name
        else:
            (mp4,) = out.reserve(f"{stem}.mp4")
            write_video(mp4, result.video, fps=result.fps, audio=result.audio, sample_rate=result.sample_rate)
            entry["video"] = mp4.name
        entry["num_frames"] = int(len(result.video))
        if args.save_frames:
            (npy,) = out.reserve(f"{stem}.npy")
            save_npy_atomic(npy, np.ascontiguousarray(result.video, dtype=np.uint8))
            entry["frames"] = npy.name
    return entry


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


COMMAND = Command(
    GenerateArgs, run, "generate video (or audio) for a task from a trained model",
    "Run a task of a model folder (default: the shipped shapes-64) and write sample_000.mp4 ... (sample_000.png "
    "for an image, a .wav beside it when there is sound), sample_NNN.npy frames with --save-frames, and "
    "manifest.json (model, and per sample: index, task, prompt as given and as the model read it, seed, video, "
    "image, frames, audio, seconds, size, notes). Samples are drawn --batch-size at a time, each written as soon "
    "as its batch is done and listed in the manifest at once, so a stopped run keeps what it finished. Inputs are "
    "files: images (PNG/JPEG), any video the media layer reads, wav, and a mask PNG (white = generate). --size and "
    "--frames choose the clip; an input of another size is fitted (--fit) to the trained size nearest its aspect, "
    "and the run says what it chose and why. `videolm tasks` lists the tasks and what each needs.")
