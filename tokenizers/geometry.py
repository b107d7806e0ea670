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


__all__ = ["SPACE_DOWN", "TIME_DOWN", "context_latents", "frames_of", "grid_of", "latent_frames", "start_latents"]
