"""videolm's video tokenizer against magvit2-pytorch's `VideoTokenizer`, side by side in one run.

    python benchmarks/tokenizer.py [--model natural] [--sizes 64,128] [--batch 8] [--budget-minutes 5]
                                   [--eval-clips 32] [--threads 2]

Both tokenizers compress 17xHxW clips to 5x(H/8)x(W/8) tokens with 4096 codes: ours is the
architecture of `--model` (a shipped name or tokenizer folder: natural, or shapes-64's default
preset, FSQ), theirs magvit2-pytorch's with LFQ. Measured, on the same machine in the same process,
alternating between the two, at each size of `--sizes`:
- encode and decode throughput (clips/s) at batch `--batch`, and training throughput (clips/s:
  forward, backward and an Adam step, timed over `--train-steps` steps after one warm-up);
- at 64x64, if `--budget-minutes` > 0: reconstruction PSNR on held-out Shapes clips after the same
  wall-clock training budget on the same clips in the same order (Adam, lr 1e-3, batch 8; each
  model with its own loss: ours L1 + MSE (+ the quantizer's aux loss, zero for FSQ), theirs MSE +
  LFQ aux; no GAN, no perceptual loss).

magvit2-pytorch is installed for this benchmark only, without its dependencies
(`pip install --no-deps magvit2-pytorch` plus its pure-Python needs: accelerate beartype ema-pytorch
pytorch-warmup gateloop-transformer kornia kornia-rs opencv-python-headless pillow
pytorch-custom-utils taylor-series-linear-attention x-transformers rotary-embedding-torch einx).
It imports torchvision only for a VGG perceptual loss, which this comparison switches off; there
is no CPU wheel of torchvision for this torch, so the benchmark stands a stub module in for it.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from videolm.core.metrics import psnr_per_clip
from videolm.data.shapes import ShapesConfig, make_clip
from videolm.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, to_tensor

R, S, T = "residual", "compress_space", "compress_time"
MAGVIT2_LAYERS = (R, S, R, S, R, S, R, T, R, T)  # 3.7 M parameters, 17x64x64 -> 5x8x8


def _stub_torchvision() -> None:
    """A stand-in `torchvision` whose every attribute is an inert class (enough to import and to
    survive beartype and pickling of default arguments); only the disabled VGG loss would use it."""
    try:
        import torchvision  # noqa: F401

        return
    except ImportError:
        pass
    module = types.ModuleType("torchvision")
    cache: dict[str, type] = {}

    class Meta(type):
        def __getattr__(cls, name):
            return attr(name)

    class Stub(metaclass=Meta):
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return self

    def attr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in cache:
            cache[name] = Meta(name, (Stub,), {"__module__": "torchvision"})
            setattr(module, name, cache[name])
        return cache[name]

    module.__getattr__ = attr
    sys.modules["torchvision"] = module
    for sub in ("transforms", "utils", "models", "io"):
        child = types.ModuleType(f"torchvision.{sub}")
        child.__getattr__ = attr
        sys.modules[f"torchvision.{sub}"] = child


class Ours:
    name = "videolm"

    def __init__(self, model: str = "default", size: int = 64):
        """``model``: "default" (the preset), or a shipped name or folder whose architecture is used,
        freshly initialized (the comparison is of the networks, not of trained weights)."""
        if model == "default":
            config = VideoTokenizerConfig.from_name("default")
        else:
            from videolm.tasks.tokenizing import load_video_tokenizer

            config = load_video_tokenizer(model).config
        self.model, self.size = VideoTokenizer(config), size

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, codes):
        return self.model.decode(codes, self.size, self.size)

    def loss(self, x):
        out = self.model(x)
        return F.l1_loss(out.recon, x) + F.mse_loss(out.recon, x) + out.aux_loss


class Theirs:
    name = "magvit2-pytorch"

    def __init__(self, size: int = 64):
        _stub_torchvision()
        from magvit2_pytorch import VideoTokenizer as Magvit2

        self.model = Magvit2(image_size=size, init_dim=32, max_dim=128, codebook_size=4096, layers=MAGVIT2_LAYERS,
                             use_gan=False, perceptual_loss_weight=0)

    def encode(self, x):
        with torch.no_grad():
            return self.model.tokenize(x)

    def decode(self, codes):
        with torch.no_grad():
            return self.model.decode_from_code_indices(codes)

    def loss(self, x):
        loss, _ = self.model(x, return_loss=True)
        return loss


def clips(seeds, size: int = 64) -> torch.Tensor:
    world = ShapesConfig(height=size, width=size)
    return to_tensor(np.stack([make_clip(s, world).video for s in seeds]))  # (B, 3, 17, size, size)


def throughput(fn, x, repeats: int) -> float:
    fn(x)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


def train_rate(system, x, steps: int) -> float:
    """Training clips/s: forward, backward and an Adam step on the batch ``x``, after one warm-up."""
    opt = torch.optim.Adam(system.model.parameters(), lr=1e-4)
    system.model.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = system.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    system.model.eval()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def train_for(system, minutes: float, batch: int) -> tuple[float, int]:
    opt = torch.optim.Adam(system.model.parameters(), lr=1e-3)
    system.model.train()
    seen, step, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < 60 * minutes:
        x = clips(range(step * batch, (step + 1) * batch))
        loss = system.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen, step = seen + batch, step + 1
    system.model.eval()
    return seen / (time.perf_counter() - t0), seen


def heldout_psnr(system, num: int, batch: int) -> float:
    scores = []
    for start in range(0, num, batch):
        x = clips(range(1_000_000 + start, 1_000_000 + min(num, start + batch)))
        with torch.no_grad():
            recon = system.decode(system.encode(x))
        scores.append(psnr_per_clip(x, recon.clamp(-1, 1)))
    return float(torch.cat(scores).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="whose architecture: default, natural, or a folder")
    parser.add_argument("--sizes", default="64", help="square frame sizes, comma-separated (multiples of 16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3, help="steps timed for training throughput")
    parser.add_argument("--budget-minutes", type=float, default=5.0,
                        help="training budget per model for the PSNR comparison at 64x64 (0: skip it)")
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    for size in [int(v) for v in args.sizes.split(",")]:
        torch.manual_seed(0)
        systems = [Ours(args.model, size), Theirs(size)]
        x = clips(range(args.batch), size)
        rows = {s.name: {"parameters_m": round(sum(p.numel() for p in s.model.parameters()) / 1e6, 2)}
                for s in systems}
        for s in systems:
            s.model.eval()
        for s in systems:  # encode, then decode, then train, each system in turn on the same batch
            rows[s.name]["encode_clips_per_s"] = round(throughput(s.encode, x, args.repeats), 2)
        for s in systems:
            codes = s.encode(x)
            rows[s.name]["decode_clips_per_s"] = round(throughput(s.decode, codes, args.repeats), 2)
        for s in systems:
            rows[s.name]["train_clips_per_s"] = round(train_rate(s, x, args.train_steps), 2)
        if size == 64 and args.budget_minutes > 0:
            for s in systems:
                rate, seen = train_for(s, args.budget_minutes, args.batch)
                rows[s.name].update(budget_train_clips_per_s=round(rate, 2), train_clips_seen=seen,
                                    heldout_psnr=round(heldout_psnr(s, args.eval_clips, args.batch), 2))
        table[f"{size}x{size}"] = rows
    print(f"{'':12s} {'':24s} {'params M':>9s} {'encode/s':>9s} {'decode/s':>9s} {'train/s':>8s}")
    ratios = {}
    for size, rows in table.items():
        ours, theirs = rows["videolm"], rows["magvit2-pytorch"]
        ratios[size] = {k: round(ours[k] / theirs[k], 2)
                        for k in ("encode_clips_per_s", "decode_clips_per_s", "train_clips_per_s")}
        for name, r in rows.items():
            print(f"{size:12s} {name:24s} {r['parameters_m']:9.2f} {r['encode_clips_per_s']:9.2f} "
                  f"{r['decode_clips_per_s']:9.2f} {r['train_clips_per_s']:8.2f}")
        q = ratios[size]
        print(f"{size:12s} {'ratio videolm / magvit2':24s} {'':9s} {q['encode_clips_per_s']:9.2f} "
              f"{q['decode_clips_per_s']:9.2f} {q['train_clips_per_s']:8.2f}")
        if "heldout_psnr" in ours:
            print(f"{size:12s} held-out Shapes PSNR after {args.budget_minutes:g} min each: videolm "
                  f"{ours['heldout_psnr']:.2f} dB, magvit2-pytorch {theirs['heldout_psnr']:.2f} dB")
    print(json.dumps({"benchmark": "tokenizer", "model": args.model, "batch": args.batch, "threads": args.threads,
                      "budget_minutes": args.budget_minutes, "results": table, "ratios": ratios}))


if __name__ == "__main__":
    main()
