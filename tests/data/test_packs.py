"""Clip packs: a folder decoded once into shards, split as the folder splits, read back from a
folder or a URL (fsspec's in-memory filesystem stands in for object storage), fetched shards kept."""

import json
import os
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest

from videolm.cli.main import main
from videolm.core.errors import DataError, UsageError
from videolm.core.training import ResumableSampler
from videolm.data import packs
from videolm.data.folder import FolderDataset
from videolm.data.media import write_video
from videolm.data.packs import CACHE_CAP, ClipPack, is_pack
from videolm.data.shapes import ShapesConfig, make_clip
from videolm.data.sources import ClipSource


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        write_video(root / f"v{i}.mp4", make_clip(i, ShapesConfig(height=32, width=32, frames=13)).video, fps=8)
        (root / f"v{i}.txt").write_text(f"clip {i}\n")
    return root


def folder_of(pack: Path) -> Path:
    return Path(json.loads((pack / "pack.json").read_text())["source"])


@pytest.fixture(scope="module")
def pack(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert main(["data", "pack", str(folder), "--out", str(out), "--size", "32x32", "--frames", "5", "--stride", "4",
                 "--held-out", "0.25", "--shard-clips", "3"]) == 0
    return out


def test_a_pack_holds_the_folders_clips_split_by_video(folder, pack):
    settings = dict(frames=5, size=(32, 32), stride=4, held_out=0.25)
    for part, split in (("train", "train"), ("eval", "eval")):
        clips, videos = ClipPack(pack, part), FolderDataset(folder, split=split, **settings)
        assert len(clips) == len(videos) > 0
        for i in range(len(videos)):
            a, b = clips[i], videos[i]
            assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["audio"], b["audio"])
            assert (a["path"], a["start"], a["caption"]) == (b["path"], b["start"], b["caption"])
    assert is_pack(str(pack)) and not is_pack(str(folder))
    assert len(ClipPack(pack).shards) == -(-len(ClipPack(pack)) // 3)
    source = ClipSource(str(pack), num=2, seed=1, frames=5, height=32, width=32)
    assert np.array_equal(source.dataset()[0]["video"], ClipPack(pack)[1]["video"])


def test_a_pack_at_a_url_is_fetched_once_and_kept(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOLM_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    for f in pack.iterdir():
        memory.pipe(f"/bucket/pack/{f.name}", f.read_bytes())
    try:
        remote, local = ClipPack("memory://bucket/pack"), ClipPack(pack)
        assert len(remote) == len(local)
        assert all(np.array_equal(remote[i]["video"], local[i]["video"]) for i in range(len(local)))
        for name in memory.ls("/bucket/pack", detail=False):
            if not name.endswith("pack.json"):
                memory.rm(name)  # the shards are gone from the store: a new reader uses the cached copies
        again = ClipPack("memory://bucket/pack")
        assert np.array_equal(again[len(again) - 1]["video"], local[len(local) - 1]["video"])
        # packed again at the same URL: a new id, so nothing stale is read from the cache
        other = tmp_path / "other"
        assert main(["data", "pack", str(folder_of(pack)), "--out", str(other), "--size", "32x32", "--frames", "9",
                     "--held-out", "0.25"]) == 0
        for f in other.iterdir():
            memory.pipe(f"/bucket/pack/{f.name}", f.read_bytes())
        fresh = ClipPack("memory://bucket/pack")
        assert len(fresh) == len(ClipPack(other)) and fresh[len(fresh) - 1]["video"].shape == (9, 32, 32, 3)
        assert np.array_equal(fresh[len(fresh) - 1]["video"], ClipPack(other)[len(fresh) - 1]["video"])
    finally:
        memory.rm("/bucket", recursive=True)
    with pytest.raises(DataError, match="not a readable clip pack"):
        ClipPack("memory://bucket/none")


def test_a_capped_cache_keeps_under_its_cap_and_fetches_each_shard_once_an_epoch(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOLM_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    for f in pack.iterdir():
        memory.pipe(f"/capped/pack/{f.name}", f.read_bytes())
    fetched = []
    real_open = fsspec.open

    def counting_open(url, *args, **kwargs):
        if not url.endswith("pack.json"):
            fetched.append(url)
        return real_open(url, *args, **kwargs)

    monkeypatch.setattr(packs.fsspec, "open", counting_open)
    try:
        assert ClipPack("memory://capped/pack").shard_order is None  # no cap: any order
        shard = max(sum(s["bytes"].values()) for s in ClipPack(pack).shards)
        monkeypatch.setenv(CACHE_CAP, str(2.5 * shard / 1e9))  # two and a half shards: one read at a time
        remote, local = ClipPack("memory://capped/pack"), ClipPack(pack)
        sizes, window = remote.shard_order
        assert window == 1 and sum(sizes) == len(remote) and len(sizes) == len(remote.shards) > 2
        sampler = ResumableSampler(len(remote), batch_size=2, seed=1, groups=remote.shard_order)
        keys = iter(sampler)
        for epoch in range(2):
            for _ in range(len(remote)):
                i, _ = next(keys)
                assert np.array_equal(remote[i]["video"], local[i]["video"])
                cached = sum(f.stat().st_size for f in (tmp_path / "cache" / "packs").rglob("*") if f.is_file())
                assert cached <= 2.5 * shard
            if epoch == 0:
                assert len(fetched) == len(set(fetched)) == 3 * len(sizes)  # every shard's three files once
        assert len(fetched) <= 2 * 3 * len(sizes)
        monkeypatch.setenv(CACHE_CAP, "lots")
        with pytest.raises(UsageError, match="VIDEOLM_PACK_CACHE_GB='lots'"):
            ClipPack("memory://capped/pack")
    finally:
        memory.rm("/capped", recursive=True)


def test_bad_packs_and_pack_commands_are_one_line(pack, folder, tmp_path, capsys):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "pack.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a videolm clip pack"):
        ClipPack(tmp_path / "fake")
    capsys.readouterr()
    assert main(["data", "pack", str(folder), "--out", str(pack)]) == 2  # not over an existing output
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "p"), "--split", "eval"]) == 2
    assert main(["data", "pack", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("videolm: error:") for line in lines)
    assert not (tmp_path / "p").exists()
    with pytest.raises(Exception, match="holds 32x32 clips of 5 frames at 8 fps; this command reads 32x32 clips of 9"):
        ClipSource(str(pack), frames=9, height=32, width=32).dataset()
    broken = tmp_path / "broken"
    shutil.copytree(pack, broken)
    shard = broken / "train-00001.npy"
    shard.write_bytes(shard.read_bytes()[:500])  # truncated
    clips = ClipPack(broken)
    assert clips[0]["video"].shape == (5, 32, 32, 3)  # the first shard is whole
    with pytest.raises(DataError, match="train-00001: a missing or damaged shard"):
        clips[3]
    index = json.loads((broken / "pack.json").read_text())
    del index["parts"]["eval"]
    (broken / "pack.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="an incomplete pack index"):
        ClipPack(broken)


def test_captions_held_out_part_and_unreadable_videos(folder, pack, tmp_path):
    from videolm.data.packs import pack_captions, write_pack

    assert sorted(pack_captions(str(pack))) == [f"clip {i}" for i in range(4)]  # one per video, both parts
    held = ClipSource(str(pack), num=100, frames=5, height=32, width=32, held_out=0.25).dataset()
    assert len(held) == len(ClipPack(pack, "eval")) and held[0]["path"] == ClipPack(pack, "eval")[0]["path"]
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    dataset = FolderDataset(mixed, frames=5, size=(32, 32), stride=4, held_out=0.25)  # indexed while whole
    v1 = mixed / "v1.mp4"
    stat = v1.stat()
    v1.write_bytes(b"\0" * stat.st_size)  # then broken, its size and time unchanged: it fails only to decode
    os.utime(v1, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    dataset = FolderDataset(mixed, frames=5, size=(32, 32), stride=4, held_out=0.25)
    with pytest.warns(UserWarning, match="skipping unreadable video"):
        write_pack(tmp_path / "p", dataset, shard_clips=2)
    index = json.loads((tmp_path / "p" / "pack.json").read_text())
    assert "v1.mp4" in index["skipped_videos"]
    clips = [(c["path"], c["start"]) for part in ("train", "eval") for c in ClipPack(tmp_path / "p", part)]
    assert len(clips) == len(set(clips)) and all(p != "v1.mp4" for p, _ in clips)  # no clip twice, none of v1
