"""Prompts as people type them: does the shipped model draw what a prompt asks for as often when it is
typed in capitals, with punctuation, or in other words, as when it is a training caption?

    python benchmarks/prompts.py [--seeds 32] [--threads 2]

For each pair (a caption, and the same request typed otherwise) it draws ``--seeds`` samples of
`t2v` with seeds 0..N-1, reads each with the probe, and prints the share of objects whose shape,
colour, size and direction match the caption, with the prompt as the model read it. Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from videolm.data.shapes import ATTRIBUTES, parse_caption
from videolm.evaluation.probe import load_probe
from videolm.evaluation.scoring import attribute_accuracy
from videolm.tasks.pipeline import Pipeline

PAIRS = [
    ("a large red circle moves left", "A LARGE RED CIRCLE MOVES LEFT."),
    ("a large red circle moves left", "A big red ball, moving to the left!"),
    ("a small magenta square stays still", "a tiny purple box that doesn't move"),
    ("a large cyan triangle moves up", "Large turquoise pyramid rising."),
]


def accuracy(pipe: Pipeline, probe, prompt: str, caption: str, seeds: int) -> tuple[dict, str]:
    wanted = [parse_caption(caption)["objects"]] * seeds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = pipe.generate("t2v", prompt, num_samples=seeds, seed=0)
    videos = np.stack([r.video for r in results])
    return attribute_accuracy(probe.predict(videos), wanted, ATTRIBUTES), results[0].extra["rewritten_prompt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="shapes-64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, probe = Pipeline.from_pretrained(args.model), load_probe(args.model)
    rows = []
    for caption, typed in PAIRS:
        for prompt in dict.fromkeys((caption, typed)):
            if any(r["prompt"] == prompt for r in rows):
                continue
            acc, read = accuracy(pipe, probe, prompt, caption, args.seeds)
            rows.append({"prompt": prompt, "read_as": read, "caption": caption, **acc})
            print(f"{prompt!r:45} read as {read!r:40} " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    print(json.dumps({"seeds": args.seeds, "rows": rows}))


if __name__ == "__main__":
    main()
