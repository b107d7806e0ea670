"""`videolm generate`, `tasks`, `eval` and `probe fit`: thin layers over `videolm.tasks.pipeline`,
`videolm.evaluation.evaluate` and `videolm.evaluation.probe`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from videolm.core.errors import UsageError, VideolmError
from videolm.tasks.base import BUILTIN, task_class
from videolm.cli.args import (BATCH, COUNT, GUIDANCE, MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SAMPLES, SEED, STEPS,
                                    TEMPERATURE, THREADS, TOP_P, integer, media_input, progress, real)
from videolm.core.models import AR_CFG_SCALE, DEFAULT_MODEL


def add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate video (or audio) for a task from a trained model",
        description="Run a task of a model folder (default: the shipped shapes-64) and write sample_000.mp4 ... "
        "(sample_000.png for an image, a .wav beside it when there is sound), sample_NNN.npy frames with "
        "--save-frames, and manifest.json (model, and per sample: index, task, prompt as given and as the model read "
        "it, seed, video, image, frames, audio, seconds). Each sample is written as soon as it is done and listed in "
        "the manifest at once, so a stopped run keeps what it finished. Inputs are files: images (PNG/JPEG), any "
        "video the media layer reads, wav, and a mask PNG (white = generate); one of another size is cropped and "
        "resized to the model's, and the run says so. `videolm tasks` lists the tasks and what each needs.",
    )
    p.add_argument("--task", required=True, help="a task name (see `videolm tasks`)")
    p.add_argument("--prompt", help="the caption, for tasks with text (read in the model's words: see --strict-prompt)")
    p.add_argument("--image", help="an image file (i2v)")
    p.add_argument("--video", action="append", help="a video file; interpolate takes two (start, end)")
    p.add_argument("--audio", help="an audio file (a2v)")
    p.add_argument("--mask", help="a mask image of the clip's shape, white = the region to generate (inpaint, outpaint)")
    p.add_argument("--num-samples", type=integer(1, MAX_SAMPLES), default=1,
                   help=f"samples to draw, written one by one (default 1, at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the first sample; sample i uses seed + i")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), help="video length; beyond the clip length, chains `extend`")
    p.add_argument("--cfg-scale", type=GUIDANCE,
                   help=f"classifier-free guidance scale for tasks with text (1 = none; default {AR_CFG_SCALE:g}, "
                        "or the DiT's own)")
    p.add_argument("--temperature", type=TEMPERATURE, default=1.0, help="sampling temperature (0 = greedy; default 1)")
    p.add_argument("--top-k", type=integer(1, 2**31 - 1), help="sample among the k most likely ids")
    p.add_argument("--top-p", type=TOP_P, help="sample from the smallest set of ids holding this probability")
    p.add_argument("--with-audio", action="store_true", help="add a soundtrack made by v2a (muxed into the mp4)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="clean the decoded frames with the model's diffusion refiner (default: on when it has one)")
    p.add_argument("--backend", choices=["ar", "dit"], default="ar",
                   help="ar: the prefix LM (default); dit: the DiT baseline (t2v, extend)")
    p.add_argument("--steps", type=integer(1, 10_000), help="sampling steps of the DiT baseline (default: its own)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"a model folder or a shipped name (default {DEFAULT_MODEL})")
    p.add_argument("--strict-prompt", action="store_true",
                   help="stop with an error when the prompt has words the model does not know (default: a warning)")
    p.add_argument("--prompt-rewriter", metavar="MODULE:FUNCTION",
                   help="rewrite the prompt with your own function (str -> str; e.g. a local LLM) before the "
                        "model's own table reads it")
    p.add_argument("--save-frames", action="store_true", help="also write the frames as sample_NNN.npy (T, H, W, 3)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=run_generate)


def _inputs_exist(args) -> None:
    """Every input file looked into before the model loads."""
    for path in args.video or []:
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
    from videolm.core.config import resolve

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


def run_generate(args) -> int:
    from videolm.core.outputs import StreamingOutput, write_json_atomic
    from videolm.tasks.pipeline import Pipeline

    out = StreamingOutput(args.out, args.overwrite, command="generate")  # checked before anything loads
    _inputs_exist(args)
    rewrite = _rewriter(args.prompt_rewriter)
    pipe = Pipeline.from_pretrained(args.model)
    pipe.task(args.task)  # an unknown task fails before any work
    request = pipe.prepare(args.task, args.prompt, image=args.image, video=args.video, audio=args.audio,
                           mask=args.mask, num_samples=args.num_samples, seed=args.seed, frames=args.frames,
                           cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, with_audio=args.with_audio, refine=args.refine, backend=args.backend,
                           steps=args.steps, rewrite=rewrite, strict_prompt=args.strict_prompt)
    folder = out.open()
    manifest = {"model": str(pipe.folder), "samples": []}
    (path,) = out.reserve("manifest.json")
    write_json_atomic(path, manifest)
    with progress(None, f"generate {args.task}", unit="tok") as bar:
        for i in range(args.num_samples):
            result = pipe.draw(request, i, progress=bar.update)
            manifest["samples"].append(_write(out, i, result, args))
            write_json_atomic(path, manifest)  # after each sample: a stopped run keeps every finished one
    print(f"wrote {args.num_samples} sample(s) of {args.task} to {folder}/")
    return 0


def _write(out, index: int, result, args) -> dict:
    """One sample's files, each written whole and listed in the output's marker first."""
    from videolm.data.media import write_audio, write_image, write_video

    stem = f"sample_{index:03d}"
    extra = dict(result.extra)
    entry = {"index": index, "task": result.task, "prompt": args.prompt, **extra, "seed": result.seed,
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


def add_tasks(sub) -> None:
    p = sub.add_parser("tasks", help="list the tasks, what each needs and makes",
                       description="List the built-in tasks (or those a model was trained on, with --model): "
                       "name, a one-line description, the inputs `videolm generate` needs and the output.")
    p.add_argument("--model", help="list the tasks of this model folder or shipped name instead")
    p.add_argument("--json", action="store_true", help="one JSON object per task")
    p.add_argument("--words", action="store_true",
                   help="instead, list the words the model's prompts are read in, and the paraphrases it maps onto them")
    p.set_defaults(run=run_tasks)


def run_tasks(args) -> int:
    if args.words:
        return _words(args.model or DEFAULT_MODEL)
    names = list(BUILTIN)
    if args.model:
        from videolm.core.models import resolve_model
        from videolm.tasks.pipeline import LM_DIR
        from videolm.tokenizers.vocab import Vocabulary

        folder = resolve_model(args.model)
        vocab_dir = folder / LM_DIR if (folder / LM_DIR / "vocab.json").is_file() else folder
        names = Vocabulary.load(vocab_dir).tasks
    rows = []
    for name in names:
        cls = task_class(name) if name in BUILTIN else None
        rows.append({"task": name, "description": cls.description if cls else "(a task of your own)",
                     "needs": (cls.needs or "nothing") if cls else "?", "output": cls.output if cls else "?"})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["task"]) for r in rows) if rows else 4
    need_width = max(len(r["needs"]) for r in rows) if rows else 5
    for r in rows:
        print(f"{r['task']:<{width}}  {r['output']:<5}  {r['needs']:<{need_width}}  {r['description']}")
    return 0


def _words(model: str) -> int:
    from videolm.core.models import resolve_model
    from videolm.tasks.pipeline import LM_DIR
    from videolm.tasks.prompts import PromptTable

    folder = resolve_model(model)
    table = PromptTable.load(folder / LM_DIR) or PromptTable.load(folder)
    if table is None:
        print(f"{folder} has no prompt table: prompts are read as given (spacing aside)")
        return 0
    print("known: " + " ".join(table.known))
    for phrase, words in sorted(table.phrases.items()):
        print(f"{phrase} -> {words or '(dropped)'}")
    print("ignored: " + " ".join(table.fillers))
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a model's tasks on held-out Shapes clips, as one JSON object",
        description="Run each task on held-out Shapes clips (seeds >= 1,000,000) and print one JSON object with a "
        "metrics block per task: probe attribute accuracy and fd_probe (Frechet distance in the probe's "
        "features), PSNR/SSIM against the truth beside a copy baseline where the task has one, silhouette IoU "
        "and color for stylize, tone accuracy and bounce timing for v2a, and 'loss': the true output's mean "
        "loss per token, teacher-forced.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"a model folder or a shipped name (default {DEFAULT_MODEL})")
    p.add_argument("--tasks", default="all", help="comma-separated task names, or 'all' (default)")
    p.add_argument("--num", type=COUNT, default=128, help="held-out clips per task (default 128)")
    p.add_argument("--seed", type=SEED, default=0, help="offset among the held-out seeds (default 0)")
    p.add_argument("--sample-seed", type=SEED,
                   help="seed of the sampling (default: --seed); another value redraws the samples for the same "
                        "clips, which shows how much a figure moves by chance alone")
    p.add_argument("--split", choices=["eval", "train"], default="eval",
                   help="eval: held-out clips (default); train: the training seeds, whose 'loss' beside the "
                        "held-out one shows how much the model has memorized")
    p.add_argument("--batch-size", type=BATCH, default=16, help="clips generated at once (default 16)")
    p.add_argument("--cfg-scale", type=GUIDANCE, default=AR_CFG_SCALE,
                   help=f"the LM's guidance for tasks with text (default {AR_CFG_SCALE:g})")
    p.add_argument("--temperature", type=TEMPERATURE, default=1.0)
    p.add_argument("--top-k", type=integer(1, 2**31 - 1))
    p.add_argument("--refine", action="store_true",
                   help="score the frames after the model's refiner, as `generate` makes them (default: the decode)")
    p.add_argument("--against", metavar="MODEL_OR_JSON",
                   help="also score this model (or read this earlier `eval --per-clip` JSON) on the same clips with "
                        "the same sampling seeds, and add 'against': each accuracy figure's change in points with its "
                        "paired standard error, and each task's loss change (how much a fine-tune cost old tasks)")
    p.add_argument("--per-clip", action="store_true",
                   help="keep each clip's [hits, count] per figure in the JSON (what --against reads)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch")
    p.add_argument("--out", help="also write the JSON to this file (a new file unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run_eval)


def run_eval(args) -> int:
    from dataclasses import replace

    import torch
    from tqdm import tqdm

    from videolm.core.outputs import check_output_file, write_atomic
    from videolm.evaluation.evaluate import EvalConfig, evaluate

    if args.out:
        check_output_file(args.out, args.overwrite, inputs=(args.against,))
    if args.threads:
        torch.set_num_threads(args.threads)
    names = () if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    paired = args.per_clip or bool(args.against)
    cfg = EvalConfig(model=args.model, tasks=names, num=args.num, seed=args.seed, sample_seed=args.sample_seed,
                     batch_size=args.batch_size, cfg_scale=args.cfg_scale, temperature=args.temperature,
                     top_k=args.top_k, refine=args.refine, split=args.split, per_clip=paired)
    base = _against(args.against, cfg) if args.against and Path(args.against).suffix == ".json" else None
    with tqdm(desc="eval", unit="clip", delay=1.0, file=sys.stderr, leave=False) as bar:
        def run(c):
            return evaluate(c, progress=lambda name, n: (bar.set_description(f"eval {name}"), bar.update(n)))

        report = run(cfg)
        if args.against and base is None:
            bar.reset()
            base = run(replace(cfg, model=args.against, tasks=tuple(report["tasks"])))
    if base is not None:
        from videolm.evaluation.evaluate import paired_changes

        report["against"] = paired_changes(base, report)
    if not args.per_clip:
        for block in report["tasks"].values():
            block.pop("per_clip", None)
    text = json.dumps(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text + "\n")
    print(text)
    return 0


def _against(path: str, cfg) -> dict:
    """An earlier evaluation read back for --against, checked to hold what the comparison needs."""
    try:
        base = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--against {path}: cannot read it as an evaluation JSON ({e})") from None
    if not isinstance(base, dict) or not isinstance(base.get("tasks"), dict):
        raise UsageError(f"--against {path}: not the JSON `videolm eval` writes")
    missing = [n for n in (cfg.tasks or ()) if "per_clip" not in base["tasks"].get(n, {})]
    if missing or not any("per_clip" in b for b in base["tasks"].values()):
        raise UsageError(f"--against {path}: no per-clip records for {', '.join(missing) or 'any task'}; "
                         "write it with `videolm eval --per-clip --out FILE`")
    from videolm.evaluation.evaluate import check_same_settings

    # before the evaluation runs, not after it: the settings this one will record
    check_same_settings(base, {"num": cfg.num, "seed": cfg.seed, "split": cfg.split, "refined": cfg.refine,
                               "sample_seed": cfg.seed if cfg.sample_seed is None else cfg.sample_seed,
                               "cfg_scale": cfg.cfg_scale, "temperature": cfg.temperature})
    return base


def add_probe(sub) -> None:
    from videolm.evaluation.probe import PRESETS

    probe = sub.add_parser("probe", help="train the probe classifier that evaluation uses",
                           description="Train the probe classifier that evaluation uses.")
    probe_sub = probe.add_subparsers(dest="probe_command", metavar="{fit}", required=True)
    p = probe_sub.add_parser(
        "fit", help="train a probe on ground-truth Shapes clips",
        description="Train the probe (shape, color, size, direction of each object; background) on ground-truth "
        "Shapes training clips, measure it on held-out clips, and write it (safetensors + JSON, metrics.json) to --out.",
    )
    p.add_argument("--out", required=True, help="probe folder to write (new or empty unless --overwrite)")
    p.add_argument("--num", type=COUNT, default=100_000, help="training seeds to draw clips from (default 100000)")
    p.add_argument("--steps", type=STEPS, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=BATCH, default=32, help="clips per step (default 32)")
    p.add_argument("--seed", type=SEED, default=0, help="first training seed and random seed (default 0)")
    p.add_argument("--lr", type=real(0, 10, low_open=True), default=3e-3, help="peak learning rate (default 0.003)")
    p.add_argument("--threads", type=THREADS, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="probe size (default default)")
    p.add_argument("--eval-num", type=COUNT, default=512, help="held-out clips to measure on (default 512)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=run_probe)


def run_probe(args) -> int:
    from videolm.core.outputs import check_output_dir
    from videolm.train.probe import fit_probe

    check_output_dir(args.out, args.overwrite)
    with progress(args.steps, "probe fit", unit="step") as bar:
        metrics = fit_probe(args.out, num_clips=args.num, steps=args.steps, batch_size=args.batch_size,
                            seed=args.seed, threads=args.threads, preset=args.preset, eval_clips=args.eval_num,
                            lr=args.lr, overwrite=args.overwrite, progress=bar.update)
    print(json.dumps(metrics))
    return 0


def add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="teach a trained model a new task (full or LoRA) from a YAML config",
        description="Fine-tune a model folder's LM (default shapes-64) on a new task named in the config by import "
        "path (configs/finetune/*.yaml): its token is appended to the vocabulary, old tasks can be mixed in, and the "
        "new task and chosen old tasks are scored before and after. Writes OUT/model (for generate --model), "
        "OUT/adapter (LoRA: the adapter alone) and OUT/report.json, and prints the report's summary. A rerun "
        "resumes the training exactly.",
    )
    from videolm.cli.main import _fit_args  # the flags every fit command shares

    _fit_args(p, "finetune")
    p.add_argument("--base", help="the model to start from (default: the config's base)")
    p.set_defaults(run=run_finetune_cmd)


def run_finetune_cmd(args) -> int:
    from videolm.cli.main import fit_config
    from videolm.train.finetune import run_finetune
    from videolm.core.models import resolve_model

    cfg = fit_config(args, "finetune")
    if args.base:
        cfg.base = args.base
    resolve_model(cfg.base)  # a missing base fails now, not after the slow first evaluation
    report = run_finetune(cfg)
    print(json.dumps(report["summary"]))
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="the AR model against the DiT baseline on the same prompts, conditions and seeds",
        description="Run t2v and extend on held-out Shapes clips through the AR prefix LM and the DiT baseline of a "
        "model folder (the same captions, context frames and seeds; both refined unless --no-refine) and write "
        "DIR/results.json, DIR/report.md (which system wins each metric), quality_vs_time.png, attributes.png and "
        "samples_<task>.png.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"a model folder with lm/ and dit/ (default {DEFAULT_MODEL})")
    p.add_argument("--tasks", default="t2v,extend", help="comma-separated: t2v, extend (default both)")
    p.add_argument("--num", type=COUNT, default=64, help="held-out clips per task (default 64)")
    p.add_argument("--seed", type=SEED, default=0, help="offset among the held-out seeds (default 0)")
    p.add_argument("--batch-size", type=BATCH, default=16, help="clips generated at once (default 16)")
    p.add_argument("--cfg-scale", type=GUIDANCE, default=AR_CFG_SCALE,
                   help=f"the AR model's guidance (default {AR_CFG_SCALE:g})")
    p.add_argument("--dit-cfg-scale", type=GUIDANCE, help="the DiT's guidance (default: its own)")
    p.add_argument("--dit-steps", type=integer(1, 10_000), help="the DiT's sampling steps (default: its own)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="pass both systems' frames through the model folder's refiner (default on)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output of videolm in --out")
    p.set_defaults(run=run_compare)


def run_compare(args) -> int:
    import torch
    from tqdm import tqdm

    from videolm.core.outputs import check_output_dir
    from videolm.evaluation.compare import CompareConfig, compare, write_report

    check_output_dir(args.out, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    cfg = CompareConfig(model=args.model, tasks=names, num=args.num, seed=args.seed, batch_size=args.batch_size,
                        cfg_scale=args.cfg_scale, dit_cfg_scale=args.dit_cfg_scale, dit_steps=args.dit_steps,
                        refine=args.refine)
    with tqdm(desc="compare", unit="clip", delay=1.0, file=sys.stderr, leave=False) as bar:
        results = compare(cfg, progress=lambda name, n: (bar.set_description(f"compare {name}"), bar.update(n)))
    write_report(results, args.out, overwrite=args.overwrite)
    for name, block in results["tasks"].items():
        wins = ", ".join(f"{m}: {w}" for m, w in block["winner"].items())
        print(f"{name}: {wins}")
    print(f"wrote {args.out}/results.json, report.md and plots ({results['seconds']} s)")
    return 0


__all__ = ["add_compare", "add_eval", "add_finetune", "add_generate", "add_probe", "add_tasks", "run_eval", "run_generate", "run_probe", "run_tasks"]
