"""All media I/O for videolm: video, images and audio in and out, on PyAV (+ soundfile).

Frames are uint8 RGB arrays ``(T, H, W, 3)``; audio is float32 mono ``(S,)`` in [-1, 1].
Every read or write failure raises :class:`MediaError` naming the file and a short cause,
never a raw PyAV or soundfile exception. Writers are atomic: they encode into a hidden temp
file beside the target and rename it into place only when encoding succeeded.
"""

import contextlib
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from videolm.core.errors import MediaError

av.logging.set_level(av.logging.PANIC)

# Timestamps closer than this count as equal: GIF stores centiseconds and MKV milliseconds,
# so a frame meant for t = 0.125 s may carry 0.13 s.
_TIME_TOL = 0.006
_FITS = ("crop", "pad", "stretch")
_QUALITIES = ("default", "high", "lossless")
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
_AUDIO_CODECS = {"mp4": "aac", "mov": "aac", "matroska": "flac", "webm": "libopus"}
_SOUNDFILE_EXTS = {f".{name.lower()}" for name in sf.available_formats()} | {".oga", ".aif"}
_BITEXACT = {"fflags": "+bitexact"}


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video file, mostly from its metadata."""

    fps: float
    num_frames: int  # from the container's index when it has one, else duration * fps
    duration: float  # seconds
    width: int
    height: int
    has_audio: bool


# ----------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    """Fail early, with a plain cause, on paths no decoder should be handed."""
    try:
        if not path.exists():
            raise MediaError(path, "no such file")
        if path.is_dir():
            raise MediaError(path, "is a directory, not a file")
        if path.stat().st_size == 0:
            raise MediaError(path, "file is empty")
        if not os.access(path, os.R_OK):
            raise MediaError(path, "permission denied")
    except OSError as e:
        raise MediaError(path, f"cannot access: {_reason(e)}") from e


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


@contextlib.contextmanager
def _open(path):
    """Open a media file for reading; library errors inside the block become MediaError."""
    path = Path(path)
    _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise MediaError(path, "not a media file ffmpeg can read") from e
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(path, f"cannot open: {_reason(e)}") from e
    try:
        yield container
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(path, f"truncated or corrupt: {_reason(e)}") from e
    finally:
        container.close()


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(path, "no video stream")
    return container.streams.video[0]


def _stream_rate(stream) -> float | None:
    rate = stream.guessed_rate or stream.average_rate
    return float(rate) if rate else None


def _stream_duration(stream) -> float | None:
    """The video stream's own length in seconds (MKV keeps it in a DURATION tag), if known."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")  # "HH:MM:SS.fffffffff"
    try:
        h, m, s = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None


def _timed_frames(container, stream, start: float, path):
    """Decoded frames as ``(t, end, frame)``: seconds from the stream start at which the frame
    shows and stops showing. Seeks to the keyframe at or before `start` first.

    Raises MediaError if decoding runs out well before the length the container declares:
    truncated or corrupt files often end early without a decoder error.
    """
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if start > 0:
        container.seek(int((start + t0) / stream.time_base), stream=stream, backward=True)
    rate = _stream_rate(stream) or 25.0
    end = None
    for i, frame in enumerate(container.decode(stream)):
        t = frame.time - t0 if frame.time is not None else i / rate
        end = t + (float(frame.duration * stream.time_base) if frame.duration else 1.0 / rate)
        yield t, end, frame
    expected = _stream_duration(stream)
    if end is not None and expected is not None and end < expected - 1.5 / rate:
        raise MediaError(path, f"truncated or corrupt: video stops at {end:.2f}s "
                               f"of {expected:.2f}s")


def _scale(frame, width: int, height: int) -> np.ndarray:  # (height, width, 3)
    if (width, height) == (frame.width, frame.height):
        return frame.to_ndarray(format="rgb24")
    shrink = width * height < frame.width * frame.height
    interpolation = "AREA" if shrink else "BILINEAR"
    return frame.reformat(width=width, height=height, format="rgb24",
                          interpolation=interpolation).to_ndarray()


def _fit(frame, size, fit: str) -> np.ndarray:  # (H, W, 3)
    """Convert a frame to RGB at `size`, keeping aspect by centre crop or black bars."""
    if size is None:
        return _scale(frame, frame.width, frame.height)
    H, W = size
    if fit == "stretch":
        return _scale(frame, W, H)
    h, w = frame.height, frame.width
    s = max(H / h, W / w) if fit == "crop" else min(H / h, W / w)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    if fit == "crop":
        sh, sw = max(sh, H), max(sw, W)
        top, left = (sh - H) // 2, (sw - W) // 2
        return _scale(frame, sw, sh)[top:top + H, left:left + W]
    sh, sw = min(sh, H), min(sw, W)
    out = np.zeros((H, W, 3), np.uint8)
    top, left = (H - sh) // 2, (W - sw) // 2
    out[top:top + sh, left:left + sw] = _scale(frame, sw, sh)
    return out


class _Sampler:
    """Collects output frames, converting each source frame at most once."""

    def __init__(self, convert, limit):
        self.convert, self.limit = convert, limit
        self.frames, self._src, self._img = [], None, None

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.frames) >= self.limit

    def emit(self, frame) -> None:
        if frame is not self._src:
            self._src, self._img = frame, self.convert(frame)
        self.frames.append(self._img)


def _sample_at_rate(timed, out: _Sampler, fps: float, start: float) -> float | None:
    """For each time start + k/fps, emit the last frame at or before it (the first if none).

    Returns when the last decoded frame stops showing (None if none was decoded).
    """
    prev = prev_end = None
    for t, end, frame in timed:
        prev = frame if prev is None else prev
        while not out.full and start + len(out.frames) / fps < t - _TIME_TOL:
            out.emit(prev)
        if out.full:
            return prev_end
        prev, prev_end = frame, end
    while (prev is not None and not out.full
           and start + len(out.frames) / fps < prev_end - _TIME_TOL):
        out.emit(prev)
    return prev_end


def _sample_all(timed, out: _Sampler, start: float) -> float | None:
    """Emit the frame showing at `start`, then every later frame; returns like the above."""
    prev = end = None
    for t, end, frame in timed:
        if t < start - _TIME_TOL:
            prev = frame
            continue
        if prev is not None and not out.frames and t > start + _TIME_TOL:
            out.emit(prev)
        if not out.full:
            out.emit(frame)
        if out.full:
            break
    if prev is not None and not out.frames and start < end:
        out.emit(prev)
    return end


def read_video(path, fps=None, size=None, fit="crop", start=0.0, num_frames=None) -> np.ndarray:
    """Read a video (mp4, webm, mkv, avi, mov, gif, ...) as uint8 RGB ``(T, H, W, 3)``.

    fps: resample by taking, for each output time ``start + k / fps``, the last frame shown at
        or before it (frames before the first use the first); None keeps every frame.
    size: ``(H, W)`` to resize to. ``fit="crop"`` scales until the frame covers the target and
        crops the centre; ``"pad"`` scales to fit inside and centres it on black; ``"stretch"``
        ignores the aspect ratio.
    start: seconds from the start of the stream; seeks there rather than decoding from 0.
    num_frames: stop after this many output frames.
    """
    if fit not in _FITS:
        raise ValueError(f"fit must be one of {_FITS}, got {fit!r}")
    with _open(path) as container:
        stream = _video_stream(container, path)
        out = _Sampler(lambda frame: _fit(frame, size, fit), num_frames)
        timed = _timed_frames(container, stream, start, path)
        if fps is None:
            end = _sample_all(timed, out, start)
        else:
            end = _sample_at_rate(timed, out, float(fps), start)
    if not out.frames:
        if end is None:
            raise MediaError(path, "truncated or corrupt: decoded no frames")
        raise MediaError(path, f"start {start:.3f}s is past the end of the video ({end:.3f}s)")
    return np.stack(out.frames)  # (T, H, W, 3)


def probe_video(path) -> VideoInfo:
    """Size, rate, length and audio presence of a video; decodes only if metadata lacks them."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps, duration = _stream_rate(stream), _stream_duration(stream)
        if duration is None and container.duration:
            duration = container.duration / av.time_base
        num_frames = stream.frames
        if duration is None or fps is None:
            num_frames, duration = _count_frames(container, stream, path)
            fps = fps or num_frames / duration
        info = VideoInfo(fps=fps, num_frames=num_frames or max(1, round(duration * fps)),
                         duration=duration, width=stream.codec_context.width,
                         height=stream.codec_context.height,
                         has_audio=bool(container.streams.audio))
    return info


def _count_frames(container, stream, path) -> tuple[int, float]:
    """Decode the whole stream: (number of frames, when the last one stops showing)."""
    count, end = 0, None
    for _, end, _ in _timed_frames(container, stream, 0.0, path):
        count += 1
    if not count:
        raise MediaError(path, "truncated or corrupt: decoded no frames")
    return count, end


def num_frames_at(duration: float, fps: float) -> int:
    """How many frames ``read_video(fps=fps)`` gives for a video `duration` seconds long."""
    return max(0, math.ceil((duration - _TIME_TOL) * fps))


def read_image(path, size=None, fit="crop") -> np.ndarray:
    """Read a PNG or JPEG (or a video's first frame) as uint8 RGB ``(H, W, 3)``."""
    return read_video(path, size=size, fit=fit, num_frames=1)[0]


def read_audio(path, sample_rate=16000, start=0.0, duration=None) -> np.ndarray:
    """Read audio as float32 mono ``(S,)`` at `sample_rate`: channels averaged, then resampled.

    wav/flac/ogg (anything libsndfile reads) go through soundfile; video containers through
    PyAV's decoder for their first audio track. `start` and `duration` are in seconds.
    """
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_EXTS:
        mono, rate = _read_soundfile(path, start, duration)
    else:
        mono, rate = _read_av_audio(path, start, duration)
    audio = _resample(_finite(mono, path), rate, sample_rate)
    if duration is not None:
        audio = audio[:round(duration * sample_rate)]
    return audio  # (S,)


def carried_sound(video, out, frames: int, fps: float, sample_rate=16000) -> tuple[np.ndarray | None, str | None]:
    """The sound of ``video`` under its first ``frames`` frames, to be written with the pictures
    made from them at ``out``, and a note saying what became of it (None, None: it has no sound).
    The sound is carried as mono at ``sample_rate``; a GIF, or a track that will not decode, goes
    without it, and the note says so."""
    if not probe_video(video).has_audio:
        return None, None
    if Path(out).suffix.lower() == ".gif":
        return None, f"{video}: its sound is left out (a GIF holds none)"
    try:
        sound = read_audio(video, sample_rate, duration=frames / fps)
    except MediaError as e:
        return None, f"{video}: its sound is left out ({e})"
    return sound, f"{video}: its sound is kept, as mono {sample_rate // 1000} kHz"


def _finite(mono: np.ndarray, path: Path) -> np.ndarray:
    """The samples with NaN and infinite values set to silence, and a warning that counts them."""
    bad = ~np.isfinite(mono)
    if bad.any():
        warnings.warn(f"{path}: {int(bad.sum())} of {bad.size} audio samples are NaN or infinite; "
                      "read as silence (0)", stacklevel=3)
        mono = np.where(bad, np.float32(0), mono)
    return mono


def probe_audio(path) -> float:
    """Seconds of sound in an audio file (or a video's first audio track), read from its header;
    MediaError if there is none."""
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_EXTS:
        _check_file(path)
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise MediaError(path, f"not an audio file soundfile can read: {_reason(e)}") from e
        if not info.frames:
            raise MediaError(path, "holds no audio samples")
        return info.frames / info.samplerate
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        if stream.duration:
            return float(stream.duration * stream.time_base)
        return container.duration / av.time_base if container.duration else 0.0


def _read_soundfile(path: Path, start: float, duration) -> tuple[np.ndarray, int]:
    _check_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            f.seek(min(round(start * rate), f.frames))
            count = -1 if duration is None else round(duration * rate)
            data = f.read(count, dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise MediaError(path, f"not an audio file soundfile can read: {_reason(e)}") from e
    return data.mean(axis=1, dtype=np.float32), rate


def _read_av_audio(path: Path, start: float, duration) -> tuple[np.ndarray, int]:
    """The first audio track of a container, as mono at its own rate, cut to [start, +duration)."""
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        to_float = av.AudioResampler(format="fltp")  # keeps layout and rate
        chunks, first_t, rate = [], None, stream.rate
        stop = math.inf if duration is None else start + duration
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            if t >= stop:
                break
            first_t = t if first_t is None else first_t
            rate = frame.sample_rate
            chunks += [f.to_ndarray().mean(axis=0) for f in to_float.resample(frame)]  # (n,)
        chunks += [f.to_ndarray().mean(axis=0) for f in to_float.resample(None)]
    if first_t is None:
        raise MediaError(path, "truncated or corrupt: decoded no audio")
    mono = np.concatenate(chunks).astype(np.float32)
    skip = round((start - first_t) * rate)
    mono = mono[skip:] if skip >= 0 else np.concatenate([np.zeros(-skip, np.float32), mono])
    return (mono if duration is None else mono[:round(duration * rate)]), rate


def _resample(mono: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample float32 mono audio with libswresample."""
    if rate == target or mono.size == 0:
        return np.ascontiguousarray(mono, np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None], np.float32),
                                       format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in frames])


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _writing(path):
    """Yield a hidden temp path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (av.error.FFmpegError, OSError, sf.LibsndfileError) as e:
        raise MediaError(path, f"cannot write: {_reason(e)}", writing=True) from e
    finally:
        tmp.unlink(missing_ok=True)


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, "
                         f"got {frames.dtype} {frames.shape}")
    return frames


def _has_codec(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def _video_codec(fmt: str, quality: str, path) -> tuple[str, str, dict]:
    """(codec, pix_fmt, options) for a container format and a quality level."""
    if quality == "lossless":
        if fmt == "matroska":
            return "ffv1", "bgr0", {"threads": "1"}
        if fmt in ("mp4", "mov") and _has_codec("libx264rgb"):
            return "libx264rgb", "rgb24", {"qp": "0", "preset": "medium", "threads": "1"}
        raise MediaError(path, "lossless video needs .mkv (or .mp4/.mov with libx264rgb)")
    pix_fmt, crf = ("yuv444p", "10") if quality == "high" else ("yuv420p", "18")
    if fmt == "webm":
        return "libvpx-vp9", pix_fmt, {"crf": crf, "b": "0", "threads": "1"}
    if _has_codec("libx264"):
        return "libx264", pix_fmt, {"crf": crf, "preset": "medium", "threads": "1"}  # one thread: same bytes
    return "mpeg4", "yuv420p", {"qmin": "1", "qmax": "3"}


def _even(frames: np.ndarray) -> np.ndarray:  # (T, H + H % 2, W + W % 2, 3)
    """Pad odd heights/widths by repeating the last row/column, as 4:2:0 chroma needs."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path, frames, fps=8, audio=None, sample_rate=16000, quality="default") -> None:
    """Write uint8 ``(T, H, W, 3)`` frames (and optional float32 mono audio) to a video file.

    The extension picks the container: .mp4/.mov/.mkv/.webm, or .gif (via :func:`write_gif`,
    no audio). Video is H.264 (libx264; "mpeg4" when the PyAV build lacks libx264), VP9 in
    .webm. quality: "default" is yuv420p at crf 18 (plays everywhere); odd heights or widths
    are padded by repeating the last row/column, so reading back gives the even size.
    "high" is yuv444p at crf 10 (keeps the size). "lossless" is bit-exact RGB: FFV1 (bgr0)
    in .mkv, libx264rgb at qp 0 in .mp4/.mov. Audio is AAC in .mp4/.mov, FLAC in .mkv, Opus
    in .webm. Same inputs give byte-identical files (bitexact muxing, single-threaded encoders).
    """
    path = Path(path)
    if path.suffix.lower() == ".gif":
        if audio is not None:
            raise MediaError(path, "a GIF cannot hold audio")
        return write_gif(path, frames, fps=fps)
    if quality not in _QUALITIES:
        raise ValueError(f"quality must be one of {_QUALITIES}, got {quality!r}")
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(path, f"cannot write video with extension {path.suffix!r}")
    frames = _check_frames(frames)
    codec, pix_fmt, options = _video_codec(fmt, quality, path)
    if pix_fmt == "yuv420p":
        frames = _even(frames)
    with _writing(path) as tmp, av.open(str(tmp), "w", format=fmt, options=_BITEXACT) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001),
                                options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        audio_stream = None
        if audio is not None:
            audio_stream = out.add_stream(_AUDIO_CODECS[fmt], rate=sample_rate)
            audio_stream.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio_stream is not None:
            _encode_audio(out, audio_stream, audio, sample_rate)


def _encode_audio(out, stream, audio, sample_rate: int) -> None:
    audio = np.ascontiguousarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be float32 mono (S,), got shape {audio.shape}")
    frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")  # (1, S)
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _palette_graph(width: int, height: int) -> av.filter.Graph:
    """split -> palettegen (one palette from all frames) -> paletteuse without dithering."""
    graph = av.filter.Graph()
    src = graph.add_buffer(width=width, height=height, format="rgb24", time_base=Fraction(1, 1))
    split = graph.add("split")
    palettegen = graph.add("palettegen", "stats_mode=full")
    paletteuse = graph.add("paletteuse", "dither=none")
    sink = graph.add("buffersink")
    src.link_to(split)
    split.link_to(paletteuse, 0, 0)
    split.link_to(palettegen, 1, 0)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(sink)
    graph.configure()
    return graph


def write_gif(path, frames, fps=8) -> None:
    """Write frames as an animated GIF with one palette fitted to the whole clip.

    Clips with at most 255 distinct colours come back exactly. GIF delays are whole
    centiseconds, so rates that do not divide 100 alternate delays (8 fps: 13, 12, 13, ...).
    """
    frames = _check_frames(frames)
    T, H, W, _ = frames.shape
    graph = _palette_graph(W, H)
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 1)
        graph.push(frame)
    graph.push(None)
    paletted = []
    while True:
        try:
            paletted.append(graph.pull())
        except av.error.EOFError:
            break
    rate = Fraction(fps).limit_denominator(1001)
    with _writing(path) as tmp, av.open(str(tmp), "w", format="gif", options=_BITEXACT) as out:
        stream = out.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "pal8"
        for i, frame in enumerate(paletted):
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def write_audio(path, audio, sample_rate=16000, subtype="PCM_16") -> None:
    """Write float32 mono audio to .wav or .flac (16-bit PCM by default; "FLOAT" for wav)."""
    path = Path(path)
    formats = {".wav": "WAV", ".flac": "FLAC"}
    if path.suffix.lower() not in formats:
        raise MediaError(path, f"cannot write audio with extension {path.suffix!r}")
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be float32 mono (S,), got shape {audio.shape}")
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)  # libsndfile wraps around, not clips, on overflow
    with _writing(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype=subtype,
                 format=formats[path.suffix.lower()])
        if formats[path.suffix.lower()] == "WAV":
            _clear_peak_timestamp(tmp)


def _clear_peak_timestamp(path: Path) -> None:
    """Zero the write time libsndfile stamps into a float wav's PEAK chunk, so equal audio gives equal bytes."""
    with open(path, "r+b") as f:
        data = f.read(4096)  # the PEAK chunk sits in the header, before the samples
        at = 12  # after "RIFF", size, "WAVE"
        while at + 8 <= len(data) and data[at:at + 4] != b"data":
            size = int.from_bytes(data[at + 4:at + 8], "little")
            if data[at:at + 4] == b"PEAK":  # version (4 bytes), then the timestamp (4 bytes)
                f.seek(at + 12)
                f.write(b"\0\0\0\0")
                return
            at += 8 + size + size % 2


def write_image(path, image) -> None:
    """Write a uint8 ``(H, W, 3)`` image as PNG (lossless)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MediaError(path, f"cannot write an image with extension {path.suffix!r}")
    image = _check_frames(np.asarray(image)[None])[0]
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    codec.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    with _writing(path) as tmp:
        data = b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------- helpers


def frame_grid(frames, cols=None, pad=2, pad_value=160) -> np.ndarray:
    """Tile frames into one image with `pad` pixels of gray `pad_value` between and around the tiles.

    ``(T, H, W, 3)``: `cols` tiles per row (default: all T in one row), wrapping onto more
    rows. ``(N, T, H, W, 3)``: one clip per row, time left to right (`cols` is ignored).
    """
    frames = np.asarray(frames, np.uint8)
    if frames.ndim == 5:
        cols = frames.shape[1]
        frames = frames.reshape(-1, *frames.shape[2:])  # (N * T, H, W, 3)
    T, H, W, C = frames.shape
    cols = cols or T
    rows = -(-T // cols)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), pad_value, np.uint8)
    for i, frame in enumerate(frames):
        top, left = pad + (i // cols) * (H + pad), pad + (i % cols) * (W + pad)
        grid[top:top + H, left:left + W] = frame
    return grid  # (H', W', 3)


def write_grid(path, frames, **kw) -> None:
    """Write :func:`frame_grid` of `frames` as a PNG."""
    write_image(path, frame_grid(frames, **kw))


