"""Output folders: a whole output or none, only videolm's own folders replaced, kills leave only
complete, listed files."""

from __future__ import annotations

import json
import os

import pytest

from videolm.core.errors import UsageError
from videolm.core.outputs import (
    MARKER,
    StreamingOutput,
    atomic_output_dir,
    check_output_file,
    check_run_dir,
    foreign_files,
    mark_run_dir,
    write_json_atomic,
)


def test_an_atomic_output_appears_whole_with_a_marker_listing_its_files(tmp_path):
    with atomic_output_dir(tmp_path / "o", command="test") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not (tmp_path / "o").exists()
    marker = json.loads((tmp_path / "o" / MARKER).read_text())
    assert marker == {"command": "test", "files": ["a.txt", "sub/b.txt"]} and foreign_files(tmp_path / "o") == []
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "o", overwrite=True) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("failed midway")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [MARKER, "a.txt", "sub"]  # the old one is kept
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # and no partial folder is left beside it


def test_the_working_folder_when_empty_is_filled_not_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_output_dir(".", command="test") as tmp:
        (tmp / "a.txt").write_text("a")
    assert os.getcwd() == str(tmp_path) and (tmp_path / "a.txt").read_text() == "a"
    with pytest.raises(UsageError, match="working directory"), atomic_output_dir(".", overwrite=True):
        pass


def test_overwrite_replaces_only_what_videolm_wrote(tmp_path):
    out = tmp_path / "o"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
    (out / f".a.txt.{os.getpid()}-0123abcd.tmp").write_text("a killed write")  # the temp file of a listed file
    (out / f".{MARKER}.{os.getpid()}-89abcdef.tmp").write_text("{}")  # and of the marker itself
    assert foreign_files(out) == []
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(UsageError, match="mine.txt"), atomic_output_dir(out, overwrite=True):
        pass
    assert (out / "mine.txt").exists() and (out / "b.txt").exists()


def test_a_folder_filled_meanwhile_keeps_the_finished_work(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UsageError, match="kept in"), atomic_output_dir(out) as tmp:
        (tmp / "result.txt").write_text("an hour of work")
        out.mkdir()
        (out / "theirs.txt").write_text("someone else's")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".o.partial-")]
    assert len(kept) == 1 and (kept[0] / "result.txt").read_text() == "an hour of work"
    assert (out / "theirs.txt").read_text() == "someone else's"


def test_streaming_lists_each_file_before_it_is_written(tmp_path):
    out = StreamingOutput(tmp_path / "s", command="generate")
    out.open()
    (path,) = out.reserve("sample_000.mp4")
    assert json.loads((tmp_path / "s" / MARKER).read_text())["files"] == ["sample_000.mp4"] and not path.exists()
    path.write_text("x")
    assert foreign_files(tmp_path / "s") == []
    again = StreamingOutput(tmp_path / "s", overwrite=True, command="generate")
    again.open()
    assert [p.name for p in (tmp_path / "s").iterdir()] == [MARKER]
    again.close(ok=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the earlier output is gone
    # a command that fails before it keeps anything: an overwritten output comes back, a new one goes
    (again.reserve("sample_000.mp4")[0]).write_text("an earlier sample")
    failed = StreamingOutput(tmp_path / "s", overwrite=True, command="generate")
    failed.open()
    failed.reserve("manifest.json")[0].write_text("{}")
    failed.close(ok=False, kept=False)
    assert (tmp_path / "s" / "sample_000.mp4").read_text() == "an earlier sample"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    new = StreamingOutput(tmp_path / "new", command="generate")
    new.open()
    new.close(ok=False, kept=False)
    assert not (tmp_path / "new").exists()
    kept = StreamingOutput(tmp_path / "s", overwrite=True, command="generate")
    kept.open()
    kept.reserve("sample_000.mp4")[0].write_text("a new sample")
    kept.close(ok=False, kept=True)  # a stopped run keeps what it finished
    assert (tmp_path / "s" / "sample_000.mp4").read_text() == "a new sample"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_single_files_and_run_folders(tmp_path):
    (tmp_path / "in.mp4").write_text("x")
    with pytest.raises(UsageError, match="also an input"):
        check_output_file(tmp_path / "in.mp4", overwrite=True, inputs=(tmp_path / "in.mp4",))
    with pytest.raises(UsageError, match="exists"):
        check_output_file(tmp_path / "in.mp4")
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"
    run = tmp_path / "run"
    mark_run_dir(run, "lm fit")
    (run / "metrics.jsonl").write_text("")
    assert check_run_dir(run, "lm fit") == run
    with pytest.raises(UsageError, match="videolm lm fit"):
        check_run_dir(run, "dit fit")
    (tmp_path / "legacy").mkdir()
    write_json_atomic(tmp_path / "legacy" / "run.json", {"entry": "dit fit"})
    assert check_run_dir(tmp_path / "legacy", "dit fit")  # a run folder from before the marker
