"""videolm's video tokenizer against magvit2-pytorch's `VideoTokenizer`, side by side in one run.

    python benchmarks/tokenizer.py [--batch 8] [--budget-minutes 5] [--eval-clips 32] [--threads 2]

Both tokenizers compress 17x64x64 clips to 5x8x8 tokens with 4096 codes: ours is the default
preset (the one shipped in shapes-64, FSQ), theirs uses LFQ. Measured, on the same machine in the
same process, alternating between the two:
- encode and decode throughput (clips/s) at batch `--batch`;
- training throughput (clips/s) and reconstruction PSNR on held-out Shapes clips after the same
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
from videolm.data.shapes import make_clip
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

    def __init__(self):
        self.model = VideoTokenizer(VideoTokenizerConfig.from_name("default"))

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, codes):
        return self.model.decode(codes, 64, 64)

    def loss(self, x):
        out = self.model(x)
        return F.l1_loss(out.recon, x) + F.mse_loss(out.recon, x) + out.aux_loss


class Theirs:
    name = "magvit2-pytorch"

    def __init__(self):
        _stub_torchvision()
        from magvit2_pytorch import VideoTokenizer as Magvit2

        self.model = Magvit2(image_size=64, init_dim=32, max_dim=128, codebook_size=4096, layers=MAGVIT2_LAYERS,
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


def clips(seeds) -> torch.Tensor:
    return to_tensor(np.stack([make_clip(s).video for s in seeds]))  # (B, 3, 17, 64, 64)


def throughput(fn, x, repeats: int) -> float:
    fn(x)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


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
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="training budget per model")
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    systems = [Ours(), Theirs()]
    x = clips(range(args.batch))
    rows = {s.name: {"parameters_m": round(sum(p.numel() for p in s.model.parameters()) / 1e6, 2)} for s in systems}
    for s in systems:
        s.model.eval()
    for s in systems:  # encode, then decode, each system in turn on the same batch
        rows[s.name]["encode_clips_per_s"] = round(throughput(s.encode, x, args.repeats), 2)
    for s in systems:
        codes = s.encode(x)
        rows[s.name]["decode_clips_per_s"] = round(throughput(s.decode, codes, args.repeats), 2)
    for s in systems:
        rate, seen = train_for(s, args.budget_minutes, args.batch)
        rows[s.name].update(train_clips_per_s=round(rate, 2), train_clips_seen=seen,
                            heldout_psnr=round(heldout_psnr(s, args.eval_clips, args.batch), 2))
    ours, theirs = rows["videolm"], rows["magvit2-pytorch"]
    ratios = {k: round(ours[k] / theirs[k], 2) for k in ("encode_clips_per_s", "decode_clips_per_s", "train_clips_per_s")}
    print(f"{'':24s} {'params M':>9s} {'encode/s':>9s} {'decode/s':>9s} {'train/s':>8s} {'PSNR':>6s}  (after {args.budget_minutes:g} min)")
    for name, r in rows.items():
        print(f"{name:24s} {r['parameters_m']:9.2f} {r['encode_clips_per_s']:9.2f} {r['decode_clips_per_s']:9.2f} "
              f"{r['train_clips_per_s']:8.2f} {r['heldout_psnr']:6.2f}")
    print(f"{'ratio videolm / magvit2':24s} {'':9s} {ratios['encode_clips_per_s']:9.2f} {ratios['decode_clips_per_s']:9.2f} "
          f"{ratios['train_clips_per_s']:8.2f} {ours['heldout_psnr'] - theirs['heldout_psnr']:+6.2f} dB")
    print(json.dumps({"benchmark": "tokenizer", "batch": args.batch, "threads": args.threads,
                      "budget_minutes": args.budget_minutes, "results": rows, "ratios": ratios,
                      "psnr_gain_db": round(ours["heldout_psnr"] - theirs["heldout_psnr"], 2)}))


if __name__ == "__main__":
    main()
