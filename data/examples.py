"""`videolm data examples`: one held-out Shapes scene written as the input files of every task, so that
the README's commands run as they stand."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videolm.core.outputs import atomic_output_dir
from videolm.data.media import write_audio, write_image, write_video
from videolm.data.shapes import EVAL_SEED_START, ShapesConfig, make_clip

FILES = {
    "clip.mp4": "the scene: 17 frames of 64x64 at 8 fps (extend, extend_back, inpaint, outpaint, v2a)",
    "first.png": "its first frame (i2v)",
    "mask.png": "white where inpaint generates (the centre 32x32), black where the clip is kept",
    "border.png": "its inverse: white where outpaint generates (around the centre 32x32, which it keeps)",
    "start.mp4": "the scene's first 9 frames (interpolate's start)",
    "end.mp4": "its last 9 frames (interpolate's end)",
    "structure.mkv": "its silhouettes, lossless (stylize)",
    "sound.wav": "its soundtrack (a2v)",
    "caption.txt": "its caption",
}


def example_mask(height: int = 64, width: int = 64) -> np.ndarray:
    """``(H, W, 3)`` uint8: white over the centre half of each side, black elsewhere."""
    mask = np.zeros((height, width, 3), np.uint8)
    mask[height // 4:3 * height // 4, width // 4:3 * width // 4] = 255
    return mask


def write_examples(out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the example inputs of held-out scene ``seed`` into ``out`` (all or nothing)."""
    world = ShapesConfig()
    clip = make_clip(EVAL_SEED_START + seed, world)
    half = len(clip.video) // 2
    with atomic_output_dir(out, overwrite=overwrite, command="data examples") as tmp:
        write_video(tmp / "clip.mp4", clip.video, fps=world.fps)
        write_image(tmp / "first.png", clip.video[0])
        write_image(tmp / "mask.png", example_mask(world.height, world.width))
        write_image(tmp / "border.png", 255 - example_mask(world.height, world.width))
        write_video(tmp / "start.mp4", clip.video[:half + 1], fps=world.fps)
        write_video(tmp / "end.mp4", clip.video[half:], fps=world.fps)
        write_video(tmp / "structure.mkv", clip.structure, fps=world.fps, quality="lossless")
        write_audio(tmp / "sound.wav", clip.audio, sample_rate=world.sample_rate)
        (tmp / "caption.txt").write_text(clip.caption + "\n")
    return Path(out)


__all__ = ["FILES", "example_mask", "write_examples"]
