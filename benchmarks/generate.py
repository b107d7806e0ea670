"""End-to-end generation time: the README's main command, and the language-model part alone.

    python benchmarks/generate.py [--model shapes-64] [--threads 2] [--repeats 3]

- ``command``: wall time of ``videolm generate --task t2v --prompt "a large red circle moves
  left" --out DIR`` run as a user runs it (a fresh process: Python start, imports, loading the
  model, generating, decoding, writing the mp4), median of ``--repeats`` runs.
- ``lm``: in one process with the model loaded, the time to draw the 320 video ids of that
  prompt (prefill and decoding, the default classifier-free guidance: two rows), median of repeats.
- ``decode``: the video tokenizer turning those ids into frames.
- ``refine``: the model folder's diffusion refiner on that clip at its default steps (batch 1, as
  ``generate`` runs it), and ``refine_over_lm``, its share of the LM's time (the goal: at most 0.5).
- ``dit``: the DiT baseline drawing one clip for the prompt (its default steps and guidance, decode
  included), when the folder has one.

Torch uses ``--threads`` threads (OMP_NUM_THREADS for the command). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a large red circle moves left"
GOAL_S = 10.0


def command_seconds(model: str, threads: int) -> float:
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        subprocess.run([*cmd, "generate", "--model", model, "--task", "t2v", "--prompt", PROMPT, "--out",
                        f"{tmp}/out"], check=True, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        if not (Path(tmp) / "out" / "sample_000.mp4").is_file():
            raise SystemExit("the command wrote no sample_000.mp4")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from videolm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model)
    task = pipe.task("t2v")
    sample = task.encode_inputs(pipe.inputs(PROMPT), pipe.tokenizer, pipe.geometry())
    pipe.codes(task, [sample], seed=0)  # warm up
    dit = pipe.dit_backend() if (pipe.folder / "dit" / "config.json").is_file() else None
    lm, decode, refine, dits, commands = [], [], [], [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        (codes,) = pipe.codes(task, [sample], seed=r)
        lm.append(time.perf_counter() - start)
        start = time.perf_counter()
        video = task.to_media(codes, sample, pipe.tokenizer).video
        decode.append(time.perf_counter() - start)
        if pipe.refiner is not None:
            start = time.perf_counter()
            pipe.refine(video[None], seed=r)
            refine.append(time.perf_counter() - start)
        if dit is not None:
            start = time.perf_counter()
            dit.generate("t2v", prompts=[PROMPT], seeds=[r])
            dits.append(time.perf_counter() - start)
        commands.append(command_seconds(args.model, args.threads))
    median = statistics.median
    result = {"benchmark": "generate", "model": str(pipe.folder), "threads": args.threads, "repeats": args.repeats,
              "command_s": round(median(commands), 2), "lm_s": round(median(lm), 2),
              "decode_s": round(median(decode), 3), "lm_tok_s": round(320 / median(lm), 1),
              "refine_s": round(median(refine), 3) if refine else None,
              "refine_over_lm": round(median(refine) / median(lm), 3) if refine else None,
              "dit_s": round(median(dits), 3) if dits else None,
              "goal_command_s": GOAL_S, "meets_goal": median(commands) <= GOAL_S}
    print(f"{'part':<28}{'median s':>10}")
    print(f"{'videolm generate (process)':<28}{result['command_s']:>10.2f}")
    print(f"{f'LM: 320 ids, cfg {pipe.guidance():g} (2 rows)':<28}{result['lm_s']:>10.2f}")
    print(f"{'video tokenizer decode':<28}{result['decode_s']:>10.3f}")
    if refine:
        print(f"{'refiner (default steps)':<28}{result['refine_s']:>10.3f}")
    if dits:
        print(f"{'DiT t2v clip (with decode)':<28}{result['dit_s']:>10.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
