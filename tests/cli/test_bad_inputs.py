"""Bad inputs and faults across every command, as a new or careless user makes them.

Each row runs the command line in a fresh working folder and asserts: the exit code (2: bad usage
or a bad input file; 1: a failure while working), one line on stderr that names the cause, no
traceback, and that nothing in the working folder was created, changed or deleted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from videolm.cli.main import main
from videolm.core.outputs import MARKER
from videolm.data.examples import write_examples
from videolm.data.media import write_image, write_video
from videolm.data.shapes import make_clip
from videolm.tokenizers.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DOCS_EXAMPLES = ROOT / "docs" / "examples"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Good and broken inputs, outside the working folder of each case."""
    root = tmp_path_factory.mktemp("inputs")
    write_examples(root / "ex")
    good = (root / "ex" / "clip.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "truncated.mp4").write_bytes(good[: len(good) * 2 // 5])
    (root / "folder.mp4").mkdir()
    write_image(root / "thin_mask.png", make_clip(0).video[0][:20].repeat(5, axis=1)[:, :100])  # 20x100
    write_image(root / "black_mask.png", make_clip(0).video[0] * 0)
    write_video(root / "wide.mp4", make_clip(0, _world(64, 112)).video, fps=8)
    return root


def _world(h, w):
    from videolm.data.shapes import ShapesConfig

    return ShapesConfig(height=h, width=w)


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


@pytest.fixture(scope="module")
def broken_models(debug_model_dir, tmp_path_factory) -> Path:
    """Model folders with one thing wrong each (the debug model's tokenizers, the shipped probe)."""
    root = tmp_path_factory.mktemp("models")

    def copy(name: str) -> Path:
        shutil.copytree(debug_model_dir, root / name)
        return root / name

    lm = copy("pickled") / "lm"
    (lm / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2)}, lm / "pytorch_model.bin")
    weights = copy("truncated") / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (copy("notjson") / "lm" / "config.json").write_text("{not json")
    config = copy("absurd") / "lm" / "config.json"
    data = json.loads(config.read_text())
    data.update(hidden_size=4_000_000, intermediate_size=8_000_000, head_dim=1_000_000)
    config.write_text(json.dumps(data))
    config = copy("negative") / "lm" / "config.json"
    data = json.loads(config.read_text())
    data.update(num_hidden_layers=-3)
    config.write_text(json.dumps(data))
    vocab = copy("bigvocab") / "lm" / "vocab.json"
    big = Vocabulary(text_size=5000, video_codes=4096, audio_levels=4, audio_codes=1024)
    big.save(vocab.parent)
    weights = copy("badtokenizer") / "video_tokenizer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5000])
    copy("norefiner")
    return root


def _config(tmp: Path, name: str, entry_file: Path, **changes) -> Path:
    """A copy of a shipped config with nested ``changes`` ("train.lr": value)."""
    data = yaml.safe_load(entry_file.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, key = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


def _run_folder(tmp: Path, name: str, command: str, checkpoint: bytes | None = None) -> Path:
    folder = tmp / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"command": command, "kind": "run"}))
    if checkpoint is not None:
        (folder / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
    return folder


class _Evil:
    """Unpickling this runs code: it must never happen."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


# --------------------------------------------------------------------------------------- cases
# (id, setup(ctx) -> argv, exit code, words the one-line message must hold)

def _gen(*args):
    return ["generate", *args]


CASES = [
    # -- outputs that would lose or misplace a user's files
    ("overwrite-dot", lambda c: (c.keep(), _gen("--task", "t2v", "--prompt", "a", "--out", ".", "--overwrite"))[1],
     2, ["working directory"]),
    ("overwrite-home", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", str(c.home()), "--overwrite"),
     2, ["home folder"]),
    ("overwrite-root", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", "/", "--overwrite"), 2, ["root"]),
    ("overwrite-parent", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", "..", "--overwrite"),
     2, ["working directory or a folder above it"]),
    ("overwrite-symlink", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.symlink(), "--overwrite"),
     2, ["symbolic link"]),
    ("overwrite-repo", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.repo(), "--overwrite"),
     2, ["repository"]),
    ("overwrite-user-folder", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.user_folder(),
                                             "--overwrite"), 2, ["not a folder videolm wrote"]),
    ("overwrite-mixed-folder", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.mixed_folder(),
                                              "--overwrite"), 2, ["did not write", "notes.txt"]),
    ("out-not-empty", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.user_folder()), 2, ["not empty"]),
    ("out-is-a-file", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.a_file()), 2, ["not a folder"]),
    ("out-under-a-file", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.a_file() + "/x"),
     2, ["is a file"]),
    ("out-in-proc", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", "/proc/videolm-x"), 2, ["cannot write"]),
    ("out-broken-symlink", lambda c: _gen("--task", "t2v", "--prompt", "a", "--out", c.broken_link()),
     2, ["symbolic link"]),
    ("convert-onto-input", lambda c: ["media", "convert", c.copy_clip(), c.copy_clip(), "--overwrite"],
     2, ["also an input"]),
    ("convert-onto-existing", lambda c: ["media", "convert", c.f("ex/clip.mp4"), c.a_file()], 2, ["exists"]),
    ("convert-bad-extension", lambda c: ["media", "convert", c.f("ex/clip.mp4"), "out.xyz"], 2, ["extension"]),
    ("eval-out-exists", lambda c: ["eval", "--out", c.a_file(), "--num", "2"], 2, ["exists"]),
    ("refiner-apply-onto-input", lambda c: ["refiner", "apply", "--video", c.copy_clip(), "--out", c.copy_clip()],
     2, ["also an input"]),
    ("fit-into-user-folder", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--shards",
                                        str(c.shards), "--out", c.user_folder()], 2, ["not a videolm run folder"]),
    ("fit-into-other-run", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--shards",
                                      str(c.shards), "--out", str(_run_folder(c.tmp, "r", "tokenizer fit"))],
     2, ["videolm tokenizer fit"]),
    ("tokenize-into-user-folder", lambda c: ["tokenize", "--num", "1", "--out", c.user_folder()], 2, ["not empty"]),
    ("shapes-into-symlink", lambda c: ["data", "shapes", "--out", c.symlink()], 2, ["symbolic link"]),
    # -- numbers out of bounds
    ("seed-2**70", lambda c: _gen("--task", "t2v", "--prompt", "a", "--seed", str(2**70), "--out", "o"),
     2, ["--seed", "whole number"]),
    ("seed-negative", lambda c: _gen("--task", "t2v", "--prompt", "a", "--seed", "-1", "--out", "o"), 2, ["--seed"]),
    ("temperature-inf", lambda c: _gen("--task", "t2v", "--prompt", "a", "--temperature", "inf", "--out", "o"),
     2, ["--temperature", "finite"]),
    ("temperature-nan", lambda c: _gen("--task", "t2v", "--prompt", "a", "--temperature", "nan", "--out", "o"),
     2, ["--temperature", "finite"]),
    ("temperature-negative", lambda c: _gen("--task", "t2v", "--prompt", "a", "--temperature", "-1", "--out", "o"),
     2, ["--temperature"]),
    ("top-p-zero", lambda c: _gen("--task", "t2v", "--prompt", "a", "--top-p", "0", "--out", "o"), 2, ["--top-p"]),
    ("top-p-above-1", lambda c: _gen("--task", "t2v", "--prompt", "a", "--top-p", "1.5", "--out", "o"), 2, ["--top-p"]),
    ("top-k-zero", lambda c: _gen("--task", "t2v", "--prompt", "a", "--top-k", "0", "--out", "o"), 2, ["--top-k"]),
    ("cfg-negative", lambda c: _gen("--task", "t2v", "--prompt", "a", "--cfg-scale", "-2", "--out", "o"),
     2, ["--cfg-scale"]),
    ("frames-10000", lambda c: _gen("--task", "t2v", "--prompt", "a", "--frames", "10000", "--out", "o"), 2, ["--frames"]),
    ("frames-zero", lambda c: _gen("--task", "t2v", "--prompt", "a", "--frames", "0", "--out", "o"), 2, ["--frames"]),
    ("samples-100000", lambda c: _gen("--task", "t2v", "--prompt", "a", "--num-samples", "100000", "--out", "o"),
     2, ["--num-samples"]),
    ("samples-zero", lambda c: _gen("--task", "uncond", "--num-samples", "0", "--out", "o"), 2, ["--num-samples"]),
    ("steps-zero", lambda c: _gen("--task", "t2v", "--prompt", "a", "--backend", "dit", "--steps", "0", "--out", "o"),
     2, ["--steps"]),
    ("prompt-120kb", lambda c: _gen("--task", "t2v", "--prompt", "a red circle " * 10_000, "--out", "o"),
     2, ["--prompt", "characters"]),
    ("lm-fit-steps-negative", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--steps", "-5"],
     2, ["--steps"]),
    ("lm-fit-minutes-negative", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"),
                                           "--max-minutes", "-1"], 2, ["--max-minutes"]),
    ("lm-fit-lr-nan", lambda c: ["lm", "fit", "--config", _config(c.tmp, "c.yaml", CONFIGS / "lm/debug.yaml",
                                                                  **{"train.lr": float("nan")})], 2, ["lr", "finite"]),
    ("lm-fit-steps-in-config", lambda c: ["lm", "fit", "--config", _config(c.tmp, "c.yaml", CONFIGS / "lm/debug.yaml",
                                                                           **{"train.steps": -5})],
     2, ["train.steps=-5"]),
    ("lm-fit-absurd-model", lambda c: ["lm", "fit", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "lm/debug.yaml", model={"d_model": 65536, "n_layers": 64, "n_heads": 64}),
        "--shards", str(c.shards)], 2, ["parameters need about", "GiB"]),
    ("lm-fit-text-dropout", lambda c: ["lm", "fit", "--config", _config(c.tmp, "c.yaml", CONFIGS / "lm/debug.yaml",
                                                                        **{"data.text_dropout": 3})],
     2, ["text_dropout"]),
    ("tokenizer-fit-batch-zero", lambda c: ["tokenizer", "fit", "--config", str(CONFIGS / "tokenizer/video-debug.yaml"),
                                            "--batch-size", "0"], 2, ["--batch-size"]),
    ("tokenizer-fit-lr-inf", lambda c: ["tokenizer", "fit", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "tokenizer/video-debug.yaml", **{"train.lr": float("inf")})], 2, ["lr", "finite"]),
    ("tokenizer-fit-crop", lambda c: ["tokenizer", "fit", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "tokenizer/video-debug.yaml", **{"train.video_crop_frames": 6})],
     2, ["video_crop_frames"]),
    ("finetune-lora-rank", lambda c: ["finetune", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "finetune/colorize.yaml", **{"lora.r": -4})], 2, ["lora.r=-4"]),
    ("finetune-blend", lambda c: ["finetune", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "finetune/colorize.yaml", blend=1.5)], 2, ["blend"]),
    ("refiner-fit-focus", lambda c: ["refiner", "fit", "--config", _config(
        c.tmp, "c.yaml", CONFIGS / "refiner/debug.yaml", **{"data.focus": 2})], 2, ["focus"]),
    ("dit-fit-threads-zero", lambda c: ["dit", "fit", "--config", str(CONFIGS / "dit/debug.yaml"), "--threads", "0"],
     2, ["--threads"]),
    ("dit-fit-ema", lambda c: ["dit", "fit", "--config", _config(c.tmp, "c.yaml", CONFIGS / "dit/debug.yaml",
                                                                 **{"train.ema_decay": 1.0})], 2, ["ema_decay"]),
    ("config-missing", lambda c: ["lm", "fit", "--config", "missing.yaml"], 2, ["missing.yaml"]),
    ("config-python-tag", lambda c: ["lm", "fit", "--config", c.write("c.yaml", "entry: !!python/object/apply:os.system ["
                                                                                  "'touch pwned']\n")],
     2, ["not valid YAML"]),
    ("config-wrong-entry", lambda c: ["lm", "fit", "--config", str(CONFIGS / "dit/debug.yaml")], 2, ["videolm dit fit"]),
    ("eval-num-zero", lambda c: ["eval", "--num", "0"], 2, ["--num"]),
    ("compare-num-zero", lambda c: ["compare", "--num", "0", "--out", "o"], 2, ["--num"]),
    ("tokenize-num-zero", lambda c: ["tokenize", "--num", "0", "--out", "o"], 2, ["--num"]),
    ("tokenizer-eval-num-zero", lambda c: ["tokenizer", "eval", "--num", "0"], 2, ["--num"]),
    ("probe-fit-steps-zero", lambda c: ["probe", "fit", "--out", "o", "--steps", "0"], 2, ["--steps"]),
    ("shapes-num-zero", lambda c: ["data", "shapes", "--out", "o", "--num", "0"], 2, ["--num"]),
    ("shapes-frames-16", lambda c: ["data", "shapes", "--out", "o", "--frames", "16"], 2, ["frames=16"]),
    ("shapes-fps-zero", lambda c: ["data", "shapes", "--out", "o", "--fps", "0"], 2, ["--fps"]),
    ("shapes-eval-seeds", lambda c: ["data", "shapes", "--out", "o", "--seed", "999999", "--num", "5"],
     2, ["evaluation seeds"]),
    ("folder-stride-zero", lambda c: ["data", "folder", c.f("ex"), "--stride", "0"], 2, ["--stride"]),
    # -- inputs that are missing or broken
    ("video-missing", lambda c: _gen("--task", "extend", "--video", "missing.mp4", "--out", "o"),
     2, ["--video", "no such file"]),
    ("video-empty", lambda c: _gen("--task", "extend", "--video", c.f("empty.mp4"), "--out", "o"), 2, ["empty"]),
    ("video-text", lambda c: _gen("--task", "extend", "--video", c.f("text.mp4"), "--out", "o"),
     2, ["not a media file"]),
    ("video-truncated", lambda c: _gen("--task", "extend", "--video", c.f("truncated.mp4"), "--out", "o"),
     2, ["truncated"]),
    ("video-is-folder", lambda c: _gen("--task", "extend", "--video", c.f("folder.mp4"), "--out", "o"),
     2, ["is a folder"]),
    ("image-is-audio", lambda c: _gen("--task", "i2v", "--image", c.f("ex/sound.wav"), "--out", "o"),
     2, ["--image", "no video stream"]),
    ("audio-is-image", lambda c: _gen("--task", "a2v", "--audio", c.f("ex/first.png"), "--out", "o"),
     2, ["--audio", "no audio stream"]),
    ("media-info-missing", lambda c: ["media", "info", "missing.mp4"], 2, ["no such file"]),
    ("media-info-text", lambda c: ["media", "info", c.f("text.mp4")], 2, ["text.mp4"]),
    ("media-info-empty-after-a-good-one", lambda c: ["media", "info", c.f("ex/clip.mp4"), c.f("empty.mp4")],
     2, ["empty.mp4: file is empty"]),
    ("media-convert-missing", lambda c: ["media", "convert", "missing.mp4", "o.gif"], 2, ["no such file"]),
    ("folder-missing", lambda c: ["data", "folder", "missing"], 2, ["no such folder"]),
    ("folder-is-file", lambda c: ["data", "folder", c.f("ex/clip.mp4")], 2, ["not a folder"]),
    ("folder-nothing-readable", lambda c: ["data", "folder", c.only_broken()], 2, ["no readable video clips"]),
    ("pack-into-its-input", lambda c: ["data", "pack", c.f("ex"), "--out", c.f("ex/pack")], 2, ["inside the input folder"]),
    ("generate-overwrite-holds-input", lambda c: _gen("--task", "extend", "--video", c.examples() + "/clip.mp4",
                                                      "--out", c.examples(), "--overwrite"), 2, ["holds the input"]),
    ("tokenize-out-is-its-input", lambda c: ["tokenize", "--data", c.examples(), "--out", c.examples(), "--overwrite",
                                             "--num", "1"], 2, ["is also an input"]),
    ("reconstruct-into-its-model", lambda c: ["tokenizer", "reconstruct", "--model", c.model_copy(), "--video",
                                              c.f("ex/clip.mp4"), "--out", "model/video_tokenizer/r.mp4"],
     2, ["inside the input folder"]),
    ("dit-fit-into-its-model", lambda c: ["dit", "fit", "--config", str(CONFIGS / "dit/debug.yaml"), "--data.model",
                                          c.model_copy(), "--out", "model/run"], 2, ["inside the input folder"]),
    ("refiner-fit-into-its-data", lambda c: ["refiner", "fit", "--config", str(CONFIGS / "refiner/debug.yaml"),
                                             "--data", c.examples(), "--out", c.examples() + "/run"],
     2, ["inside the input folder"]),
    ("eval-num-beyond-memory", lambda c: ["eval", "--model", c.model("norefiner"), "--tasks", "t2v", "--num",
                                          "100000000"], 2, ["--num 100000000", "more than half of this machine"]),
    ("eval-extend-of-one-frame", lambda c: ["eval", "--model", c.model("norefiner"), "--tasks", "extend", "--frames",
                                            "1", "--num", "2"], 2, ["--frames 1", "give at least 5"]),
    ("compare-refine-without-refiner", lambda c: ["compare", "--model", c.model("norefiner"), "--tasks", "t2v",
                                                  "--num", "2", "--refine", "--out", "o"], 2, ["--refine", "no refiner"]),
    ("reconstruct-tokenizer-truncated", lambda c: ["tokenizer", "reconstruct", "--model", c.model("badtokenizer"),
                                                   "--video", c.f("ex/clip.mp4"), "--out", "r.mp4"],
     2, ["model.safetensors", "truncated or corrupt"]),
    ("reconstruct-with-an-lm", lambda c: ["tokenizer", "reconstruct", "--model", c.model("norefiner") + "/lm",
                                          "--video", c.f("ex/clip.mp4"), "--out", "r.mp4"],
     2, ["not a video or audio tokenizer"]),
    ("reconstruct-with-the-audio-tokenizer", lambda c: ["tokenizer", "reconstruct", "--model",
                                                        c.model("norefiner") + "/audio_tokenizer", "--video",
                                                        c.f("ex/clip.mp4"), "--out", "r.mp4"],
     2, ["holds an audio tokenizer, not a video tokenizer"]),
    ("generate-threads-zero", lambda c: _gen("--task", "t2v", "--prompt", "a", "--threads", "0", "--out", "o"),
     2, ["threads"]),
    ("model-is-a-file", lambda c: ["tokenizer", "reconstruct", "--model", c.f("ex/clip.mp4"), "--video",
                                   c.f("ex/clip.mp4"), "--out", "r.mp4"], 2, ["is a file, not a model folder"]),
    ("pack-out-holds-its-root", lambda c: ["data", "pack", c.examples(), "--out", c.tmp, "--overwrite"],
     2, ["the working directory"]),  # which also holds the input
    ("bundle-of-no-videos-keeps-the-model", lambda c: ["tokenizer", "bundle", "--out", c.model_copy(), "--video",
                                                       c.model("norefiner") + "/video_tokenizer",
                                                       "--data", c.empty()],
     2, ["no video files"]),
    ("captions-not-text", lambda c: ["data", "folder", c.videos(**{"captions.jsonl": '{"video": "clip.mp4", '
                                                                                      '"caption": 42}'})],
     2, ["captions.jsonl:1", "caption must be text"]),
    ("sidecar-not-utf8", lambda c: ["data", "folder", c.videos(**{"clip.txt": b"\xff\xfe caption"})],
     2, ["clip.txt", "not UTF-8"]),
    ("pack-url-not-a-pack", lambda c: ["tokenizer", "eval", "--data", "memory://no/pack", "--num", "1"],
     2, ["not a readable clip pack"]),
    ("refiner-apply-missing", lambda c: ["refiner", "apply", "--video", "missing.mp4", "--out", "o.mp4"],
     2, ["no such file"]),
    ("lm-bundle-missing", lambda c: ["lm", "bundle", "--lm", "missing", "--out", "o"], 2, ["no such folder"]),
    ("lm-fit-shards-missing", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--shards", "nope"],
     2, ["no such folder"]),
    ("tokenizer-fit-data-missing", lambda c: ["tokenizer", "fit", "--config",
                                              str(CONFIGS / "tokenizer/video-debug.yaml"), "--data", "nope"],
     2, ["no such folder"]),
    ("tokenizer-eval-model-missing", lambda c: ["tokenizer", "eval", "--model", "nope"], 2, ["no such folder"]),
    ("prompt-rewriter-missing", lambda c: _gen("--task", "t2v", "--prompt", "a", "--prompt-rewriter", "nomod:fn",
                                               "--out", "o"), 2, ["--prompt-rewriter", "nomod"]),
    ("unknown-command", lambda c: ["nonsense"], 2, ["nonsense"]),
    # -- model folders that are broken, absurd or pickled
    ("model-missing", lambda c: _gen("--task", "t2v", "--prompt", "a", "--model", "nope", "--out", "o"),
     2, ["no such folder"]),
    ("model-pickled-only", lambda c: _gen("--task", "uncond", "--model", c.model("pickled"), "--out", "o"),
     2, ["pytorch_model.bin", "pickled weights"]),
    ("model-truncated-weights", lambda c: _gen("--task", "uncond", "--model", c.model("truncated"), "--out", "o"),
     2, ["lm/model.safetensors", "truncated or corrupt"]),
    ("model-config-not-json", lambda c: _gen("--task", "uncond", "--model", c.model("notjson"), "--out", "o"),
     2, ["lm/config.json", "not valid JSON"]),
    ("model-config-absurd", lambda c: _gen("--task", "uncond", "--model", c.model("absurd"), "--out", "o"),
     2, ["lm/config.json"]),
    ("model-config-negative", lambda c: _gen("--task", "uncond", "--model", c.model("negative"), "--out", "o"),
     2, ["lm/config.json"]),
    ("model-vocab-too-big", lambda c: _gen("--task", "uncond", "--model", c.model("bigvocab"), "--out", "o"),
     2, ["vocab.json", "does not fit"]),
    ("model-tokenizer-truncated", lambda c: _gen("--task", "uncond", "--model", c.model("badtokenizer"), "--out", "o"),
     2, ["video_tokenizer/model.safetensors"]),
    ("refine-without-refiner", lambda c: _gen("--task", "uncond", "--model", c.model("norefiner"), "--refine",
                                              "--out", "o"), 2, ["no refiner"]),
    # -- a model's usage errors, found before any sample
    ("task-unknown", lambda c: _gen("--task", "nope", "--model", c.model("norefiner"), "--out", "o"),
     2, ["not trained on it"]),
    ("task-needs-prompt", lambda c: _gen("--task", "t2v", "--model", c.model("norefiner"), "--out", "o"),
     2, ["needs --prompt"]),
    ("mask-wrong-shape", lambda c: _gen("--task", "inpaint", "--video", c.f("ex/clip.mp4"), "--mask",
                                        c.f("thin_mask.png"), "--model", c.model("norefiner"), "--out", "o"),
     2, ["--mask", "shape", "never stretched"]),
    ("mask-hides-nothing", lambda c: _gen("--task", "inpaint", "--video", c.f("ex/clip.mp4"), "--mask",
                                          c.f("black_mask.png"), "--model", c.model("norefiner"), "--out", "o"),
     2, ["hides nothing"]),
    ("interpolate-three-videos", lambda c: _gen("--task", "interpolate", *["--video", c.f("ex/clip.mp4")] * 3,
                                                "--model", c.model("norefiner"), "--out", "o"), 2, ["at most two"]),
    ("strict-prompt", lambda c: _gen("--task", "t2v", "--prompt", "a purple hexagon moves diagonally",
                                     "--strict-prompt", "--out", "o"), 2, ["hexagon", "diagonally"]),
    ("with-audio-on-v2a", lambda c: _gen("--task", "v2a", "--video", c.f("ex/clip.mp4"), "--with-audio",
                                         "--model", c.model("norefiner"), "--out", "o"), 2, ["--with-audio"]),
    ("dit-backend-i2v", lambda c: _gen("--task", "i2v", "--image", c.f("ex/first.png"), "--backend", "dit",
                                       "--model", c.model("norefiner"), "--out", "o"), 2, ["dit"]),
    # -- resuming from a bad checkpoint
    ("resume-corrupt-checkpoint", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--shards",
                                             str(c.shards), "--out",
                                             str(_run_folder(c.tmp, "run", "lm fit", b"\x80\x02garbage"))],
     2, ["last.ckpt", "cannot resume", "not a checkpoint"]),
    ("resume-malicious-pickle", lambda c: ["lm", "fit", "--config", str(CONFIGS / "lm/debug.yaml"), "--shards",
                                           str(c.shards), "--out", c.evil_run()],
     2, ["last.ckpt", "other than tensors"]),
    # -- training runs: a resume of another run, settings refused before any work, nothing left behind
    ("resume-other-settings", lambda c: ["refiner", "fit", "--config", str(CONFIGS / "refiner/debug.yaml"),
                                         "--out", c.other_run()], 2, ["other settings", "preset"]),
    ("fit-batch-larger-than-data", lambda c: ["refiner", "fit", "--config", str(CONFIGS / "refiner/debug.yaml"),
                                              "--train.batch-size", "100", "--out", "o"], 2, ["batch_size=100"]),
    ("fit-precision-unknown", lambda c: ["dit", "fit", "--config", str(CONFIGS / "dit/debug.yaml"),
                                         "--train.precision", "bogus", "--out", "o"], 2, ["precision", "bf16-mixed"]),
    ("fit-accelerator-absent", lambda c: ["refiner", "fit", "--config", str(CONFIGS / "refiner/debug.yaml"),
                                          "--train.accelerator", "tpu", "--out", "o"], 2, ["tpu"]),
    ("refiner-fit-model-key", lambda c: ["refiner", "fit", "--config", str(CONFIGS / "refiner/debug.yaml"),
                                         "--model", "{bogus: 1}", "--out", "o"], 2, ["model.bogus"]),
    ("finetune-out-holds-base", lambda c: ["finetune", "--config", str(CONFIGS / "finetune/colorize.yaml"),
                                           "--paths", str(DOCS_EXAMPLES), "--base", c.model_copy(), "--out", "."],
     2, ["holds the input"]),
    ("finetune-lora-target", lambda c: ["finetune", "--config", str(CONFIGS / "finetune/colorize.yaml"),
                                        "--paths", str(DOCS_EXAMPLES), "--base", c.model("norefiner"),
                                        "--lora.target-modules", "bogus_proj", "--out", "o"], 2, ["bogus_proj"]),
    ("finetune-mix-unknown", lambda c: ["finetune", "--config", str(CONFIGS / "finetune/colorize.yaml"),
                                        "--paths", str(DOCS_EXAMPLES), "--base", c.model("norefiner"),
                                        "--data.mix", "{bogus: 1}", "--out", "o"], 2, ["data.mix", "bogus"]),
    ("flag-nested-setting", lambda c: ["dit", "fit", "--config", str(CONFIGS / "dit/debug.yaml"), "--data.tasks",
                                       "{t2v: 1, bogus: 1}", "--out", "o"], 2, ["--data.tasks:", "bogus"]),
    ("eval-against-missing", lambda c: ["eval", "--num", "2", "--against", "nosuch"], 2, ["--against nosuch"]),
    # -- the photo world, tokenizer reconstruct, folder training
    ("photos-size-not-8", lambda c: ["data", "photos", "--out", "o", "--size", "50x50"], 2, ["height=50"]),
    ("photos-frames-16", lambda c: ["data", "photos", "--out", "o", "--frames", "16"], 2, ["frames=16"]),
    ("photos-into-user-folder", lambda c: ["data", "photos", "--out", c.user_folder(), "--overwrite"],
     2, ["not a folder videolm wrote"]),
    ("reconstruct-not-a-video", lambda c: ["tokenizer", "reconstruct", "--video", c.files / "text.mp4", "--out",
                                           "r.mp4"], 2, ["text.mp4"]),
    ("reconstruct-out-exists", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out",
                                          c.a_file()], 2, ["exists"]),
    ("reconstruct-out-is-input", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out",
                                            "mine.mp4", "--overwrite"], 2, ["also an input"]),
    ("reconstruct-frames-10", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out", "r.mp4",
                                         "--frames", "10"], 2, ["--frames 10"]),
    ("reconstruct-frames-too-many", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out",
                                               "r.mp4", "--frames", "401"], 2, ["--frames 401", "only"]),
    ("reconstruct-size-odd", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out", "r.mp4",
                                        "--size", "60x90"], 2, ["multiples of 8"]),
    ("reconstruct-out-not-video", lambda c: ["tokenizer", "reconstruct", "--video", c.copy_clip(), "--out",
                                             "r.png"], 2, ["--out r.png", ".mp4"]),
    ("tokenizer-fit-freeze-without-init", lambda c: ["tokenizer", "fit", "--config",
                                                     CONFIGS / "tokenizer" / "video-debug.yaml", "--out", "run",
                                                     "--train.freeze-encoder"], 2, ["--init"]),
    ("tokenizer-fit-bad-mix", lambda c: ["tokenizer", "fit", "--config", CONFIGS / "tokenizer" / "video-debug.yaml",
                                         "--out", "run", "--data", "photos:x+shapes"], 2, ["photos:x"]),
    ("tokenizer-fit-held-out-1", lambda c: ["tokenizer", "fit", "--config",
                                            CONFIGS / "tokenizer" / "video-debug.yaml", "--out", "run",
                                            "--data.held-out", "1"], 2, ["--data.held-out=1.0"]),
]


class Ctx:
    """What a case's setup may make: files in the working folder, and the shared inputs."""

    def __init__(self, tmp: Path, files: Path, shards: Path, models: Path):
        self.tmp, self.files, self.shards, self.models = tmp, files, shards, models
        self.pwned = tmp.parent / f"{tmp.name}-pwned"

    def f(self, name: str) -> str:
        return str(self.files / name)

    def model(self, name: str) -> str:
        return str(self.models / name)

    def write(self, name: str, text: str) -> str:
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def keep(self) -> None:
        self.write("keep.txt", "a user's file")

    def examples(self) -> str:
        """A videolm output (`data examples`) in the working folder, to be read as an input."""
        if not (self.tmp / "ex").exists():
            write_examples(self.tmp / "ex")
        return str(self.tmp / "ex")

    def videos(self, **files: bytes | str) -> str:
        """A folder of one good video and ``files`` (name -> contents) in the working folder."""
        folder = self.tmp / "videos"
        folder.mkdir(exist_ok=True)
        shutil.copy(self.files / "ex" / "clip.mp4", folder / "clip.mp4")
        for name, data in files.items():
            (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(folder)

    def empty(self) -> str:
        (self.tmp / "empty").mkdir()
        return str(self.tmp / "empty")

    def model_copy(self) -> str:
        """A model folder in the working folder (the debug model's tokenizers), to be filled in place."""
        shutil.copytree(self.models / "norefiner", self.tmp / "model")
        return str(self.tmp / "model")

    def home(self) -> Path:
        home = self.tmp / "home"
        home.mkdir()
        (home / "notes.txt").write_text("a user's file")
        os.environ["HOME"] = str(home)
        return home

    def symlink(self) -> str:
        target = self.tmp / "target"
        target.mkdir()
        (target / "keep.txt").write_text("a user's file")
        (self.tmp / "link").symlink_to(target)
        return "link"

    def broken_link(self) -> str:
        (self.tmp / "dangling").symlink_to(self.tmp / "nowhere")
        return "dangling"

    def folder(self, name: str, files: dict[str, str], listed: list[str] | None = None) -> str:
        """A folder of ``files`` (name -> text); with ``listed``, a marker that says videolm wrote those."""
        (self.tmp / name).mkdir()
        for file, text in files.items():
            (self.tmp / name / file).write_text(text)
        if listed is not None:
            (self.tmp / name / MARKER).write_text(json.dumps({"command": "generate", "files": listed}))
        return name

    def repo(self) -> str:
        (self.tmp / "repo" / ".git").mkdir(parents=True)
        return self.folder("repo/src", {"code.py": "print('mine')\n"}, listed=["code.py"]).split("/")[0]

    def user_folder(self) -> str:
        return self.folder("s", {"keep.txt": "a user's file"})

    def mixed_folder(self) -> str:
        return self.folder("m", {"sample_000.mp4": "videolm's", "notes.txt": "a user's file"}, listed=["sample_000.mp4"])

    def a_file(self) -> str:
        return self.write("taken.txt", "a user's file")

    def copy_clip(self) -> str:
        if not (self.tmp / "mine.mp4").exists():
            shutil.copyfile(self.files / "ex" / "clip.mp4", self.tmp / "mine.mp4")
        return "mine.mp4"

    def only_broken(self) -> str:
        (self.tmp / "videos").mkdir()
        (self.tmp / "videos" / "clip.mp4").write_text("not a video")
        return "videos"

    def other_run(self) -> str:
        """A refiner run folder with a checkpoint, trained with another preset than the debug config's."""
        folder = _run_folder(self.tmp, "run", "refiner fit", b"a checkpoint")
        (folder / "run.json").write_text(json.dumps({"entry": "refiner fit", "preset": "tiny"}))
        return str(folder)

    def evil_run(self) -> str:
        folder = _run_folder(self.tmp, "run", "lm fit")
        torch.save({"videolm": _Evil(self.pwned)}, folder / "checkpoints" / "last.ckpt")
        return str(folder)


def _tree(folder: Path) -> dict:
    """Every entry under ``folder``, with each file's size and modification time (a folder's own
    time moves when a probe file comes and goes; its entries are what count)."""
    return {str(p.relative_to(folder)): ("dir",) if p.is_dir() and not p.is_symlink() else
            (p.is_symlink(), p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name, setup, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code_and_changes_nothing(name, setup, code, words, files, shards,
                                                                       broken_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", os.environ.get("HOME", str(tmp_path)))  # restored after the case
    ctx = Ctx(tmp_path, files, shards, broken_models)
    argv = [str(a) for a in setup(ctx)]
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main(argv) == code, capsys.readouterr().err
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("videolm: warning:")]
    assert len(lines) == 1 and lines[0].startswith("videolm: error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _tree(tmp_path) == before  # nothing made, changed or deleted
    assert not ctx.pwned.exists() and not (tmp_path / "pwned").exists()  # no pickle or YAML tag ever ran


def test_the_table_is_long_enough():
    assert len(CASES) >= 60
