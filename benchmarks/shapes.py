"""How fast the Shapes world draws clips: clips per second on one core, at 64x64x17 with audio.

    python benchmarks/shapes.py [--num 2000] [--repeats 3]

Runs in one process with one thread (per-core figure). Prints a table, then one JSON line.
Also times writing clips to disk (lossless mkv + wav), which `videolm data shapes` does.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from videolm.data.shapes import BACKGROUNDS, ShapesConfig, make_clip  # noqa: E402
from videolm.data.shapes_data import ShapesDataConfig, write_shapes  # noqa: E402


def clips_per_second(cfg: ShapesConfig, num: int, repeats: int) -> float:
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for seed in range(r * num, (r + 1) * num):
            make_clip(seed, cfg)
        rates.append(num / (time.perf_counter() - start))
    return statistics.median(rates)


def written_per_second(num: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_shapes(f"{tmp}/ds", ShapesDataConfig(num=num))
        return num / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    make_clip(0)  # warm caches (masks, tones)
    rows = {
        "generate, black background": clips_per_second(ShapesConfig(), args.num, args.repeats),
        "generate, all backgrounds": clips_per_second(ShapesConfig(backgrounds=list(BACKGROUNDS)), args.num, args.repeats),
        "generate + write to disk": written_per_second(min(args.num, 200)),
    }
    print(f"{'Shapes 64x64x17 + audio, 1 core':34s} {'clips/s':>10s}")
    for name, rate in rows.items():
        print(f"{name:34s} {rate:10.1f}")
    goal = 300.0
    rate = rows["generate, black background"]
    print(json.dumps({"benchmark": "shapes", "clips_per_s_per_core": round(rate, 1),
                      "clips_per_s_all_backgrounds": round(rows["generate, all backgrounds"], 1),
                      "written_clips_per_s": round(rows["generate + write to disk"], 1),
                      "goal": goal, "meets_goal": rate >= goal}))


if __name__ == "__main__":
    main()
