"""How a clip's frames and pixels divide into the video tokenizer's latent grid, and the conventions the
tasks and the DiT share about which latent frames are given (``extend``'s context, ``interpolate``'s
start). The tokenizer compresses 4x in time (the first frame alone, then groups of 4) and 8x in space."""

from __future__ import annotations

from videolm.tokenizers.video import SPACE_DOWN, TIME_DOWN


def latent_frames(num_frames: int) -> int:
    return 1 + (num_frames - 1) // TIME_DOWN


def frames_of(latents: int) -> int:
    """Video frames that ``latents`` latent frames hold."""
    return 1 + TIME_DOWN * (latents - 1)


def context_latents(t: int) -> int:
    """``extend``: latent frames of context (the first ones); the rest are generated. 3 of 5."""
    return (t + 1) // 2


def start_latents(t: int) -> int:
    """``interpolate``: latent frames given at the start (and tokenized at the end). 2 of 5."""
    return max(1, (t - 1) // 2)


def grid_of(height: int, width: int) -> tuple[int, int]:
    return height // SPACE_DOWN, width // SPACE_DOWN


def parse_clip_size(text: str, frames: int | None = None, what: str = "size") -> tuple[int, int, int]:
    """``"HxW"`` or ``"HxWxN"`` (N frames; ``frames`` when not given) -> ``(H, W, N)``, checked: H and
    W multiples of the tokenizer's stride, N = 1 + 4k. A `ValueError` naming ``what`` otherwise."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 2 and frames is not None:
        parts.append(frames)
    if len(parts) != 3:
        raise ValueError(f"{what} {text!r}: write HxW or HxWxN (height x width x frames), e.g. 48x80x17")
    h, w, n = parts
    if min(h, w) < SPACE_DOWN or h % SPACE_DOWN or w % SPACE_DOWN or h * w > 4096 * 4096:
        raise ValueError(f"{what} {text!r}: height and width must be multiples of {SPACE_DOWN}")
    if n < 1 or (n - 1) % TIME_DOWN:
        raise ValueError(f"{what} {text!r}: {n} frames; a clip has 1 + {TIME_DOWN}k frames (1, 5, 9, 13, 17, ...)")
    return h, w, n


def size_name(height: int, width: int, frames: int | None = None) -> str:
    return f"{height}x{width}" + (f"x{frames}" if frames is not None else "")


__all__ = ["SPACE_DOWN", "TIME_DOWN", "context_latents", "frames_of", "grid_of", "latent_frames", "parse_clip_size",
           "size_name", "start_latents"]
