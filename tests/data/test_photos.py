"""The photo world: seeded clips of real photographs, split by image, at any size and length."""

import json

import numpy as np
import pytest

from videolm.cli.main import main
from videolm.core.errors import ConfigError
from videolm.data.folder import FolderDataset
from videolm.data.photos import HELD_OUT, PHOTOS, PhotoConfig, PhotoDataset, make_photo_clip, split_photos
from videolm.data.sources import ClipSource, MixedDataset, world_dataset


def test_a_seed_gives_the_same_clip_and_seeds_differ():
    a, b = make_photo_clip(3), make_photo_clip(3)
    assert np.array_equal(a.video, b.video) and a.caption == b.caption
    assert a.video.shape == (17, 64, 64, 3) and a.video.dtype == np.uint8
    assert not np.array_equal(a.video, make_photo_clip(4).video)


@pytest.mark.parametrize("size, frames", [((48, 80), 9), ((80, 48), 5), ((72, 128), 1)])
def test_any_size_and_length(size, frames):
    clip = make_photo_clip(0, PhotoConfig(height=size[0], width=size[1], frames=frames))
    assert clip.video.shape == (frames, *size, 3)
    assert clip.video.std() > 5  # a photograph, not a flat frame


def test_clips_move():
    moved = [np.abs(make_photo_clip(s).video[-1].astype(int) - make_photo_clip(s).video[0]).mean() for s in range(8)]
    assert sum(m > 2 for m in moved) >= 5  # most clips pan, zoom, turn or carry an object


def test_held_out_photographs_never_reach_training():
    train = {make_photo_clip(s, split="train").meta["photo"] for s in range(60)}
    held = {make_photo_clip(s, split="eval").meta["photo"] for s in range(30)}
    assert train.isdisjoint(HELD_OUT) and held <= set(HELD_OUT) and len(train) >= 8
    assert {p.name for p in split_photos("train")}.isdisjoint(p.name for p in split_photos("eval"))
    assert all(p.source and p.licence for p in PHOTOS)


def test_bad_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of 8"):
        PhotoConfig(height=50)
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        PhotoConfig(frames=16)


def test_worlds_and_mixes_as_datasets():
    photos = world_dataset("photos", 4, split="eval", frames=5, height=32, width=48)
    assert isinstance(photos, PhotoDataset) and photos[0]["video"].shape == (5, 32, 48, 3)
    mix = world_dataset("photos:3+shapes:1", 400, frames=1, height=32, width=32)
    assert isinstance(mix, MixedDataset)
    shares = np.bincount([mix.part_of(i) for i in range(400)], minlength=2) / 400
    assert abs(shares[0] - 0.75) < 0.02 and abs(shares[1] - 0.25) < 0.02
    assert "seed" in mix[0] and mix[0]["video"].shape == (1, 32, 32, 3)
    assert ClipSource("photos", num=2, split="eval", frames=5).dataset()[1]["caption"]


def test_data_photos_writes_a_folder_that_reads_back(tmp_path, capsys):
    out = tmp_path / "photos"
    assert main(["data", "photos", "--out", str(out), "--num", "3", "--size", "48x80", "--frames", "9",
                 "--split", "eval", "--seed", "5"]) == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["id"] for m in manifest] == ["1000005", "1000006", "1000007"]
    assert all(m["meta"]["photo"] in HELD_OUT for m in manifest)
    sources = json.loads((out / "sources.json").read_text())
    assert {s["name"] for s in sources} == set(HELD_OUT) and all(s["licence"] for s in sources)
    ds = FolderDataset(out, frames=9, fps=8, size=(48, 80))
    assert len(ds) == 3 and ds[0]["caption"] == manifest[0]["caption"]
    clip = make_photo_clip(1_000_005, PhotoConfig(height=48, width=80, frames=9), split="eval")
    assert np.array_equal(ds[0]["video"], clip.video)  # lossless
