"""`videolm data shapes | photos | folder | pack | examples`: make, index or pack datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from videolm.cli.args import Command, input_folder, print_json, progress
from videolm.core.config import check_clip_numbers, check_range
from videolm.core.outputs import check_output_dir
from videolm.data.examples import FILES, write_examples
from videolm.data.folder import FolderConfig, FolderDataset
from videolm.data.packs import ClipPack, write_pack
from videolm.data.photos import PhotoDataConfig, write_photos
from videolm.data.shapes_data import ShapesDataConfig, write_shapes


@dataclass
class ShapesArgs(ShapesDataConfig):
    out: str = field(kw_only=True)  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    overwrite: bool = False  # replace an earlier output of videolm in --out


def _write_world(args, config_class, write, name: str, files: str) -> int:
    """`data shapes` and `data photos`: check --out, write the clips with a progress bar, say what was written."""
    check_output_dir(args.out, args.overwrite)
    cfg = config_class(num=args.num, seed=args.seed, split=args.split, world=args.world)
    with progress(cfg.num, name) as bar:
        out = write(args.out, cfg, overwrite=args.overwrite, progress=bar.update)
    print(f"wrote {cfg.num} {cfg.split} clips (seeds {cfg.seeds.start}..{cfg.seeds.stop - 1}) to {out}/ with {files}")
    return 0


def run_shapes(args: ShapesArgs) -> int:
    return _write_world(args, ShapesDataConfig, write_shapes, "shapes", "manifest.jsonl")


@dataclass
class PhotosArgs(PhotoDataConfig):
    out: str = field(kw_only=True)  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    overwrite: bool = False  # replace an earlier output of videolm in --out


def run_photos(args: PhotosArgs) -> int:
    return _write_world(args, PhotoDataConfig, write_photos, "photos", "manifest.jsonl and sources.json")


def run_folder(args: FolderConfig) -> int:
    input_folder(args.root, "ROOT")
    print_json(args.dataset().summary())
    return 0


@dataclass
class PackArgs:
    root: str = field(metadata={"positional": True})  # the folder of videos
    out: str = field(kw_only=True)  # the pack's folder (new or empty, or an earlier output of videolm with --overwrite)
    frames: int = 17  # frames per clip, 1 + 4k
    fps: int = 8  # the frame rate clips are resampled to
    height: int = 64
    width: int = 64
    fit: Literal["crop", "pad", "stretch"] = "crop"  # aspect rule: cover then centre-crop, pad, or stretch
    stride: int | None = None  # frames between clip starts (None: --frames, no overlap); a file's tail is kept
    held_out: float = 0.1  # share of videos in the held-out part (by a hash of the path; at least one of two or more)
    shard_clips: int = 64  # clips per shard file
    overwrite: bool = False  # replace an earlier output of videolm in --out

    def __post_init__(self):
        check_clip_numbers(self)
        check_range(self, 1, None, "stride", "shard_clips")
        check_range(self, 0, 0.9, "held_out")

    def dataset(self) -> FolderDataset:
        return FolderConfig(self.root, self.frames, self.fps, self.height, self.width, self.fit,
                            stride=self.stride, held_out=self.held_out).dataset()


def run_pack(args: PackArgs) -> int:
    root = input_folder(args.root, "ROOT")
    check_output_dir(args.out, args.overwrite, inputs=[root])
    folder = args.dataset()
    with progress(len(folder), "clips") as bar:
        out = write_pack(args.out, folder, args.shard_clips, overwrite=args.overwrite, progress=bar.update)
    parts = {part: ClipPack(out, part).summary() for part in ("train", "eval")}
    print(f"packed {parts['train']['clips']} training and {parts['eval']['clips']} held-out clips "
          f"({parts['train']['shards'] + parts['eval']['shards']} shards) into {out}/")
    return 0


@dataclass
class ExamplesArgs:
    out: str  # output folder (new or empty, or an earlier output of videolm with --overwrite)
    seed: int = 0  # which held-out scene
    overwrite: bool = False  # replace an earlier output of videolm in --out

    def __post_init__(self):
        check_range(self, 0, 999_999, "seed")


def run_examples(args: ExamplesArgs) -> int:
    out = write_examples(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {', '.join(sorted(FILES))} to {out}/")
    return 0


COMMANDS = {
    "shapes": Command(ShapesArgs, run_shapes, "write a Shapes dataset (video, structure video, audio, manifest.jsonl)",
                      "Write N seeded Shapes clips to --out: lossless video/*.mkv, structure/*.mkv, audio/*.wav, "
                      "manifest.jsonl (one JSON per clip) and config.yaml. The same seed gives byte-identical files; "
                      "--split eval draws the held-out seeds (>= 1,000,000).", config="data shapes",
                      schema=ShapesDataConfig),
    "photos": Command(PhotosArgs, run_photos, "write photo-world clips (real photographs, synthetic motion)",
                      "Write N seeded clips cut from real photographs (scikit-image's and matplotlib's sample images) "
                      "with camera motion (pan, zoom, rotation, shake), a moving cut-out object and light changes: "
                      "lossless video/*.mkv, manifest.jsonl (caption, photo), config.yaml and sources.json (each "
                      "photograph's source and licence). --split eval uses only the held-out photographs.",
                      config="data photos", schema=PhotoDataConfig),
    "folder": Command(FolderConfig, run_folder, "index a folder of your videos as fixed-length clips, print a JSON summary",
                      "Index every video under ROOT (mp4 webm mkv avi mov gif) as clips of --frames frames at --fps, "
                      "resized to --size. Captions come from NAME.txt or captions.jsonl, audio from the file's track "
                      "or NAME.wav. The index is cached in videolm's cache folder (VIDEOLM_CACHE, or "
                      "~/.cache/videolm); ROOT itself is only read. Unreadable files are skipped with one warning "
                      "each.", config="data folder", schema=FolderConfig),
    "pack": Command(PackArgs, run_pack, "decode a folder of videos once into shards of clips (a clip pack)",
                    "Cut every video under ROOT into clips as `data folder` does (--frames, --fps, --size, --fit, "
                    "--stride; --held-out of the videos kept apart by a hash of their path), decode each once and "
                    "write them to --out as shards of --shard-clips clips (NumPy arrays, with each clip's caption, "
                    "file and start) and pack.json. Every --data that takes a folder takes the pack, or its URL once "
                    "copied to object storage (s3://, gs://, https://, ... with the matching fsspec package): "
                    "training then reads clips, never videos, and keeps fetched shards in videolm's cache.",
                    config="data pack"),
    "examples": Command(ExamplesArgs, run_examples,
                        "write example inputs for every task (the files the README's commands use)",
                        "Write a held-out Shapes scene as the inputs of every task: " +
                        "; ".join(f"{name}: {what}" for name, what in FILES.items()) + "."),
}
