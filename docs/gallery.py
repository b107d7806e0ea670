"""Write the README's gallery: real outputs of a model, as frame grids (PNG) and GIFs in docs/gallery/.

    python docs/gallery.py [--model shapes-64] [--out docs/gallery] [--seed 0]

Each task runs once on a held-out Shapes clip (seed 1,000,000 + 17), with the inputs a user
would give (its caption, its first frame, its video, its audio...). Each PNG shows the input
clip (when the task has one) above the output, every second frame; the GIF shows the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from videolm.data.media import write_grid, write_video
from videolm.data.shapes import EVAL_SEED_START, make_clip
from videolm.tasks.pipeline import Pipeline

CLIP_SEED = EVAL_SEED_START + 17


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-64")
    parser.add_argument("--out", default="docs/gallery")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_pretrained(args.model)
    clip = make_clip(CLIP_SEED)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    runs = {
        "t2v": dict(prompt="a large red circle moves left"),
        "t2v_two": dict(prompt="a small yellow triangle moves down and a large blue square moves right"),
        "i2v": dict(image=clip.video[0]),
        "extend": dict(video=clip.video[:9]),
        "interpolate": dict(video=[clip.video[:5], clip.video[12:]]),
        "inpaint": dict(video=clip.video, mask=mask),
        "stylize": dict(video=clip.structure, prompt="a large green circle moves up"),
        "loop": dict(prompt="a large magenta square moves right"),
    }
    shown = {"i2v": clip.video[:1], "extend": clip.video[:9], "interpolate": clip.video, "inpaint": clip.video,
             "stylize": clip.structure}
    for name, inputs in runs.items():
        task = name.split("_")[0]
        (result,) = pipe.generate(task=task, seed=args.seed, **inputs)
        rows = [result.video[::2]]
        if name in shown:
            given = shown[name][::2]
            pad = np.zeros((len(rows[0]) - len(given), *given.shape[1:]), np.uint8) if len(given) < len(rows[0]) else None
            rows.insert(0, given if pad is None else np.concatenate([given, pad]))
        write_grid(out / f"{name}.png", np.concatenate(rows), cols=len(rows[0]))
        write_video(out / f"{name}.gif", result.video, fps=8)
        print(f"{name}: {out / (name + '.png')}")


if __name__ == "__main__":
    main()
