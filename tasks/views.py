"""The clip views the tasks read besides the clip itself, and how a clip's latent frames divide.

A causal video tokenizer gives the first ``1 + 4k`` frames of a clip the same codes as the first
``1 + k`` latent frames of the whole clip, so the *beginning* of a clip is always a prefix of its
codes. Anything else a task conditions on is tokenized on its own, exactly as a user's input file
would be at generation time:

- ``tail``: the last frames of the clip, as many as `context_latents` latent frames hold (what
  ``extend_back`` continues backwards from);
- ``end``: the last frames, as many as `start_latents` hold (the end clip of ``interpolate``);
- ``loop``: the clip's first half played forward then back (``0 .. m .. 0``), a clip whose end
  flows into its start (the output of ``loop``);
- ``inpaint`` / ``outpaint``: the clip with a box of the token grid (inpaint) or everything
  outside one (outpaint) blacked out before tokenizing, so that no code of the prefix saw the
  hidden pixels; the task then replaces the hidden positions by ``<mask>`` as well.

Masks are boxes on the latent grid, ``(top, left, bottom, right)`` in latent cells (8x8 pixels),
drawn per clip from its seed.
"""

from __future__ import annotations

import numpy as np

from videolm.core.errors import UsageError
from videolm.tokenizers.geometry import SPACE_DOWN, context_latents, frames_of, grid_of, latent_frames, start_latents

VIEW_FIELDS = ("tail", "end", "loop", "inpaint", "outpaint")


def ping_pong(video: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` -> its frames ``0 .. m`` then ``m-1 .. 0`` with ``m = (T - 1) // 2``:
    T frames again when T is odd, and the last frame is the first."""
    m = (len(video) - 1) // 2
    return np.concatenate([video[:m + 1], video[:m][::-1]])


def random_box(rng: np.random.Generator, grid: tuple[int, int], inside: bool) -> tuple[int, int, int, int]:
    """A box on the latent grid: ``inside`` (inpaint: the hidden part) covers 1/4 to 9/16 of each
    side; otherwise (outpaint: the kept part) 3/8 to 3/4."""
    boxes = []
    for n in grid:
        lo, hi = (max(1, n // 4), max(1, (9 * n) // 16)) if inside else (max(1, (3 * n) // 8), max(1, (3 * n) // 4))
        size = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, n - size + 1))
        boxes.append((start, start + size))
    (top, bottom), (left, right) = boxes
    return top, left, bottom, right


def box_mask(box, grid: tuple[int, int], inside: bool) -> np.ndarray:
    """``(gh, gw)`` bool: True where hidden. ``inside``: the box is hidden; else all but the box."""
    top, left, bottom, right = box
    mask = np.zeros(grid, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask if inside else ~mask


def pixel_mask_to_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A pixel mask ``(H, W)`` (True or > 127: to generate) -> ``(gh, gw)`` bool: a latent cell is
    hidden when any of its pixels is."""
    gh, gw = grid
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(-1)
    m = m > (127 if m.dtype == np.uint8 else 0)
    if m.shape != (gh * SPACE_DOWN, gw * SPACE_DOWN):
        raise UsageError(f"mask of {m.shape[0]}x{m.shape[1]} pixels does not match the video's "
                         f"{gh * SPACE_DOWN}x{gw * SPACE_DOWN}")
    return m.reshape(gh, SPACE_DOWN, gw, SPACE_DOWN).any(axis=(1, 3))


def hide(video: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``video (T, H, W, 3)`` with the pixels of the hidden latent cells ``(gh, gw)`` set to black."""
    pixels = np.repeat(np.repeat(cells, SPACE_DOWN, 0), SPACE_DOWN, 1)  # (H, W)
    out = video.copy()
    out[:, pixels] = 0
    return out


def clip_views(video: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """The views of one clip ``(T, H, W, 3)`` (to be tokenized) and the metadata that places them:
    ``inpaint_box`` and ``outpaint_box``."""
    t = latent_frames(len(video))
    grid = grid_of(*video.shape[1:3])
    rng = np.random.default_rng([seed, 0x7A5C])
    inpaint_box, outpaint_box = random_box(rng, grid, True), random_box(rng, grid, False)
    views = {
        "tail": video[len(video) - frames_of(context_latents(t)):],
        "end": video[len(video) - frames_of(start_latents(t)):],
        "loop": ping_pong(video),
        "inpaint": hide(video, box_mask(inpaint_box, grid, True)),
        "outpaint": hide(video, box_mask(outpaint_box, grid, False)),
    }
    return views, {"inpaint_box": list(inpaint_box), "outpaint_box": list(outpaint_box)}


__all__ = ["VIEW_FIELDS", "box_mask", "clip_views", "hide", "pixel_mask_to_grid", "ping_pong", "random_box"]
