import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest

from videolm.core.errors import DataError, UsageError
from videolm.data import folder
from videolm.data.folder import FolderDataset
from videolm.data.media import write_audio, write_video

RATE = 16000


def gray_ramp(T, step, H=64, W=80):  # (T, H, W, 3): frame t is flat gray step * t
    return np.broadcast_to((np.arange(T, dtype=np.uint8) * step)[:, None, None, None],
                           (T, H, W, 3)).copy()


def tone(freq, seconds):  # (S,)
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(audio):
    return np.argmax(np.abs(np.fft.rfft(audio))) * RATE / len(audio)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """a.mp4: 24 frames at 8 fps with an audio track and a .txt caption; c.MOV: 20 frames at
    8 fps, silent, uncaptioned; sub/b.mp4: 40 frames at 16 fps, sidecar wav, caption in
    captions.jsonl; broken.mp4: text; plus files that are not clips."""
    root = tmp_path_factory.mktemp("template")
    write_video(root / "a.mp4", gray_ramp(24, 10), fps=8, audio=tone(440, 3.0))
    (root / "a.txt").write_text("  a gray ramp with a hum \n")
    write_video(root / "c.MOV", gray_ramp(20, 12), fps=8)
    write_video(root / "sub" / "b.mp4", gray_ramp(40, 5), fps=16)
    write_audio(root / "sub" / "b.wav", tone(660, 2.5))
    (root / "captions.jsonl").write_text(json.dumps({"video": "sub/b.mp4", "caption": "b"}) + "\n")
    (root / "broken.mp4").write_text("not a video at all\n")
    (root / ".hidden.mp4").write_text("ignored: hidden\n")
    (root / "notes.md").write_text("not a video\n")
    return root


@pytest.fixture
def root(template, tmp_path):
    return shutil.copytree(template, tmp_path / "data")


def open_quietly(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FolderDataset(root, frames=8, fps=8, size=(64, 64), **kw)
    return ds, [str(w.message) for w in caught]


def test_clips_shapes_and_broken_file_warning(root):
    ds, warned = open_quietly(root)
    assert len(warned) == 1 and "broken.mp4" in warned[0]
    assert len(ds) == 3 + 3 + 3  # a: 24 frames, c: 20, b: 2.5 s at 8 fps = 20; the tails of c and b kept
    item = ds[1]
    assert item["video"].shape == (8, 64, 64, 3) and item["video"].dtype == np.uint8
    assert item["audio"].shape == (RATE,) and item["audio"].dtype == np.float32
    assert (item["path"], item["start"]) == ("a.mp4", 1.0)
    assert abs(item["video"][0].mean() - 80) < 3  # a clip 1 starts at source frame 8
    assert [ds[i]["path"] for i in range(len(ds))] == ["a.mp4"] * 3 + ["c.MOV"] * 3 + [
        "sub/b.mp4"] * 3


def test_stride_overlaps_clips(root):
    ds, _ = open_quietly(root, stride=4)
    assert len(ds) == 5 + 4 + 4
    assert ds[1]["start"] == 0.5 and abs(ds[1]["video"][0].mean() - 40) < 3


def test_captions_and_audio_sources(root):
    ds, _ = open_quietly(root)
    a, c, b = ds[0], ds[3], ds[7]
    assert (a["caption"], b["caption"], c["caption"]) == ("a gray ramp with a hum", "b", "")
    assert a["has_audio"] and dominant_freq(a["audio"]) == pytest.approx(440, rel=0.02)
    assert b["has_audio"] and dominant_freq(b["audio"]) == pytest.approx(660, rel=0.02)
    assert abs(b["video"][0].mean() - 80) < 3  # 16 fps source: clip 1 starts at frame 16
    assert not c["has_audio"] and not c["audio"].any()


def test_sidecar_wav_wins_over_the_track(root):
    write_audio(root / "a.wav", tone(880, 3.0))
    ds, _ = open_quietly(root)
    assert dominant_freq(ds[0]["audio"]) == pytest.approx(880, rel=0.02)


def test_index_is_reused_and_updated(root, monkeypatch):
    probed = []
    real_probe = folder.probe_video
    monkeypatch.setattr(folder, "probe_video", lambda p: probed.append(p) or real_probe(p))
    ds, _ = open_quietly(root)
    assert len(probed) == 4
    index = json.loads(ds.index_path.read_text())
    assert sorted(e["path"] for e in index["files"]) == ["a.mp4", "broken.mp4", "c.MOV",
                                                         "sub/b.mp4"]
    probed.clear()
    _, warned = open_quietly(root)
    assert probed == [] and warned == []  # said once per process
    folder._WARNED.clear()  # as in a new process
    _, warned = open_quietly(root)
    assert probed == [] and len(warned) == 1  # the cached failure still warns
    write_video(root / "c.MOV", gray_ramp(36, 5), fps=8)
    write_video(root / "d.mkv", gray_ramp(8, 5), fps=8, quality="lossless")
    ds, _ = open_quietly(root)
    assert sorted(p.name for p in probed) == ["c.MOV", "d.mkv"]
    assert len(ds) == 3 + 5 + 3 + 1  # c.MOV now 36 frames: (36 - 8) // 8 + 1 and its tail


def test_the_folder_is_only_read_and_the_index_lives_in_the_user_cache(root, tmp_path, monkeypatch):
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    monkeypatch.delenv("VIDEOLM_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    open_quietly(root)
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()
    assert (tmp_path / "home/.cache/videolm/index" / f"{digest}.json").is_file()
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before
    monkeypatch.setenv("VIDEOLM_CACHE", str(tmp_path / "mine"))
    open_quietly(root)
    assert (tmp_path / "mine" / "index" / f"{digest}.json").is_file()


def test_read_failure_later_warns_once_and_moves_on(root):
    ds, _ = open_quietly(root)
    (root / "a.mp4").write_text("replaced by garbage\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[0], ds[1], ds[2]]
    assert len(caught) == 1 and "a.mp4" in str(caught[0].message)
    assert [(x["path"], x["start"]) for x in items] == [("c.MOV", 0.0)] * 3


def test_manifest_is_authoritative(tmp_path):
    root = tmp_path / "shapes"
    records = []
    for name, freq in (("0000000", 330), ("0000001", 494)):
        write_video(root / f"video/{name}.mkv", gray_ramp(17, 7, 64, 64), quality="lossless")
        write_video(root / f"structure/{name}.mkv", gray_ramp(17, 3, 64, 64), quality="lossless")
        write_audio(root / f"audio/{name}.wav", tone(freq, 17 / 8), subtype="FLOAT")
        records.append({"id": name, "caption": f"clip {name}", "video": f"video/{name}.mkv",
                        "audio": f"audio/{name}.wav", "structure": f"structure/{name}.mkv",
                        "meta": {"seed": int(name)}})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = FolderDataset(root, frames=17, fps=8)
    assert len(ds) == 2
    item = ds[1]
    assert (item["path"], item["caption"]) == ("video/0000001.mkv", "clip 0000001")
    assert item["audio"].shape == (34000,) and item["has_audio"]
    assert dominant_freq(item["audio"]) == pytest.approx(494, rel=0.02)
    np.testing.assert_array_equal(item["video"], gray_ramp(17, 7, 64, 64))


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(UsageError, match="nothing_here: no such folder"):
        FolderDataset(tmp_path / "nothing_here")
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(DataError, match="nothing_here"):
        FolderDataset(tmp_path / "nothing_here")
    (tmp_path / "nothing_here" / "bad.webm").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="bad.webm"), pytest.raises(DataError, match="no readable"):
        FolderDataset(tmp_path / "nothing_here")


def test_the_tail_of_a_file_is_a_clip_of_its_last_frames(root):
    ds, _ = open_quietly(root)
    last_c = [ds[i] for i in range(len(ds)) if ds[i]["path"] == "c.MOV"][-1]
    assert last_c["start"] == 1.5  # frames 12..19 of 20
    assert abs(last_c["video"][-1].mean() - 19 * 12) < 3 and abs(last_c["video"][0].mean() - 12 * 12) < 3


def test_videos_split_into_train_and_held_out(tmp_path):
    for i in range(10):
        write_video(tmp_path / f"v{i}.mp4", gray_ramp(8, 1 + i, H=32, W=32), fps=8)
    kw = dict(frames=8, fps=8, size=(32, 32), index_path=tmp_path.parent / "index.json")
    train = FolderDataset(tmp_path, split="train", held_out=0.2, **kw)
    held = FolderDataset(tmp_path, split="eval", held_out=0.2, **kw)
    everything = FolderDataset(tmp_path, **kw)
    assert set(train.paths()).isdisjoint(held.paths()) and len(held.paths()) >= 1
    assert sorted(train.paths() + held.paths()) == sorted(everything.paths())
    write_video(tmp_path / "new.mp4", gray_ramp(8, 3, H=32, W=32), fps=8)  # adding a file moves no video
    assert set(held.paths()) <= set(FolderDataset(tmp_path, split="eval", held_out=0.2, **kw).paths())
    assert folder.held_out_videos(["only.mp4"], 0.5) == set()
    assert len(folder.held_out_videos(["a.mp4", "b.mp4"], 0.01)) == 1  # at least one of two


def test_the_cache_decodes_each_video_once_across_epochs_and_datasets(root, monkeypatch):
    decoded = []
    real = folder.read_video
    monkeypatch.setattr(folder, "read_video", lambda path, **kw: decoded.append(path) or real(path, **kw))
    plain, _ = open_quietly(root)
    ds, _ = open_quietly(root, cache=True)
    first = [ds[i]["video"] for i in range(len(ds))]
    assert len(decoded) == 3  # one decode per video, not per clip
    again, _ = open_quietly(root, cache=True)  # a later run: nothing decoded again
    second = [again[i]["video"] for i in range(len(again))]
    assert len(decoded) == 3
    reference = [plain[i]["video"] for i in range(len(plain))]
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(first, second, reference))
    assert not any(p.name.endswith(".npy") for p in root.rglob("*"))  # the cache is not in the folder
