"""Folder training done right, measured: the decode-once cache and the wall-clock budget.

    python benchmarks/folder_training.py [--videos 12] [--budget-minutes 2] [--threads 2]

Makes a folder of mixed-size mp4s (photo-world clips at 48x80, 72x128 and 128x128, and Shapes at
64x64; 25-41 frames at 8 fps), then, side by side in one run:
- loading every training clip (17x64x64, stride 8) three times: without the cache, and with it
  cold (epoch 1 decodes each video once) and warm (epoch 2 slices the cached arrays);
- packing the folder (`videolm data pack`: every clip decoded once into shards), then loading
  every training clip from the pack twice (a fresh reader each time), and from the pack through
  a URL (fsspec's in-memory filesystem standing in for object storage: epoch 1 fetches each
  shard into the cache, epoch 2 reads the cached copy);
- a pack of small shards read through a URL under a cache cap of a quarter of the pack
  (`VIDEOLM_PACK_CACHE_GB`), two epochs in training order: shards fetched per epoch, as a share
  of the pack, with the window-of-shards order that a capped pack gets against a full shuffle;
- `videolm tokenizer fit` (default preset) on the folder with `--max-minutes`, timing the whole
  command against the budget, and showing the train / held-out split it used.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import fsspec

from videolm.core.training import ResumableSampler
from videolm.data import packs
from videolm.data.folder import FolderDataset
from videolm.data.media import write_video
from videolm.data.packs import CACHE_CAP, ClipPack, write_pack
from videolm.data.photos import PhotoConfig, make_photo_clip
from videolm.data.shapes import ShapesConfig, make_clip


def make_folder(root: Path, videos: int) -> None:
    sizes = [(48, 80), (72, 128), (128, 128)]
    for i in range(videos):
        frames = 25 + 4 * (i % 5)
        if i % 4 == 3:
            clip = make_clip(i, ShapesConfig(frames=frames)).video
        else:
            h, w = sizes[i % 3]
            clip = make_photo_clip(i, PhotoConfig(height=h, width=w, frames=frames)).video
        write_video(root / f"v{i:02d}.mp4", clip, fps=8)
        if i % 2 == 0:
            (root / f"v{i:02d}.txt").write_text(f"clip {i}\n")


def load_all(ds) -> float:
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t0


def capped_reads(pack: Path, cache: Path, epochs: int = 2) -> dict:
    """Bytes fetched per epoch (as a share of the pack's) reading ``pack`` through a URL under a cap
    of a quarter of its bytes, in the capped pack's shard order and in a full shuffle, and the most
    the cache held (as a share of the cap)."""
    memory = fsspec.filesystem("memory")
    for f in pack.iterdir():
        memory.pipe(f"/capped/pack/{f.name}", f.read_bytes())
    total = sum(f.stat().st_size for f in pack.iterdir() if f.name.startswith("train-"))
    fetched = []
    real_open = fsspec.open

    def counting_open(url, *a, **k):
        if not url.endswith("pack.json"):
            fetched.append(memory.size(url.removeprefix("memory://")))
        return real_open(url, *a, **k)

    out = {}
    packs.fsspec.open = counting_open
    os.environ[CACHE_CAP] = str(total / 4 / 1e9)
    try:
        for order in ("windows", "shuffle"):
            for f in (cache / "packs").glob("*/*"):
                f.unlink()
            fetched.clear()
            clips = ClipPack("memory://capped/pack")
            keys = iter(ResumableSampler(len(clips), 4, seed=0, groups=clips.shard_order if order == "windows" else None))
            most = 0
            for _ in range(epochs * len(clips)):
                clips[next(keys)[0]]
                most = max(most, sum(f.stat().st_size for f in (cache / "packs").glob("*/*")))
            out[order] = {"fetched_per_epoch": round(sum(fetched) / total / epochs, 2),
                          "cache_peak_of_cap": round(most / (total / 4), 2)}
        out["shards"] = len(ClipPack("memory://capped/pack").shards)
    finally:
        packs.fsspec.open = real_open
        del os.environ[CACHE_CAP]
        memory.rm("/capped", recursive=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--budget-minutes", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VIDEOLM_CACHE"] = str(tmp / "cache")  # a cold cache of this run's own
        root = tmp / "videos"
        make_folder(root, args.videos)
        kw = dict(frames=17, fps=8, size=(64, 64), stride=8, split="train")
        plain = load_all(FolderDataset(root, **kw))
        cold = load_all(FolderDataset(root, cache=True, **kw))
        warm = load_all(FolderDataset(root, cache=True, **kw))
        start = time.perf_counter()
        write_pack(tmp / "pack", FolderDataset(root, **{**kw, "split": "all"}))
        pack_s = time.perf_counter() - start
        pack_1, pack_2 = load_all(ClipPack(tmp / "pack")), load_all(ClipPack(tmp / "pack"))
        memory = fsspec.filesystem("memory")
        for f in (tmp / "pack").iterdir():
            memory.pipe(f"/bench/pack/{f.name}", f.read_bytes())
        url_1, url_2 = load_all(ClipPack("memory://bench/pack")), load_all(ClipPack("memory://bench/pack"))
        memory.rm("/bench", recursive=True)
        write_pack(tmp / "small-shards", FolderDataset(root, **{**kw, "split": "all"}), shard_clips=8)
        capped = capped_reads(tmp / "small-shards", tmp / "cache")
        train = FolderDataset(root, **kw)
        held = FolderDataset(root, **{**kw, "split": "eval"})
        from videolm.cli.main import main as videolm

        start = time.perf_counter()
        code = videolm(["tokenizer", "fit", "--config", "configs/tokenizer/video-fsq.yaml", "--data", str(root),
                        "--data.stride", "8", "--out", str(tmp / "run"), "--max-minutes", str(args.budget_minutes), "--threads",
                        str(args.threads), "--train.val-every", "100", "--train.val-clips", "8"])
        took = time.perf_counter() - start
        rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    result = {
        "videos": args.videos, "train_videos": len(train.paths()), "held_out_videos": len(held.paths()),
        "train_clips": len(train), "held_out_clips": len(held),
        "load_s": {"no_cache": round(plain, 3), "cache_epoch_1": round(cold, 3), "cache_epoch_2": round(warm, 3)},
        "epoch_2_speedup": round(cold / warm, 1), "speedup_vs_no_cache": round(plain / warm, 1),
        "pack_s": round(pack_s, 3), "pack_load_s": {"local": [round(pack_1, 3), round(pack_2, 3)],
                                                    "url": [round(url_1, 3), round(url_2, 3)]},
        "pack_speedup_vs_no_cache": round(plain / pack_2, 1), "capped_cache": capped,
        "fit_exit": code, "budget_s": 60 * args.budget_minutes, "fit_wall_s": round(took, 1),
        "budget_error_pct": round(100 * (took - 60 * args.budget_minutes) / (60 * args.budget_minutes), 1),
        "steps": max(r["step"] for r in rows), "validations": sum("val_psnr" in r for r in rows),
    }
    print(f"clips: {result['train_clips']} train from {result['train_videos']} videos, {result['held_out_clips']} "
          f"held out from {result['held_out_videos']}")
    print(f"load every training clip: no cache {plain:.2f} s, cache epoch 1 {cold:.2f} s, epoch 2 {warm:.3f} s "
          f"({result['epoch_2_speedup']}x faster than epoch 1)")
    print(f"pack: written in {pack_s:.2f} s; every training clip read from it {pack_1:.3f} s, again {pack_2:.3f} s "
          f"({result['pack_speedup_vs_no_cache']}x faster than decoding); through a URL {url_1:.3f} s (fetching), "
          f"then {url_2:.3f} s (cached)")
    print(f"pack of {capped['shards']} shards through a URL, cache capped at a quarter of it: fetched per epoch "
          f"{capped['windows']['fetched_per_epoch']}x the pack in windows of shards, "
          f"{capped['shuffle']['fetched_per_epoch']}x in a full shuffle; the cache held at most "
          f"{capped['windows']['cache_peak_of_cap']} / {capped['shuffle']['cache_peak_of_cap']} of the cap")
    print(f"tokenizer fit --max-minutes {args.budget_minutes:g}: {took:.1f} s wall "
          f"({result['budget_error_pct']:+.1f}% of the budget), {result['steps']} steps, "
          f"{result['validations']} validations")
    print(json.dumps({"benchmark": "folder_training", **result}))


if __name__ == "__main__":
    main()
