"""`videolm tokenizer eval`: a tokenizer's reconstruction on held-out clips, as one JSON-ready dict."""

from __future__ import annotations

import time

import numpy as np
import torch

from videolm.core.errors import UsageError
from videolm.core.models import REFINER_DIR, resolve_model
from videolm.core.saving import CONFIG_NAME
from videolm.core.metrics import psnr, same_bits_baseline, ssim
from videolm.data.media import carried_sound, probe_video, read_video, write_video
from videolm.data.packs import is_pack
from videolm.data.sources import ClipSource
from videolm.data.worlds import is_world
from videolm.diffusion.refiner import load_refiner, refine
from videolm.tasks.tokenizing import load_tokenizer, load_video_tokenizer
from videolm.tokenizers.video import SPACE_DOWN, TIME_DOWN, to_frames, to_tensor
from videolm.tokenizers.modality import AudioModality, VideoModality, codebook_stats, collate_clips


@torch.no_grad()
def evaluate_tokenizer(model: str, data: str = "shapes", num: int = 256, seed: int = 0, batch_size: int = 8,
                       modality: str | None = None, frames: int = 17, size: tuple[int, int] = (64, 64),
                       held_out: float | None = None) -> dict:
    """Reconstruction quality on held-out clips, as one JSON-ready dict; for video, with the same
    figures of the same-bits baseline (`videolm.core.metrics.same_bits_baseline`) beside them."""
    if held_out is not None and is_world(data):
        raise UsageError(f"--held-out: for a folder of videos or a pack; {data}'s held-out clips are its own "
                         "(seeds from 1,000,000 on)")
    tok = load_tokenizer(model, modality)
    is_video = tok.kind == "video_tokenizer"
    ds = ClipSource(data, num, seed, "eval", frames, size[0], size[1], held_out=held_out).dataset()
    if len(ds) == 0:
        raise UsageError(f"--data {data}: no clips to evaluate")
    adapter = VideoModality() if is_video else AudioModality()
    metrics: dict[str, list] = {}
    codes, seconds = [], 0.0
    for start in range(0, len(ds), batch_size):
        batch = collate_clips([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        x = adapter.inputs(batch, train=False)
        t0 = time.perf_counter()
        c = tok.encode(x)
        recon = tok.decode(c, x.shape[-2], x.shape[-1]) if is_video else tok.decode(c, x.shape[-1])
        seconds += time.perf_counter() - t0
        codes.append(adapter.flat_codes(c))
        for k, v in adapter.metrics(x, recon).items():
            metrics.setdefault(k, []).append(v)
        if is_video:  # the trivial codec at the same rate, on the same clips
            for k, v in adapter.metrics(x, same_bits_baseline(x)).items():
                metrics.setdefault(f"baseline_{k}", []).append(v)
    result = {k: round(float(torch.cat(v).mean()), 4) for k, v in metrics.items()}
    result.update({k: round(v, 4) for k, v in codebook_stats(torch.cat(codes), tok.config.codebook_size).items()})
    result["clips_per_s"] = round(len(ds) / seconds, 2)
    result["clips"] = len(ds)
    if not is_world(data):  # which of the folder's (or pack's) clips these were
        result["held_out"] = "the pack's held-out part" if is_pack(data) else held_out or 0.1
    return result




# ------------------------------------------------------------------------------------ reconstruct


CHUNK_PIXELS = 17 * 256 * 256  # frames x pixels per pass; longer or larger clips go in 1 + 4k-frame chunks
MAX_PIXELS = 2048 * 2048  # per frame, at the input's own size (--size resizes larger inputs)


def fit_strides(height: int, width: int, frames: int) -> tuple[int, int, int, list[str]]:
    """The largest clip inside (frames, height, width) that the tokenizer's strides take (H, W
    multiples of 8, 1 + 4k frames), and what was cut to get it."""
    h, w = height - height % SPACE_DOWN, width - width % SPACE_DOWN
    t = 1 + (frames - 1) // TIME_DOWN * TIME_DOWN
    notes = []
    if (h, w) != (height, width):
        notes.append(f"centre-cropped from {height}x{width} to {h}x{w} (the tokenizer takes multiples of "
                     f"{SPACE_DOWN} pixels)")
    if t != frames:
        notes.append(f"kept the first {t} of {frames} frames (the tokenizer takes 1 + {TIME_DOWN}k frames)")
    return h, w, t, notes


@torch.no_grad()
def roundtrip(tok, x: torch.Tensor) -> torch.Tensor:
    """Encode and decode a clip (1, 3, T, H, W), in chunks of 1 + 4k frames that share their first
    frame with the previous chunk's last when the clip is too large for one pass."""
    _, _, t, h, w = x.shape
    span = max(1, CHUNK_PIXELS // (h * w * TIME_DOWN)) * TIME_DOWN  # frames a chunk adds
    if t <= span + 1:
        return tok.decode(tok.encode(x), h, w)
    pieces, start = [], 0
    while start < t - 1:
        end = min(t, start + span + 1)
        piece = tok.decode(tok.encode(x[:, :, start:end]), h, w)
        pieces.append(piece if start == 0 else piece[:, :, 1:])
        start = end - 1
    return torch.cat(pieces, dim=2)


def _folder_refiner(model: str):
    """The refiner of a model folder (``refiner/``), or None when it has none."""
    folder = resolve_model(model) / REFINER_DIR
    return load_refiner(folder) if (folder / CONFIG_NAME).is_file() else None


@torch.no_grad()
def refine_chunks(refiner, clip: np.ndarray, chunk: int = 17) -> np.ndarray:
    """A decoded clip uint8 (T, H, W, 3) through the refiner, ``chunk`` frames at a time."""
    return np.concatenate([refine(refiner, clip[None, i:i + chunk], seed=0)[0] for i in range(0, len(clip), chunk)])


def reconstruct(model: str, video: str, out: str, size: tuple[int, int] | None = None, frames: int | None = None,
                fit: str = "crop", refine_output: bool | None = None) -> dict:
    """Encode and decode a user's clip, write it to ``out`` at the input's frame rate, and measure it
    (PSNR, SSIM) beside the same-bits baseline. ``refine_output`` (default: when ``model`` is a
    model folder with a refiner) passes the decode through the refiner; ``psnr_decoded`` then
    says what the decode alone scored. Returns a JSON-ready summary with ``notes``: every change
    made to the input."""
    tok = load_video_tokenizer(model)
    refiner = _folder_refiner(model)
    if refine_output and refiner is None:
        raise UsageError(f"--refine: {model} has no refiner ({REFINER_DIR}/{CONFIG_NAME})")
    refiner = refiner if refine_output is not False else None
    info = probe_video(video)
    if size is None and info.height * info.width > MAX_PIXELS:
        raise UsageError(f"{video}: {info.height}x{info.width} frames are more than {MAX_PIXELS:,} pixels; "
                         "give a smaller --size")
    notes = []
    clip = read_video(video, size=size, fit=fit, num_frames=frames)  # (T, H, W, 3)
    if size is not None and size != (info.height, info.width):
        notes.append(f"resized from {info.height}x{info.width} to {size[0]}x{size[1]} (--size, --fit {fit})")
    if frames is not None:
        if frames > len(clip):
            raise UsageError(f"--frames {frames}: {video} has only {len(clip)} frames")
        total = info.num_frames or len(clip)
        if frames < total:
            notes.append(f"kept the first {frames} of {total} frames (--frames)")
    h, w, t, cut = fit_strides(clip.shape[1], clip.shape[2], len(clip))
    notes += cut
    if h < SPACE_DOWN or w < SPACE_DOWN:
        raise UsageError(f"{video}: {clip.shape[1]}x{clip.shape[2]} pixels is smaller than one token "
                         f"({SPACE_DOWN}x{SPACE_DOWN})")
    top, left = (clip.shape[1] - h) // 2, (clip.shape[2] - w) // 2
    clip = np.ascontiguousarray(clip[:t, top:top + h, left:left + w])
    x = to_tensor(clip)
    made = decoded = to_frames(roundtrip(tok, x))[0]
    if refiner is not None:
        made = refine_chunks(refiner, decoded)
    base = to_frames(same_bits_baseline(x))[0]
    sound, note = carried_sound(video, out, t, info.fps or 8)
    notes += [note] if note else []
    write_video(out, made, fps=info.fps or 8, audio=sound)
    extra = {"refined": refiner is not None}
    if refiner is not None:
        extra.update(psnr_decoded=round(psnr(decoded, clip), 2), ssim_decoded=round(ssim(decoded, clip), 4))
    return {"out": str(out), "size": [h, w], "frames": t, "fps": info.fps,
            "psnr": round(psnr(made, clip), 2), "ssim": round(ssim(made, clip), 4), **extra,
            "baseline_psnr": round(psnr(base, clip), 2), "baseline_ssim": round(ssim(base, clip), 4),
            "notes": notes}


__all__ = ["evaluate_tokenizer", "fit_strides", "reconstruct", "roundtrip"]
