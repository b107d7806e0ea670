"""Media round trips on Shapes clips: PSNR per write quality, and write/read speed.

    python benchmarks/media.py [--num 32]

Shapes frames (all backgrounds) are written as mp4 (default yuv420p, high yuv444p), lossless mkv
and gif, read back, and compared with the originals. Prints a table, then one JSON line.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


from videolm.core.metrics import psnr
from videolm.data.media import read_video, write_video
from videolm.data.shapes import BACKGROUNDS, ShapesConfig, make_clip

CASES = {  # name -> (extension, quality)
    "mp4 default (H.264 yuv420p)": (".mp4", "default"),
    "mp4 high (H.264 yuv444p)": (".mp4", "high"),
    "mkv lossless (FFV1)": (".mkv", "lossless"),
    "gif": (".gif", "default"),
}


EXACT_DB = 140.0  # a PSNR this high means the clip came back bit for bit


def measure(clips, ext: str, quality: str, folder: Path) -> dict:
    scores, write_s, read_s, sizes = [], 0.0, 0.0, []
    for i, clip in enumerate(clips):
        path = folder / f"{i}{ext}"
        t0 = time.perf_counter()
        write_video(path, clip, fps=8, quality=quality)
        t1 = time.perf_counter()
        back = read_video(path)
        read_s += time.perf_counter() - t1
        write_s += t1 - t0
        sizes.append(path.stat().st_size)
        scores.append(psnr(back, clip))
    lossy = [s for s in scores if s < EXACT_DB]  # identical clips sit at psnr's floor, ~148 dB
    return {
        "psnr_mean": round(statistics.mean(lossy), 2) if lossy else float("inf"),
        "psnr_min": round(min(scores), 2),
        "exact": sum(s >= EXACT_DB for s in scores),
        "write_clips_per_s": round(len(clips) / write_s, 1),
        "read_clips_per_s": round(len(clips) / read_s, 1),
        "kb_per_clip": round(statistics.mean(sizes) / 1024, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=32, help="held-out clips per background")
    args = parser.parse_args()
    seeds = range(1_000_000, 1_000_000 + args.num)
    results = {}
    print(f"{'background':10s} {'format':30s} {'PSNR mean':>9s} {'PSNR min':>9s} {'exact':>6s} "
          f"{'write/s':>8s} {'read/s':>8s} {'KB':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for background in BACKGROUNDS:
            world = ShapesConfig(backgrounds=[background])
            clips = [make_clip(seed, world).video for seed in seeds]  # (T, H, W, 3) each
            for name, (ext, quality) in CASES.items():
                r = results.setdefault(background, {})[name] = measure(clips, ext, quality, Path(tmp))
                print(f"{background:10s} {name:30s} {r['psnr_mean']:9.2f} {r['psnr_min']:9.2f} {r['exact']:6d} "
                      f"{r['write_clips_per_s']:8.1f} {r['read_clips_per_s']:8.1f} {r['kb_per_clip']:6.1f}")
    print(json.dumps({"benchmark": "media", "clips_per_background": args.num, "results": results}))


if __name__ == "__main__":
    main()
