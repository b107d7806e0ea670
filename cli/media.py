"""`videolm media info | convert`: what a video file holds, and re-encoding one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from videolm.cli.args import Command, input_file, print_json, size
from videolm.core.config import check_range
from videolm.core.errors import MediaError, UsageError
from videolm.core.outputs import check_output_file
from videolm.data.media import probe_video, read_audio, read_video, write_video


@dataclass
class InfoArgs:
    files: list[str] = field(default_factory=list, metadata={"positional": True})  # video files


def run_info(args: InfoArgs) -> int:
    if not args.files:
        raise UsageError("give one or more media files: videolm media info FILE [FILE ...]")
    found = []
    for path in args.files:  # every file looked into before anything is printed
        try:
            input_file(path, "")
            found.append({"file": path, **asdict(probe_video(path))})
        except UsageError as e:
            raise UsageError(str(e).strip()) from None
        except MediaError as e:
            raise UsageError(f"{path}: {e.cause}") from None
    for info in found:
        print_json(info)
    return 0


@dataclass
class ConvertArgs:
    input: str = field(metadata={"positional": True})  # any video ffmpeg reads
    output: str = field(metadata={"positional": True})  # .mp4, .mov, .mkv, .webm or .gif
    fps: float | None = None  # resample to this frame rate (default: keep)
    size: str | None = None  # resize to N or HxW (default: keep)
    fit: Literal["crop", "pad", "stretch"] = "crop"  # aspect rule when resizing
    quality: Literal["default", "high", "lossless"] = "default"  # default: H.264 yuv420p; high: yuv444p; lossless:
    #   FFV1 (.mkv) or x264rgb
    sample_rate: int = 16000  # audio sample rate
    overwrite: bool = False  # replace OUTPUT if it exists

    def __post_init__(self):
        check_range(self, 0, 240, "fps", low_open=True)
        check_range(self, 1000, 384_000, "sample_rate")


def run_convert(args: ConvertArgs) -> int:
    input_file(args.input, "INPUT")
    check_output_file(args.output, args.overwrite, inputs=(args.input,), flag="OUTPUT")
    frames = read_video(args.input, fps=args.fps, size=size(args.size), fit=args.fit)  # (T, H, W, 3)
    audio = None
    if not args.output.lower().endswith(".gif"):
        try:
            audio = read_audio(args.input, sample_rate=args.sample_rate)
        except MediaError as e:
            if "no audio" not in str(e):
                raise
    fps = args.fps or probe_video(args.input).fps
    write_video(args.output, frames, fps=fps, audio=audio, sample_rate=args.sample_rate, quality=args.quality)
    h, w = frames.shape[1:3]
    even = "" if args.output.lower().endswith(".gif") or (h % 2 == 0 and w % 2 == 0) else \
        f" (stored as {h + h % 2}x{w + w % 2}: the video codec needs even sides; the last row/column repeats)"
    print(f"wrote {len(frames)} frames of {h}x{w} at {fps:g} fps to {args.output}{even}")
    return 0


COMMANDS = {
    "info": Command(InfoArgs, run_info, "print what video files hold, as JSON lines",
                    "Print fps, frames, duration, size and audio presence of each video file."),
    "convert": Command(ConvertArgs, run_convert, "re-encode a video (e.g. a dataset's lossless .mkv to .mp4 or .gif)",
                       "Read INPUT (any video ffmpeg reads), optionally resample and resize it, and write OUTPUT "
                       "(.mp4, .mov, .mkv, .webm or .gif by extension). The audio track is carried over where the "
                       "output can hold it."),
}
