"""`videolm` from the outside: exit codes, one-line errors, and `data shapes` end to end."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videolm.cli.main import main
from videolm.data.media import read_audio, read_video
from videolm.data.shapes import make_clip, parse_caption


def _run(*args, cwd=None):
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_everywhere(capsys):
    out = _run("--help")  # the installed console script
    assert out.returncode == 0 and "usage: videolm" in out.stdout
    assert main(["data", "--help"]) == 0 and "usage: videolm data" in capsys.readouterr().out
    for args in (["data", "shapes"], ["data", "folder"], ["data", "examples"], ["generate"], ["lm", "fit"]):
        with pytest.raises(SystemExit) as done:  # argparse prints the command's help and exits 0
            main([*args, "--help"])
        assert done.value.code == 0 and "usage: videolm" in capsys.readouterr().out


def test_data_shapes_writes_clips_and_manifest(tmp_path):
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--num", "6", "--seed", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s" / "manifest.jsonl").read_text().splitlines()]
    assert [r["meta"]["seed"] for r in rows] == list(range(3, 9))
    for row in rows:
        assert set(row) >= {"id", "caption", "video", "audio", "structure", "meta"}
        parsed = parse_caption(row["caption"])
        assert [o["shape"] for o in parsed["objects"]] == [o["shape"] for o in row["meta"]["objects"]]
        clip = make_clip(row["meta"]["seed"])
        assert np.array_equal(read_video(tmp_path / "s" / row["video"]), clip.video)  # lossless on disk
        assert np.array_equal(read_video(tmp_path / "s" / row["structure"]), clip.structure)
        assert np.array_equal(read_audio(tmp_path / "s" / row["audio"]), clip.audio)
    assert (tmp_path / "s" / "config.yaml").exists()


def test_same_seed_gives_byte_identical_files_and_config_reproduces(tmp_path):
    assert main(["data", "shapes", "--out", str(tmp_path / "a"), "--num", "4", "--seed", "0", "--background", "all"]) == 0
    assert main(["data", "shapes", "--out", str(tmp_path / "b"), "--num", "4", "--seed", "0", "--background", "all"]) == 0
    assert main(["data", "shapes", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "c")]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") == _digest(tmp_path / "c")


def test_eval_split_uses_held_out_seeds(tmp_path):
    assert main(["data", "shapes", "--out", str(tmp_path / "e"), "--num", "2", "--split", "eval", "--size", "64x96"]) == 0
    row = json.loads((tmp_path / "e" / "manifest.jsonl").read_text().splitlines()[0])
    assert row["meta"]["seed"] == 1_000_000 and (row["meta"]["height"], row["meta"]["width"]) == (64, 96)


@pytest.mark.parametrize(
    "args, names",
    [
        (["data", "shapes", "--num", "2"], "--out"),
        (["data", "shapes", "--out", "x", "--num", "two"], "--num"),
        (["data", "shapes", "--out", "x", "--frames", "16"], "frames=16"),
        (["data", "shapes", "--out", "x", "--size", "60"], "60x60"),
        (["data", "shapes", "--out", "x", "--background", "pink"], "pink"),
        (["data", "shapes", "--out", "x", "--seed", "999999", "--num", "5"], "evaluation seeds"),
        (["data", "shapes", "--out", "x", "--config", "missing.yaml"], "missing.yaml"),
        (["nonsense"], "nonsense"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, names, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_usage_error_from_the_console_script_is_one_line_exit_2(tmp_path):
    out = _run("nonsense", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nonsense" in out.stderr


def test_existing_output_is_refused_and_overwrite_replaces_only_what_videolm_wrote(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "shapes", "--out", str(out), "--num", "1"]) == 2
    assert main(["data", "shapes", "--out", str(out), "--num", "1", "--overwrite"]) == 2  # not videolm's folder
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert main(["data", "shapes", "--out", str(out), "--num", "1"]) == 0  # an empty folder is fine
    assert main(["data", "shapes", "--out", str(out), "--num", "2", "--overwrite"]) == 0  # its own output: replaced
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch, capsys):
    import videolm.data.shapes_data as shapes_data

    calls = []

    def failing(root, seed, world):
        calls.append(seed)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return {"id": str(seed)}

    monkeypatch.setattr(shapes_data, "_write_clip", failing)
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--num", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_command_like_ctrl_c_and_leaves_no_partial_output(tmp_path):
    """`kill` (SIGTERM) unwinds the command: exit 143, one line, its unfinished output removed; and
    what a SIGKILL leaves (which allows no clean-up) is named by the next run, not deleted."""
    import os
    import signal
    import time

    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    out = tmp_path / "s"
    proc = subprocess.Popen([*cmd, "data", "shapes", "--num", "100000", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        partial = list(tmp_path.glob(".s.partial-*/video/*"))
        if len(partial) >= 3:
            os.kill(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "videolm: terminated", err
    assert list(tmp_path.iterdir()) == []

    left = tmp_path / ".s.partial-abc123"  # as a SIGKILL would leave it
    (left / "video").mkdir(parents=True)
    (left / "video" / "0.mp4").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match=r"\.s\.partial-abc123 holds an unfinished output"):
        assert main(["data", "shapes", "--out", str(out), "--num", "1"]) == 0
    assert (left / "video" / "0.mp4").read_bytes() == b"half a file"  # named, never deleted


def test_a_folder_of_unreadable_media_is_bad_input_exit_2(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    out = _run("data", "folder", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") <= 2 and "Traceback" not in out.stderr


def _broken(folder: Path) -> list[str]:
    from videolm.data.media import write_audio, write_video

    write_video(folder / "good.mp4", make_clip(0).video)
    data = (folder / "good.mp4").read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    (folder / "truncated.mp4").write_bytes(data[: len(data) * 2 // 5])
    write_audio(folder / "sound.wav", make_clip(0).audio)
    return ["missing.mp4", "empty.mp4", "text.mp4", "truncated.mp4", "sound.wav"]


def test_broken_media_through_the_cli_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in _broken(tmp_path):
        for args in (["media", "info", name], ["media", "convert", name, "out.gif"]):
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and name in err and "Traceback" not in err
        assert not (tmp_path / "out.gif").exists()


def test_media_info_and_convert(tmp_path):
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--num", "1"]) == 0
    src = tmp_path / "s" / "video" / "0000000.mkv"
    out = _run("media", "info", str(src))
    info = json.loads(out.stdout)
    assert out.returncode == 0 and (info["width"], info["height"], info["num_frames"]) == (64, 64, 17)
    assert main(["media", "convert", str(src), str(tmp_path / "v.mp4"), "--size", "32", "--fps", "4"]) == 0
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == (9, 32, 32, 3)  # 17 frames at 8 fps -> 9 at 4 fps (2.125 s)


def test_data_folder_summarises_a_folder(tmp_path):
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--num", "3"]) == 0
    out = _run("data", "folder", str(tmp_path / "s"), "--frames", "5")
    summary = json.loads(out.stdout)
    assert out.returncode == 0 and summary["videos"] == 3 and summary["clips"] == 12  # 17 frames -> 3 clips of 5 + the tail
    assert summary["captioned_videos"] == summary["videos_with_audio"] == 3


def test_debug_may_come_anywhere_and_worker_errors_show_their_own_message(capsys):
    from videolm.cli.main import _original

    assert main(["tasks", "--json", "--debug"]) == 0
    wrapped = ("Caught MediaError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nvideolm.core.errors.MediaError: clip.mp4: truncated or corrupt')
    assert _original(wrapped) == "clip.mp4: truncated or corrupt" and _original("plain") == "plain"


def test_a_stop_is_one_line_from_the_first_process_only(monkeypatch, capsys):
    """Ctrl-C in a data-parallel run reaches every process; only the first says so."""
    import videolm.cli.main as cli_main

    def stopped(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "dispatch", stopped)
    assert main(["data", "shapes"]) == 130
    assert capsys.readouterr().err == "videolm: interrupted\n"
    monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning starts the second process
    assert main(["data", "shapes"]) == 130
    assert capsys.readouterr().err == ""
