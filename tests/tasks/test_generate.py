"""`Pipeline` and `videolm generate` end to end, on a model folder holding the shipped tokenizers and
an untrained `debug` LM (outputs are noise, but every file, shape and error is real)."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.data.media import read_audio, read_video, write_audio, write_image, write_video
from videolm.data.shapes import ShapesConfig, make_clip
from videolm.tasks.base import BUILTIN
from videolm.tasks.pipeline import Pipeline

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
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
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


# (the usage errors of generate, and of every other command, are in test_bad_inputs.py)


def test_model_without_lm_is_a_usage_error(tmp_path):
    (tmp_path / "model").mkdir()
    r = _run("generate", "--model", str(tmp_path / "model"), "--task", "t2v",
             "--prompt", "x", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "language model" in r.stderr


def test_tasks_command_lists_every_task():
    r = _run("tasks", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [row["task"] for row in rows] == list(BUILTIN)
    assert all(row["description"] and row["needs"] for row in rows)


# ------------------------------------------------------------------------ streaming and safety


def test_sigkill_keeps_every_finished_sample_listed_in_a_valid_manifest(model_dir, tmp_path):
    """Killed mid-run, the output holds only whole samples, every one listed (and nothing else)."""
    import os
    import signal
    import time

    from videolm.core.outputs import MARKER, foreign_files

    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    proc = subprocess.Popen([*cmd, "generate", "--model", str(model_dir), "--task", "uncond", "--num-samples", "8",
                             "--save-frames", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len(json.loads((out / "manifest.json").read_text())["samples"]) >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    samples = json.loads((out / "manifest.json").read_text())["samples"]
    assert 2 <= len(samples) < 8 and [s["index"] for s in samples] == list(range(len(samples)))
    for s in samples:
        assert read_video(out / s["video"]).shape == (17, 64, 64, 3)
        assert np.load(out / s["frames"]).shape == (17, 64, 64, 3)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(["manifest.json", *[f for s in samples for f in (s["video"], s["frames"])]] +
                             [f for f in visible if f.startswith(f"sample_{len(samples):03d}")])  # at most the next
    assert foreign_files(out) == [] and (out / MARKER).is_file()


def test_overwrite_replaces_its_own_output_and_nothing_else(model_dir, tmp_path, capsys):
    from videolm.cli.main import main

    out = tmp_path / "o"
    args = ["generate", "--model", str(model_dir), "--task", "uncond", "--out", str(out)]
    assert main([*args, "--num-samples", "2"]) == 0
    assert main([*args, "--overwrite"]) == 0  # videolm's own output: replaced
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.json", "sample_000.mp4"]
    (out / "mine.txt").write_text("a user's file")
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2  # now it holds a file videolm did not write
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").read_text() == "a user's file"
    assert (out / "sample_000.mp4").is_file()


def test_sigterm_before_the_first_sample_puts_the_overwritten_output_back(model_dir, tmp_path):
    """`generate --overwrite` sets the earlier output aside; stopped by `kill` before a new sample is
    whole, it puts that output back as it was and leaves nothing else."""
    import os
    import signal
    import time

    out = tmp_path / "o"
    args = ["generate", "--model", str(model_dir), "--task", "uncond", "--out", str(out)]
    assert _run(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    proc = subprocess.Popen([*cmd, *args, "--overwrite", "--num-samples", "64", "--batch-size", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if list(tmp_path.glob(".o.earlier-*/out")) and (out / "manifest.json").exists():
            os.kill(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "videolm: terminated", err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_t2i_writes_a_png(model_dir, tmp_path):
    from videolm.cli.main import main
    from videolm.data.media import read_image

    out = tmp_path / "t2i"
    assert main(["generate", "--model", str(model_dir), "--task", "t2i", "--prompt", "a large yellow triangle",
                 "--out", str(out)]) == 0
    entry = json.loads((out / "manifest.json").read_text())["samples"][0]
    assert entry["image"] == "sample_000.png" and entry["video"] is None and entry["num_frames"] == 1
    assert read_image(out / "sample_000.png").shape == (64, 64, 3)


def test_a_clip_of_another_size_is_cropped_and_resized_and_says_so(pipe, model_dir, tmp_path, capsys):
    from videolm.cli.main import main
    from videolm.data.shapes import ShapesConfig

    wide = make_clip(5, ShapesConfig(height=96, width=160)).video
    write_video(tmp_path / "wide.mp4", wide, fps=16)
    out = tmp_path / "o"
    said = "96x160 pixels, centre-cropped to 96x96, resized to 64x64, resampled from 16 to 8 fps"
    with pytest.warns(UserWarning, match=said):  # on stderr, as one line, from the command line
        assert main(["generate", "--model", str(model_dir), "--task", "extend", "--video",
                     str(tmp_path / "wide.mp4"), "--out", str(out)]) == 0
    notes = json.loads((out / "manifest.json").read_text())["samples"][0]["notes"]
    assert any("centre-cropped" in n for n in notes)
    # a mask drawn on the wide clip is cropped the same way; one of another shape is refused
    mask = np.zeros((96, 160, 3), np.uint8)
    mask[32:64, 64:96] = 255
    write_image(tmp_path / "wide_mask.png", mask)
    inputs = pipe.inputs(video=str(tmp_path / "wide.mp4"), mask=str(tmp_path / "wide_mask.png"))
    cells = inputs.mask[..., 0] > 127
    assert cells.shape == (64, 64) and cells[23:41, 23:41].all() and not cells[:, :16].any() and not cells[:16].any()


def test_non_finite_audio_is_read_as_silence_with_a_count(pipe, tmp_path):
    import warnings

    import soundfile as sf

    wave = make_clip(2).audio.copy()
    wave[100:150] = np.nan
    wave[200] = np.inf
    sf.write(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe.generate("a2v", audio=str(tmp_path / "bad.wav"), refine=False)[0]
    assert any("51 of" in str(w.message) and "NaN or infinite" in str(w.message) for w in caught)
    assert np.isfinite(result.audio).all()


def test_prompts_are_read_in_the_models_words(pipe, tmp_path):
    import warnings

    from videolm.tasks.prompts import PromptTable, build_table

    pipe.prompts = build_table(["a large red circle moves left", "a small blue square stays still on a gray "
                                "background", "a large magenta triangle moves up and a small cyan circle moves down"])
    same = pipe.generate("t2v", "a large red circle moves left", seed=4, refine=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        loud = pipe.generate("t2v", "  A LARGE RED CIRCLE MOVES LEFT.  ", seed=4, refine=False)[0]
    assert np.array_equal(same.video, loud.video)
    assert loud.extra["rewritten_prompt"] == "a large red circle moves left"
    with pytest.warns(UserWarning, match="does not know: hexagon, diagonally"):
        odd = pipe.generate("t2v", "a purple hexagon moves diagonally", refine=False)[0]
    assert odd.extra["rewritten_prompt"] == "a magenta moves" and odd.extra["unknown_words"] == ["hexagon", "diagonally"]
    with pytest.raises(UsageError, match="--strict-prompt.*cat"):
        pipe.generate("t2v", "a cat playing piano", strict_prompt=True)
    with pytest.warns(UserWarning, match="read nothing it knows"):
        pipe.generate("t2v", "the slowly", refine=False)
    seen = []
    own = pipe.generate("t2v", "make it a ball", rewrite=lambda p: seen.append(p) or "a large red circle moves left",
                        seed=4, refine=False)[0]
    assert seen == ["make it a ball"] and np.array_equal(own.video, same.video)
    with pytest.raises(UsageError, match="returned int"):
        pipe.generate("t2v", "x", rewrite=lambda p: 3)
    table = PromptTable.load(resolve_model("shapes-64"))
    assert table.rewrite("A big purple ball rolling to the left, on a grey background!") == (
        "a large magenta circle moves left on a gray background", [])
    assert table.rewrite("a tiny green cube doesn't move") == ("a small green square stays still", [])


def test_prompt_rewriter_from_the_command_line(model_dir, tmp_path, monkeypatch):
    from videolm.cli.main import main

    (tmp_path / "my_rewriter.py").write_text("def rewrite(prompt):\n    return 'a small blue square moves up'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["generate", "--model", str(model_dir), "--task", "t2v", "--prompt", "something else entirely",
                 "--prompt-rewriter", "my_rewriter:rewrite", "--out", "o"]) == 0
    entry = json.loads((tmp_path / "o" / "manifest.json").read_text())["samples"][0]
    assert entry["prompt"] == "something else entirely"
    assert entry["rewritten_prompt"] == "a small blue square moves up"


def test_interpolate_ends_on_the_end_clip_and_warns_when_the_clips_differ(pipe):
    from videolm.tasks.interpolate import CONNECT_DB

    start, end = make_clip(11).video, make_clip(12).video
    with pytest.warns(UserWarning, match="different scenes"):
        made = pipe.generate("interpolate", video=[start, end], refine=False)[0]  # the debug LM draws noise
    assert made.video.shape == (17, 64, 64, 3) and any("different scenes" in n for n in made.extra["notes"])
    tok = pipe.tokenizer
    want_end = tok.decode_video(tok.encode_video([end[-5:]])[0], 64, 64)
    want_start = tok.decode_video(tok.encode_video([start[:5]])[0], 64, 64)
    assert np.array_equal(made.video[-5:], want_end)  # the given end frames, as the tokenizer makes them
    assert np.array_equal(made.video[:5], want_start)
    assert CONNECT_DB > 10


def test_inputs_a_task_does_not_read_and_inputs_longer_than_the_clip_are_said(pipe, tmp_path):
    write_video(tmp_path / "long.mp4", make_clip(4, ShapesConfig(frames=41)).video, fps=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (r,) = pipe.generate("v2a", video=str(tmp_path / "long.mp4"), prompt="a red circle", refine=False)
    said = " | ".join(str(w.message) for w in caught)
    assert r.video.shape[0] == 41 and r.audio.shape == (41 * 2000,)  # the whole video voiced, window by window
    assert "does not read a prompt" in said and "voiced in windows of 17" in said
    sound = np.concatenate([make_clip(1).audio] * 3)  # 6.4 s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (r,) = pipe.generate("a2v", audio=np.stack([sound, sound]), frames=9, image=str(tmp_path / "long.mp4"),
                             refine=False)
    said = " | ".join(str(w.message) for w in caught)
    assert r.video.shape[0] == 9 and r.audio.shape == (9 * 2000,)  # the sound as long as the pictures
    assert "the rest is left out" in said and "--image: a2v does not read one" in said
    (r,) = pipe.generate("v2a", video=str(tmp_path / "long.mp4"), frames=9, refine=False)
    assert r.video.shape[0] == 9 and r.audio.shape == (9 * 2000,)


def test_a_user_task_that_does_not_say_what_it_reads_gets_no_notes_about_inputs():
    from videolm.tasks.pipeline import _unused

    class Quiet:  # a task of a user's with no `needs`: nothing to say its inputs are left out
        name, needs, uses_text = "mine", "", False

    class Says:  # one that reads a prompt through `needs` without setting `uses_text`
        name, needs, uses_text = "theirs", "--video --prompt", False

    video = np.zeros((17, 64, 64, 3), np.uint8)
    assert _unused(Quiet, "a red circle", video, [video, video], None, None) == []
    assert _unused(Says, "a red circle", None, [video], None, None) == []
    assert _unused(Says, "a red circle", video, [video, video], None, None) == [
        "--video: theirs reads 1 video; 1 given is left out", "--image: theirs does not read one; it is left out"]
    from videolm.tasks.uncond import Unconditional  # built in, reads nothing: every input is said

    assert len(_unused(Unconditional, "a red circle", video, [video], np.zeros(10), None)) == 4


def test_arrays_in_other_forms_are_read_as_pixels_or_refused(pipe):
    clip = make_clip(5).video
    (a,) = pipe.generate("extend", video=clip, seed=3, refine=False)
    (b,) = pipe.generate("extend", video=clip.astype(np.float32) / 255, seed=3, refine=False)  # floats: 0..1
    assert np.array_equal(a.video, b.video)
    grey = clip[0].mean(-1).astype(np.uint8)
    (c,) = pipe.generate("i2v", image=grey, seed=3, refine=False)
    (d,) = pipe.generate("i2v", image=np.repeat(grey[..., None], 3, -1), seed=3, refine=False)
    assert np.array_equal(c.video, d.video)
    with pytest.raises(UsageError, match="one frame is an image"):
        pipe.generate("extend", video=clip[0])
    with pytest.raises(UsageError, match="must lie in 0..1"):
        pipe.generate("extend", video=clip.astype(np.float32))
    with pytest.raises(UsageError, match="t2i makes one image"):
        pipe.generate("t2i", "a large red circle", frames=9)
    (e,) = pipe.generate("t2i", "", refine=False)  # no words: drawn without text
    assert e.video.shape == (1, 64, 64, 3)
