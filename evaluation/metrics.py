"""Scores for generated Shapes outputs against what was asked: plain arrays in, numbers out.

Nothing here loads a model. The probe classifier (``videolm.evaluation.probe``) turns generated
frames into predicted attributes; these functions compare them, and the raw audio and pixels,
with the request:

- ``match_objects``: attribute accuracy of predicted objects against wanted ones, under the
  object pairing that scores best (objects have no order a caption could fix).
- ``tone_accuracy``: is the audio's dominant tone the one the shapes hum? (the tokenizer
  evaluation's ``frequency_agreement``, against the tones the objects should make).
- ``click_times`` / ``bounce_timing_error``: when the bounce clicks sound, and how far that is
  from the bounces.
- ``silhouette_iou`` / ``silhouette_colors``: for ``stylize``, how well the generated objects
  cover the structure video's silhouettes, and which palette colours fill them.
- PSNR / SSIM (`videolm.core.metrics`): pixel fidelity against a ground truth clip, optionally only
  inside a mask (the filled region of inpaint/outpaint).
"""

from __future__ import annotations

import itertools

import numpy as np

from videolm.data.shapes import AMPLITUDES, ATTRIBUTES, PALETTE, STRUCTURE_LEVELS, TONES
from videolm.tokenizers.audio import frequency_agreement

FOREGROUND_THRESHOLD = 128  # max channel: every palette colour has one >= 230, every background <= 110


# ------------------------------------------------------------------------------------ objects


def match_objects(wanted: list[dict], predicted: list[dict], attributes=ATTRIBUTES) -> dict[str, tuple[int, int]]:
    """Per attribute, (correct, total) over the ``wanted`` objects.

    Predicted objects are paired one-to-one with wanted ones by the pairing with the most correct
    attributes in all (every pairing is tried; clips have at most 2 objects). A wanted object left
    without a partner (fewer predictions than wanted) is wrong on every attribute; surplus
    predictions cost nothing here (the probe's object count is scored separately).
    """
    slots = list(range(len(predicted))) + [None] * len(wanted)  # None: no partner
    best, best_score = None, -1
    for pairing in itertools.permutations(slots, len(wanted)):
        hits = [[p is not None and predicted[p].get(a) == w.get(a) for a in attributes] for w, p in zip(wanted, pairing)]
        score = sum(map(sum, hits))
        if score > best_score:
            best, best_score = hits, score
    return {a: (sum(row[i] for row in best), len(wanted)) for i, a in enumerate(attributes)}


# -------------------------------------------------------------------------------------- audio


def expected_hum(objects: list[dict], num_samples: int, sample_rate: int = 16000) -> np.ndarray:
    """The tones ``objects`` should hum, without clicks: (num_samples,) float64.

    Amplitude follows the object's size when given (large 0.3, small 0.15); without a size every
    tone is equally loud, so each counts as dominant.
    """
    t = np.arange(num_samples) / sample_rate
    hum = np.zeros(num_samples)
    for obj in objects:
        amplitude = AMPLITUDES.get(obj.get("size"), 0.3)
        hum += amplitude * np.sin(2 * np.pi * TONES[obj["shape"]] * t)
    return hum


def tone_accuracy(wave: np.ndarray, objects: list[dict], sample_rate: int = 16000, tol: float = 0.03) -> bool:
    """True when ``wave``'s dominant frequency is the tone of the loudest of ``objects`` (within ``tol``).

    ``wave``: (S,) float. This is the tokenizer evaluation's ``frequency_agreement`` with the
    objects' clean hum as the reference, so it is tie-aware the same way: when two objects hum
    equally loud (same size), either tone counts.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    if not objects:
        raise ValueError("tone_accuracy: no objects to compare the audio with")
    return bool(frequency_agreement(expected_hum(objects, wave.size, sample_rate), wave, sample_rate, tol=tol))


def _highpass(wave: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Zero the spectrum below ``cutoff_hz``: the tones (<= 740 Hz) go, the broadband clicks stay.

    The signal is mirrored first, so the FFT's wrap-around joins it to itself without the jump
    that would otherwise ring like a click at both ends.
    """
    mirrored = np.concatenate([wave, wave[::-1]])
    spectrum = np.fft.rfft(mirrored)
    spectrum[: int(np.ceil(cutoff_hz * mirrored.size / sample_rate))] = 0
    return np.fft.irfft(spectrum, n=mirrored.size)[: wave.size]


def click_times(wave: np.ndarray, sample_rate: int = 16000, cutoff_hz: float = 2000.0, window_s: float = 0.0025,
                threshold: float = 0.04, min_gap_s: float = 0.06) -> list[float]:
    """Onsets in seconds of the bounce clicks in ``wave`` ((S,) float).

    Clicks are 15 ms decaying noise bursts (peak 0.5) over sine tones: above ``cutoff_hz`` only the
    clicks have energy. The high-passed signal's RMS over windows of ``window_s`` is compared with
    ``threshold`` (or 4x the median window, if a noisy output has a higher floor); each run of loud
    windows starts one click, and onsets closer than ``min_gap_s`` merge (two objects bouncing on
    the same frame make one click). An onset is the start of its first loud window.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    hop = max(1, round(window_s * sample_rate))
    n = wave.size // hop
    if n == 0:
        return []
    high = _highpass(wave - wave.mean(), sample_rate, cutoff_hz)
    rms = np.sqrt((high[: n * hop].reshape(n, hop) ** 2).mean(1))  # (windows,)
    loud = rms > max(threshold, 4 * float(np.median(rms)))
    starts = np.flatnonzero(loud & ~np.concatenate([[False], loud[:-1]]))
    onsets: list[float] = []
    for k in starts:
        t = k * hop / sample_rate
        if not onsets or t - onsets[-1] >= min_gap_s:
            onsets.append(t)
    return onsets


def bounce_timing_error(wave: np.ndarray, bounce_frames: list[int], fps: int = 8, sample_rate: int = 16000) -> float | None:
    """Mean absolute error in seconds between the clicks heard in ``wave`` and the bounces.

    Expected click times are the distinct ``bounce_frames`` / fps (two objects bouncing on one
    frame make one click). Each expected bounce scores the distance to its nearest detected click,
    capped at one frame period (1 / fps), which is also what a bounce scores when no click is
    heard at all. Each detected click more than half a frame period from every bounce is spurious
    and scores one frame period too. The error is the mean over expected bounces and spurious
    clicks together, so it lies in [0, 1 / fps]. None for a clip without bounces.
    """
    expected = np.array(sorted(set(bounce_frames)), dtype=np.float64) / fps
    if expected.size == 0:
        return None
    period = 1.0 / fps
    clicks = np.array(click_times(wave, sample_rate))
    if clicks.size == 0:
        return period
    gaps = np.abs(expected[:, None] - clicks[None, :])  # (bounces, clicks)
    errors = list(np.minimum(gaps.min(1), period))
    errors += [period] * int((gaps.min(0) > period / 2).sum())
    return float(np.mean(errors))


# ------------------------------------------------------------------------------------- pixels


def foreground(frames: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Object pixels of uint8 frames (..., 3): bool (...), true where some channel exceeds ``threshold``."""
    return np.asarray(frames).max(-1) > threshold


def silhouette_iou(frames: np.ndarray, structure: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> float:
    """IoU over the whole clip between the generated objects and the structure's silhouettes.

    ``frames``: (T, H, W, 3) uint8 generated clip (stylize draws on black); ``structure``:
    (T, H, W, 3) or (T, H, W) uint8, silhouettes > 0. 1.0 when both are empty.
    """
    fg = foreground(frames, threshold)  # (T, H, W)
    sil = _gray(structure) > 0
    if fg.shape != sil.shape:
        raise ValueError(f"silhouette_iou: frames {fg.shape} and structure {sil.shape} differ in size")
    union = int((fg | sil).sum())
    return 1.0 if union == 0 else float((fg & sil).sum() / union)


def nearest_color(rgb) -> str:
    """The palette colour nearest (Euclidean RGB) to ``rgb``."""
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names], dtype=np.float64)  # (colors, 3)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=np.float64)) ** 2).sum(1)))]


def silhouette_colors(frames: np.ndarray, structure: np.ndarray) -> list[str]:
    """Per object in the structure video (level 255 first, then 160), the palette colour nearest to
    the per-channel median of the generated pixels inside its silhouette.

    ``frames``: (T, H, W, 3) uint8; ``structure``: (T, H, W, 3) or (T, H, W) uint8. Structure levels
    are read to the nearest one (so a lossy-coded structure video still works); objects absent from
    the structure are left out of the list.
    """
    gray = _gray(structure).astype(np.int16)
    levels = np.array(STRUCTURE_LEVELS, dtype=np.int16)
    label = np.abs(gray[..., None] - levels).argmin(-1)  # (T, H, W): index into STRUCTURE_LEVELS
    pixels = np.asarray(frames).reshape(-1, 3)
    colors = []
    for k in range(1, len(STRUCTURE_LEVELS)):
        inside = (label == k).reshape(-1)
        if inside.any():
            colors.append(nearest_color(np.median(pixels[inside], axis=0)))
    return colors


def _gray(structure: np.ndarray) -> np.ndarray:
    structure = np.asarray(structure)
    return structure[..., 0] if structure.ndim == 4 else structure


__all__ = [
    "ATTRIBUTES",
    "bounce_timing_error",
    "click_times",
    "expected_hum",
    "foreground",
    "match_objects",
    "nearest_color",
    "silhouette_colors",
    "silhouette_iou",
    "tone_accuracy",
]
