"""The `videolm` command line: a thin layer of argument parsing over the library.

Exit codes: 0 success, 2 usage errors (bad flags, missing or wrong inputs), 1 runtime errors,
130 interrupted. Every error is one line on stderr naming the problem; ``--debug`` (anywhere on
the line) shows the traceback too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from videolm.core.errors import ConfigError, UsageError, VideolmError
from videolm.cli import dit as dit_cli, refiner as refiner_cmd
from videolm.cli import generate as generate_cmd
from videolm.cli.args import (BATCH, COUNT, MAX_FRAMES, MINUTES, SEED, STEPS, THREADS, input_file,
                                    input_folder, integer, progress, real, size)


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UsageError instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see --help)")


# ------------------------------------------------------------------------------------------ data


def _data_shapes(args) -> int:
    from videolm.core.outputs import check_output_dir
    from videolm.core.config import load_config
    from videolm.data.shapes import BACKGROUNDS, ShapesConfig
    from videolm.data.shapes_data import ShapesDataConfig, write_shapes

    base = load_config(args.config, expect_entry="data shapes")[1] if args.config else ShapesDataConfig()
    world = dict(vars(base.world))
    if args.size:
        world["height"], world["width"] = args.size
    for key in ("frames", "fps"):
        if getattr(args, key) is not None:
            world[key] = getattr(args, key)
    if args.background:
        names = args.background.split(",")
        world["backgrounds"] = list(BACKGROUNDS) if names == ["all"] else names
    cfg = ShapesDataConfig(
        num=args.num if args.num is not None else base.num,
        seed=args.seed if args.seed is not None else base.seed,
        split=args.split or base.split,
        world=ShapesConfig(**world),
    )
    check_output_dir(args.out, args.overwrite)
    with progress(cfg.num, "shapes") as bar:
        out = write_shapes(args.out, cfg, overwrite=args.overwrite, progress=bar.update)
    print(f"wrote {cfg.num} clips (seeds {cfg.seeds.start}..{cfg.seeds.stop - 1}) to {out}/ with manifest.jsonl")
    return 0


def _data_folder(args) -> int:
    from videolm.core.config import load_config
    from videolm.data.folder import FolderConfig

    cfg = load_config(args.config, expect_entry="data folder")[1] if args.config else FolderConfig(root="")
    cfg.root = args.root or cfg.root
    if not cfg.root:
        raise UsageError("videolm data folder: give the folder (ROOT) or a --config that names it")
    input_folder(cfg.root, "ROOT")
    for key in ("frames", "fps", "fit", "stride"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.size:
        cfg.height, cfg.width = args.size
    print_json(_checked(cfg, args.config).dataset().summary())
    return 0


def _data_examples(args) -> int:
    from videolm.data.examples import write_examples

    out = write_examples(args.out, seed=args.seed, overwrite=args.overwrite)
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"wrote {', '.join(names)} to {out}/")
    return 0


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="make or index datasets", description="Make or index datasets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="{shapes,folder,examples}", required=True)

    p = data_sub.add_parser(
        "shapes",
        help="write a Shapes dataset (video, structure video, audio, manifest.jsonl)",
        description="Write N seeded Shapes clips to --out: lossless video/*.mkv, structure/*.mkv, "
        "audio/*.wav, manifest.jsonl (one JSON per clip) and config.yaml. The same seed gives "
        "byte-identical files. Flags override --config.",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--num", type=COUNT, help="number of clips (default 64)")
    p.add_argument("--seed", type=SEED, help="first seed; clip i uses seed+i (default 0)")
    p.add_argument("--split", choices=["train", "eval"], help="eval offsets seeds by 1,000,000 (default train)")
    p.add_argument("--size", type=size, help="frame size N or HxW, multiples of 8 (default 64)")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), help="frames per clip, 1+4k (default 17)")
    p.add_argument("--fps", type=integer(1, 240), help="frames per second (default 8)")
    p.add_argument("--background", help="background(s), comma-separated, or 'all' (default black)")
    p.add_argument("--config", help="a YAML config with 'entry: data shapes'")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=_data_shapes)

    p = data_sub.add_parser(
        "folder",
        help="index a folder of your videos as fixed-length clips and print a JSON summary",
        description="Index every video under ROOT (mp4 webm mkv avi mov gif) as clips of --frames frames at --fps, "
        "resized to --size. Captions come from NAME.txt or captions.jsonl, audio from the file's track or NAME.wav. "
        "The index is cached in videolm's cache folder (VIDEOLM_CACHE, or ~/.cache/videolm) so reopening is "
        "instant; ROOT itself is only read. Unreadable files are skipped with one warning each.",
    )
    p.add_argument("root", nargs="?", metavar="ROOT", help="the folder (or give it in --config)")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), help="frames per clip (default 17)")
    p.add_argument("--fps", type=real(0, 240, low_open=True), help="frame rate clips are resampled to (default 8)")
    p.add_argument("--size", type=size, help="clip size N or HxW (default 64)")
    p.add_argument("--fit", choices=["crop", "pad", "stretch"], help="aspect rule (default crop: cover, then centre-crop)")
    p.add_argument("--stride", type=integer(1, MAX_FRAMES), help="frames between clip starts (default: --frames, no overlap)")
    p.add_argument("--config", help="a YAML config with 'entry: data folder'")
    p.set_defaults(run=_data_folder)

    p = data_sub.add_parser(
        "examples",
        help="write example inputs for every task (the files the README's commands use)",
        description="Write a held-out Shapes scene as the inputs of every task: clip.mp4 (17 frames, 64x64), "
        "first.png (its first frame), mask.png (white: the region to generate), start.mp4 and end.mp4 (the start "
        "and the end of one scene), structure.mkv (its silhouettes, for stylize), sound.wav (its soundtrack) and "
        "caption.txt.",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--seed", type=integer(0, 999_999), default=0, help="which held-out scene (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=_data_examples)


def _checked(cfg, config_path):
    """``cfg`` after flags changed it, through the same checks the config file passed."""
    from videolm.core.schema import revalidate

    try:
        return revalidate(cfg)
    except ConfigError as e:
        where = f"{config_path} with the flags given" if config_path else "the flags given"
        raise ConfigError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------- tokenizer


def fit_config(args, entry: str):
    """The config of a ``fit`` command: the YAML, then the budget flags and ``--out``, checked
    again; its run folder checked (new, empty, or this command's to resume) before any work."""
    from videolm.core.outputs import check_run_dir
    from videolm.core.config import load_config

    cfg = load_config(args.config, expect_entry=entry)[1]
    train = cfg.train
    for flag in ("steps", "max_minutes", "threads", "batch_size"):
        if getattr(args, flag, None) is not None:
            setattr(train, flag, getattr(args, flag))
    if args.out:
        cfg.out = args.out
    cfg = _checked(cfg, args.config)
    check_run_dir(cfg.out, entry)
    return cfg


def _tokenizer_fit(args) -> int:
    from videolm.train.tokenizer import run_fit

    if args.data and args.data != "shapes":
        input_folder(args.data, "--data")
    cfg = fit_config(args, "tokenizer fit")
    if args.data:
        cfg.data.source = args.data
    model_dir = run_fit(cfg)
    print(f"trained {cfg.modality} tokenizer saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


def _tokenizer_eval(args) -> int:
    from videolm.evaluation.tokenizer import evaluate_tokenizer

    if args.data != "shapes":
        input_folder(args.data, "--data")
    print_json(evaluate_tokenizer(args.model, data=args.data, num=args.num, seed=args.seed,
                                  batch_size=args.batch_size, modality=args.modality))
    return 0


def _tokenizer_bundle(args) -> int:
    from videolm.core.outputs import check_output_dir
    from videolm.train.tokenizer import build_bundle

    for flag in ("video", "audio"):
        if getattr(args, flag):
            input_folder(getattr(args, flag), f"--{flag}")
    if args.data != "shapes":
        input_folder(args.data, "--data")
    out = Path(args.out)
    if not out.is_dir() or not any(out.iterdir()):
        check_output_dir(out)  # a new model folder
    elif out.is_symlink() or not any((out / part).exists() for part in ("vocab.json", "video_tokenizer", "audio_tokenizer")):
        raise UsageError(f"--out {out}: holds files but is not a model folder (no vocab.json or tokenizers); "
                         "give a new folder or a model folder to fill in place")
    print_json(build_bundle(args.out, args.video, args.audio, data=args.data, captions=args.captions,
                            text_vocab=args.text_vocab))
    return 0


def _fit_args(p, entry: str) -> None:
    """The flags every `fit` command shares: its config, run folder and budget."""
    p.add_argument("--config", required=True, help=f"a YAML config with 'entry: {entry}'")
    p.add_argument("--out", help="run folder (default: the config's out); a rerun resumes it")
    p.add_argument("--steps", type=STEPS, help="training steps")
    p.add_argument("--max-minutes", type=MINUTES, help="wall-clock budget in minutes")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch (per process)")


def _add_tokenizer(sub) -> None:
    tok = sub.add_parser("tokenizer", help="train and evaluate the video and audio tokenizers",
                         description="Train and evaluate the video and audio tokenizers.")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="{fit,eval,bundle}", required=True)

    p = tok_sub.add_parser(
        "fit", help="train a tokenizer from a YAML config (resumes a stopped run)",
        description="Train the tokenizer a config describes (configs/tokenizer/*.yaml). The run folder gets "
        "checkpoints/last.ckpt (a rerun resumes from it exactly), samples/*.png, metrics.jsonl and model/ "
        "(safetensors). Flags override the config.",
    )
    _fit_args(p, "tokenizer fit")
    p.add_argument("--data", help="'shapes' or a folder of videos (default: the config's)")
    p.add_argument("--batch-size", type=BATCH, help="clips per step")
    p.set_defaults(run=_tokenizer_fit)

    p = tok_sub.add_parser(
        "eval", help="reconstruction quality on held-out clips, as one JSON object",
        description="Encode and decode held-out clips (Shapes seeds >= 1,000,000, or a folder's clips) and print "
        "one JSON object: video: psnr, ssim, codebook_usage, perplexity, clips_per_s; audio: stft_distance, "
        "frequency_agreement (dominant frequency within 3%), codebook_usage, perplexity, clips_per_s.",
    )
    p.add_argument("--model", default="shapes-64", help="a tokenizer folder, a model bundle, or a shipped name (default shapes-64)")
    p.add_argument("--modality", choices=["video", "audio"], help="which tokenizer of a bundle (default video)")
    p.add_argument("--data", default="shapes", help="'shapes' (held-out seeds) or a folder of videos")
    p.add_argument("--num", type=COUNT, default=256, help="clips (default 256)")
    p.add_argument("--seed", type=SEED, default=0, help="first held-out seed offset / first folder clip")
    p.add_argument("--batch-size", type=BATCH, default=8)
    p.set_defaults(run=_tokenizer_eval)

    p = tok_sub.add_parser(
        "bundle", help="assemble a model folder: tokenizers, a text tokenizer and the vocabulary",
        description="Copy trained video/audio tokenizers into OUT (stored as fp16), train the sentencepiece text "
        "tokenizer on the data's captions (byte fallback: any Unicode prompt encodes) into OUT/text.model, and "
        "write the unified vocabulary OUT/vocab.json. Tokenizers already in OUT are kept unless replaced.",
    )
    p.add_argument("--out", required=True, help="the model folder to fill (e.g. models/shapes-64)")
    p.add_argument("--video", help="a trained video tokenizer folder (e.g. RUN/model)")
    p.add_argument("--audio", help="a trained audio tokenizer folder")
    p.add_argument("--data", default="shapes", help="captions from 'shapes' (all backgrounds) or a folder")
    p.add_argument("--captions", type=COUNT, default=4000, help="how many captions to train on")
    p.add_argument("--text-vocab", type=integer(16, 1_000_000), default=512, help="text vocabulary size")
    p.set_defaults(run=_tokenizer_bundle)


# -------------------------------------------------------------------------------------- tokenize


def _tokenize(args) -> int:
    from videolm.core.outputs import check_output_dir
    from videolm.data.sources import ClipSource
    from videolm.train.tokenize import write_token_shards

    if args.data != "shapes":
        input_folder(args.data, "--data")
    check_output_dir(args.out, args.overwrite)
    height, width = args.size or (64, 64)
    source = ClipSource(data=args.data, num=args.num, seed=args.seed, split=args.split, frames=args.frames,
                        height=height, width=width)
    with progress(args.num, "tokenize") as bar:
        summary = write_token_shards(args.out, source, model=args.model, batch_size=args.batch_size,
                                     shard_size=args.shard_size, overwrite=args.overwrite, progress=bar.update,
                                     device=args.device)
    print_json(summary)
    return 0


def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize", help="encode clips once into token shards for LM training",
        description="Encode clips with the frozen tokenizers of a model folder (caption -> text ids, video -> "
        "codes (t, n), audio -> codes (frames, levels), Shapes structure video -> codes) into safetensors shards "
        "with index.json and vocab.json in --out, and print a JSON summary. `videolm lm fit` trains on them.",
    )
    p.add_argument("--data", default="shapes", help="'shapes' (seeded clips) or a folder of videos (default shapes)")
    p.add_argument("--num", type=COUNT, required=True, help="number of clips")
    p.add_argument("--seed", type=SEED, default=0, help="Shapes: first seed (clip i uses seed+i); folder: first clip")
    p.add_argument("--split", choices=["train", "eval"], default="train", help="Shapes split (default train)")
    p.add_argument("--size", type=size, help="frame size N or HxW, multiples of 8 (default 64)")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), default=17, help="frames per clip, 1+4k (default 17)")
    p.add_argument("--model", default="shapes-64", help="a model folder or a shipped name (default shapes-64)")
    p.add_argument("--batch-size", type=BATCH, default=16, help="clips encoded at once (default 16)")
    p.add_argument("--device", default="cpu",
                   help="where the tokenizers run: cpu, cuda, cuda:N, or auto (a GPU if there is one; default cpu)")
    p.add_argument("--shard-size", type=COUNT, default=1024, help="clips per shard file (default 1024)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=_tokenize)


# -------------------------------------------------------------------------------------------- lm


def _lm_fit(args) -> int:
    from videolm.train.lm import run_fit

    if args.shards:
        input_folder(args.shards, "--shards")
    cfg = fit_config(args, "lm fit")
    if args.shards:
        cfg.data.shards, cfg.data.source = args.shards, None
    model_dir = run_fit(cfg)
    if model_dir is not None:
        print(f"trained LM saved to {model_dir}/ (run folder {cfg.out}/)")
    return 0


def _lm_bundle(args) -> int:
    from videolm.train.lm import bundle_lm

    input_folder(args.lm, "--lm")
    print_json(bundle_lm(args.lm, args.out, args.dtype))
    return 0


def _add_lm(sub) -> None:
    lm = sub.add_parser("lm", help="train the prefix language model", description="Train the prefix language model.")
    lm_sub = lm.add_subparsers(dest="lm_command", metavar="{fit,bundle}", required=True)

    p = lm_sub.add_parser(
        "fit", help="train the LM on a task mixture from a YAML config (resumes a stopped run)",
        description="Train the LM a config describes (configs/lm/*.yaml) on token shards or clips tokenized on the "
        "fly. The run folder gets checkpoints/last.ckpt (a rerun resumes from it exactly), metrics.jsonl (loss per "
        "task, tokens/s), samples/ and model/ (safetensors + vocab.json). Flags override the config.",
    )
    _fit_args(p, "lm fit")
    p.add_argument("--shards", help="token shards folder (default: the config's data)")
    p.set_defaults(run=_lm_fit)

    p = lm_sub.add_parser(
        "bundle", help="put a trained LM into a model folder, for `videolm generate --model`",
        description="Copy a trained LM (RUN/model) into OUT/lm of a model folder that holds the tokenizers its "
        "shards came from (weights stored as float16 by default), with its vocabulary (which knows its tasks).",
    )
    p.add_argument("--lm", required=True, help="the trained LM folder (RUN/model)")
    p.add_argument("--out", required=True, help="the model folder (e.g. models/shapes-64)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.set_defaults(run=_lm_bundle)


# ----------------------------------------------------------------------------------------- media


def _media_info(args) -> int:
    from dataclasses import asdict

    from videolm.data.media import probe_video

    for path in args.files:
        input_file(path, "FILE")
    for path in args.files:
        print_json({"file": path, **asdict(probe_video(path))})
    return 0


def _media_convert(args) -> int:
    from videolm.core.errors import MediaError
    from videolm.core.outputs import check_output_file
    from videolm.data.media import read_audio, read_video, write_video

    input_file(args.input, "INPUT")
    check_output_file(args.output, args.overwrite, inputs=(args.input,), flag="OUTPUT")
    frames = read_video(args.input, fps=args.fps, size=args.size, fit=args.fit)  # (T, H, W, 3)
    audio = None
    if not args.output.lower().endswith(".gif"):
        try:
            audio = read_audio(args.input, sample_rate=args.sample_rate)
        except MediaError as e:
            if "no audio" not in str(e):
                raise
    fps = args.fps or _native_fps(args.input)
    write_video(args.output, frames, fps=fps, audio=audio, sample_rate=args.sample_rate, quality=args.quality)
    print(f"wrote {len(frames)} frames of {frames.shape[1]}x{frames.shape[2]} at {fps:g} fps to {args.output}")
    return 0


def _native_fps(path) -> float:
    from videolm.data.media import probe_video

    return probe_video(path).fps


def _add_media(sub) -> None:
    media = sub.add_parser("media", help="inspect and convert media files", description="Inspect and convert media files.")
    media_sub = media.add_subparsers(dest="media_command", metavar="{info,convert}", required=True)

    p = media_sub.add_parser("info", help="print what a video file holds, as JSON lines",
                             description="Print fps, frames, duration, size and audio presence of each video file.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(run=_media_info)

    p = media_sub.add_parser(
        "convert",
        help="re-encode a video (e.g. a dataset's lossless .mkv to .mp4 or .gif)",
        description="Read INPUT (any video ffmpeg reads), optionally resample and resize it, and write OUTPUT "
        "(.mp4, .mov, .mkv, .webm or .gif by extension). The audio track is carried over where the output can hold it.",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--fps", type=real(0, 240, low_open=True), help="resample to this frame rate (default: keep)")
    p.add_argument("--size", type=size, help="resize to N or HxW (default: keep)")
    p.add_argument("--fit", choices=["crop", "pad", "stretch"], default="crop", help="aspect rule when resizing")
    p.add_argument("--quality", choices=["default", "high", "lossless"], default="default",
                   help="default: H.264 yuv420p; high: yuv444p; lossless: FFV1 (.mkv) or x264rgb")
    p.add_argument("--sample-rate", type=integer(1000, 384_000), default=16000, help="audio sample rate (default 16000)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(run=_media_convert)


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="videolm",
        description="videolm: an autoregressive, token-based video language model.",
    )
    try:
        parser.add_argument("--version", action="version", version=f"videolm {version('videolm')}")
    except PackageNotFoundError:
        pass
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_data(sub)
    _add_tokenizer(sub)
    _add_tokenize(sub)
    _add_lm(sub)
    generate_cmd.add_generate(sub)
    generate_cmd.add_tasks(sub)
    generate_cmd.add_eval(sub)
    generate_cmd.add_probe(sub)
    generate_cmd.add_finetune(sub)
    refiner_cmd.add_refiner(sub)
    dit_cli.add_dit(sub)
    generate_cmd.add_compare(sub)
    _add_media(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"videolm: warning: {_one_line(message)}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # anywhere on the line
    if not debug:
        warnings.formatwarning = _one_line_warning
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return 2
        return args.run(args)
    except VideolmError as e:
        if debug:
            traceback.print_exc()
        text = _one_line(_original(str(e)))
        print(f"videolm: error: {text if len(text) <= 600 else text[:597] + '...'}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("videolm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`videolm tasks --words | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the machine failed us while working: a full disk, a vanished folder
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"videolm: error: {where}{e.strerror or _first_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("videolm: error: out of memory (try a smaller --batch-size or --num-samples)", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"videolm: error: unexpected {type(e).__name__}: {_first_line(e)} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


def _original(text: str) -> str:
    """The message of an error raised in a DataLoader worker, which torch wraps in its traceback
    ("Caught MediaError in DataLoader worker process 0. Original Traceback ... MediaError: msg")."""
    if not text.startswith("Caught ") or "Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters: never a library's
    many-line report."""
    lines = str(e).strip().splitlines()
    text = _one_line(lines[0]) if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def print_json(obj) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
