"""Token shards: every clip's codes written once, read back exactly; safetensors and JSON only."""

import json

import pytest
import torch

from videolm.core.errors import DataError
from videolm.data.shards import ShardWriter, TokenShards
from videolm.tokenizers.vocab import Vocabulary


def vocab():
    return Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, resolutions=[(32, 32)])


def sample(seed: int, audio: bool = True, text_len: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = {"text": torch.randint(0, 16, (text_len,), generator=g), "video": torch.randint(0, 32, (2, 4), generator=g),
         "height": 32, "width": 32, "caption": f"clip {seed}", "seed": seed}
    if audio:
        s["audio"] = torch.randint(0, 8, (6, 2), generator=g)
    return s


def write(folder, samples, shard_size=3):
    writer = ShardWriter(folder, shard_size)
    for s in samples:
        codes = {k: s[k] for k in ("text", "video", "audio") if k in s}
        writer.add(codes, {k: v for k, v in s.items() if k not in codes})
    vocab().save(folder)
    writer.close({"model": None})
    return folder


def test_shards_read_back_exactly_what_was_written(tmp_path):
    samples = [sample(i, audio=i % 3 != 0, text_len=i % 4) for i in range(7)]
    shards = TokenShards(write(tmp_path, samples))
    assert len(shards) == 7
    assert [s["clips"] for s in shards.index["shards"]] == [3, 3, 1]
    for i, expected in enumerate(samples):
        got = shards[i]
        assert set(got) == set(expected)  # no audio where none was written; empty text stays
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == torch.long and torch.equal(got[key], value), (i, key)
            else:
                assert got[key] == value
    assert Vocabulary.load(shards.folder) == vocab()
    with pytest.raises(IndexError):
        shards[7]


def test_shards_are_safetensors_and_json_only(tmp_path):
    write(tmp_path, [sample(i) for i in range(4)], shard_size=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["index.json", "shard_00000.safetensors", "shard_00001.safetensors", "vocab.json"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["kind"] == "token_shards" and index["clips"] == 4


def test_missing_or_foreign_shards_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="videolm tokenize"):
        TokenShards(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(DataError, match="not a token shard index"):
        TokenShards(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"kind": "token_shards", "format": 1, "shards": [
        {"file": "shard_00000.safetensors", "clips": 1}]}))
    (tmp_path / "shard_00000.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="not a readable token shard"):
        TokenShards(tmp_path)
