"""`Pipeline` and `videolm generate` end to end, on a model folder holding the shipped tokenizers and
an untrained `debug` LM (outputs are noise, but every file, shape and error is real)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videolm.tasks.base import BUILTIN
from videolm.tasks.pipeline import Pipeline
from videolm.tasks.shapes import make_clip
from videolm.core.errors import UsageError
from videolm.tokenizers.media import read_audio, read_video, write_audio, write_image, write_video

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(debug_model_dir):
    return debug_model_dir


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    clip = make_clip(3)
    write_video(root / "clip.mp4", clip.video, fps=8)
    write_image(root / "first.png", clip.video[0])
    write_audio(root / "clip.wav", clip.audio)
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:40, 16:40] = 255
    write_image(root / "mask.png", mask)
    return root


def _run(*args):
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.tasks.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


def test_pipeline_knows_its_tasks_and_is_seeded(pipe):
    assert pipe.task_names == list(BUILTIN)
    a = pipe.generate("t2v", "a large red circle moves left", num_samples=2, seed=5)
    b = pipe.generate("t2v", "a large red circle moves left", num_samples=1, seed=6)
    assert [r.seed for r in a] == [5, 6] and a[0].video.shape == (17, 64, 64, 3) and a[0].video.dtype == np.uint8
    assert np.array_equal(a[1].video, b[0].video)  # sample i is what seed + i alone gives
    assert not np.array_equal(a[0].video, a[1].video)
    assert a[0].seconds > 0


def test_long_video_chains_extend_and_audio_follows(pipe):
    (r,) = pipe.generate("t2v", "a small blue square moves up", frames=29, with_audio=True, seed=1)
    assert r.video.shape == (29, 64, 64, 3)
    assert r.audio.shape == (round(29 * 16000 / 8),)
    (short,) = pipe.generate("t2v", "a small blue square moves up", frames=9, seed=1)
    assert short.video.shape[0] == 9


def test_every_task_runs_from_files(pipe, files):
    clip = str(files / "clip.mp4")
    inputs = {"t2v": {"prompt": "a large red circle moves left"}, "t2i": {"prompt": "a large red circle"},
              "i2v": {"image": str(files / "first.png")}, "extend": {"video": clip}, "extend_back": {"video": clip},
              "interpolate": {"video": [clip, clip]}, "loop": {"prompt": "a large red circle moves left"},
              "inpaint": {"video": clip, "mask": str(files / "mask.png")},
              "outpaint": {"video": clip, "mask": str(files / "mask.png")},
              "stylize": {"video": clip, "prompt": "a large red circle moves left"}, "v2a": {"video": clip},
              "a2v": {"audio": str(files / "clip.wav")}, "uncond": {}}
    for name in BUILTIN:
        (r,) = pipe.generate(name, **inputs[name], seed=0)
        if name == "v2a":
            assert r.audio.shape == (34000,) and r.video.shape == (17, 64, 64, 3)
        else:
            assert r.video.shape == ((1 if name == "t2i" else 17), 64, 64, 3), name


def test_pipeline_input_errors(pipe, files, tmp_path):
    with pytest.raises(UsageError, match="needs --prompt"):
        pipe.generate("t2v")
    with pytest.raises(UsageError, match="no such file"):
        pipe.generate("v2a", video=str(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(UsageError, match="cannot read"):
        pipe.generate("v2a", video=str(tmp_path / "junk.mp4"))
    with pytest.raises(UsageError, match="not trained on it"):
        pipe.generate("colorize")
    with pytest.raises(UsageError, match="makes audio"):
        pipe.generate("v2a", video=str(files / "clip.mp4"), with_audio=True)


def test_cli_writes_samples_manifest_and_frames(model_dir, tmp_path):
    out = tmp_path / "out"
    r = _run("generate", "--model", str(model_dir), "--task", "t2v", "--prompt", "a large red circle moves left",
             "--num-samples", "2", "--seed", "3", "--save-frames", "--with-audio", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == str(model_dir) and len(manifest["samples"]) == 2
    entry = manifest["samples"][1]
    assert entry["index"] == 1 and entry["seed"] == 4 and entry["task"] == "t2v" and entry["seconds"] > 0
    assert entry["video"] == "sample_001.mp4" and entry["frames"] == "sample_001.npy" and entry["audio"] == "sample_001.wav"
    frames = np.load(out / "sample_001.npy")
    assert frames.shape == (17, 64, 64, 3) and frames.dtype == np.uint8
    assert read_video(out / "sample_001.mp4").shape == (17, 64, 64, 3)
    assert read_audio(out / "sample_001.mp4").shape[0] > 30000  # the soundtrack is muxed in
    assert read_audio(out / "sample_001.wav").shape == (34000,)


def test_cli_v2a_writes_wav(model_dir, files, tmp_path):
    out = tmp_path / "v2a"
    r = _run("generate", "--model", str(model_dir), "--task", "v2a", "--video", str(files / "clip.mp4"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert read_audio(out / "sample_000.wav").shape == (34000,) and (out / "sample_000.mp4").is_file()


@pytest.mark.parametrize("args,words", [
    (["--task", "t2v"], "needs --prompt"),
    (["--task", "nope"], "not trained on it"),
    (["--task", "i2v", "--image", "/no/such.png"], "no such file"),
    (["--task", "t2v", "--prompt", "x", "--cfg-scale", "-1"], "--cfg-scale"),
    (["--task", "t2v", "--prompt", "x", "--num-samples", "0"], "--num-samples"),
])
def test_cli_usage_errors_exit_2_with_one_line_and_no_output(model_dir, tmp_path, args, words):
    out = tmp_path / "never"
    r = _run("generate", "--model", str(model_dir), *args, "--out", str(out))
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_model_without_lm_is_a_usage_error(tmp_path):
    r = _run("generate", "--model", str(tmp_path), "--task", "t2v",
             "--prompt", "x", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "language model" in r.stderr


def test_tasks_command_lists_every_task():
    r = _run("tasks", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [row["task"] for row in rows] == list(BUILTIN)
    assert all(row["description"] and row["needs"] for row in rows)
