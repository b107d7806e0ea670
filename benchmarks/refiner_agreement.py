"""Why the refiner's probe agreement stops short of 99%: how stable the probe's reading of raw decodes is.

    python benchmarks/refiner_agreement.py [--model shapes-64] [--num 256] [--threads 2]

On ``--num`` held-out Shapes clips put through the model's video tokenizer (as ``videolm refiner
eval`` takes them), the probe reads the clean clip, the raw decode and the refined decode. Printed:

- how often whole readings agree (count and every object's shape, colour, size and direction)
  between raw and clean, refined and clean, refined and raw, for the refiner's default steps and 1;
- the same agreement with the raw decode after *capped* refinements: each pixel moved the way the
  refiner moves it but by at most ``d``/255, and after random noise of the same order; each with
  the PSNR gain of its error pooled over all clips;
- the refiner with its uncertainty gate (`videolm.diffusion.refiner.gate`) at several thresholds,
  read against the raw decode and against the clean clip.

If nudging pixels a few levels toward the refined clip already flips readings that noise does not
flip, those readings sit on the probe's decision boundary, and no refiner that moves toward the
truth can keep them all. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from videolm.core.metrics import psnr
from videolm.diffusion.refiner import GATE_SEED, gate, load_refiner, make_pairs, refine
from videolm.evaluation.probe import load_probe
from videolm.evaluation.refiner import probe_agreement
from videolm.tasks.tokenizing import load_video_tokenizer
from videolm.tokenizers.video import to_frames, to_tensor
from videolm.train.refiner import RefinerDataConfig

CAPS = (4, 8, 16, 32)  # of 255
NOISE = (2, 4, 8)  # sigma, of 255
GATES = (8, 16, 24, 32, 40, 48)  # tau, of 255


def pooled_gain(clean: np.ndarray, raw: np.ndarray, out: np.ndarray) -> float:
    return psnr(out, clean) - psnr(raw, clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-64")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = RefinerDataConfig(num=args.num, seed=0, tokenizer=args.model)
    decoded, clean = (t.numpy() for t in make_pairs(data.clips("eval"), load_video_tokenizer(args.model)))
    model, probe = load_refiner(args.model), load_probe(args.model)
    read = probe.predict
    raw_read, clean_read = read(decoded), read(clean)
    rows = [("raw decode", "clean clip", probe_agreement(raw_read, clean_read)["all"], None)]
    refined = {}
    for steps in sorted({model.config.steps, 1}, reverse=True):
        refined[steps] = out = refine(model, decoded, steps, gate_tau=0)
        got = read(out)
        rows += [(f"refined, {steps} steps", "clean clip", probe_agreement(got, clean_read)["all"], None),
                 (f"refined, {steps} steps", "raw decode", probe_agreement(got, raw_read)["all"],
                  pooled_gain(clean, decoded, out))]
    x = to_tensor(decoded)  # the two draws `refine` gates, made once for every tau
    first = refine(model, x, gate_tau=0)
    second = refine(model, x, seed=GATE_SEED, noise_scale=model.config.gate_noise, gate_tau=0)
    for tau in GATES:
        out = to_frames(gate(x, first, second, tau, model.config.gate_kernel))
        got = read(out)
        rows += [(f"refined, gated at tau {tau}/255", "clean clip", probe_agreement(got, clean_read)["all"], None),
                 (f"refined, gated at tau {tau}/255", "raw decode", probe_agreement(got, raw_read)["all"],
                  pooled_gain(clean, decoded, out))]
    raw_f, move = decoded.astype(np.float32), refined[model.config.steps].astype(np.float32) - decoded
    rng = np.random.default_rng(0)
    for cap in CAPS:
        out = np.clip(raw_f + np.clip(move, -cap, cap), 0, 255).round().astype(np.uint8)
        rows.append((f"raw + refiner's change capped at {cap}/255", "raw decode",
                     probe_agreement(read(out), raw_read)["all"], pooled_gain(clean, decoded, out)))
    for sigma in NOISE:
        out = np.clip(raw_f + rng.normal(0, sigma, decoded.shape), 0, 255).round().astype(np.uint8)
        rows.append((f"raw + gaussian noise, sigma {sigma}/255", "raw decode",
                     probe_agreement(read(out), raw_read)["all"], pooled_gain(clean, decoded, out)))

    print(f"{'clip':<44} {'read against':<12} {'agree':>7} {'pooled PSNR gain':>17}")
    for what, ref, agree, gain in rows:
        print(f"{what:<44} {ref:<12} {100 * agree:>6.1f}% {'' if gain is None else f'{gain:+.2f} dB':>17}")
    print(json.dumps({"num": args.num, "rows": [{"clip": w, "against": r, "agreement": round(a, 4),
                                                 "pooled_psnr_gain": None if g is None else round(g, 2)}
                                                for w, r, a, g in rows]}))


if __name__ == "__main__":
    main()
