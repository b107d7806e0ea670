import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videolm.core.errors import ConfigError, VideolmError
from videolm.tokenizers.vocab import SPECIALS, UnknownTokenError, Vocabulary

MODALITIES = ("special", "resolution", "task", "text", "video", "audio")
TASK_NAMES = st.text(alphabet="abcdefxyz_019", min_size=1, max_size=6)
RESOLUTIONS = st.tuples(st.integers(1, 256), st.integers(1, 256))


@st.composite
def vocabularies(draw):
    """A random layout, then a random run of added tasks and resolutions (often past the slots)."""
    vocab = Vocabulary(text_size=draw(st.integers(1, 600)), video_codes=draw(st.integers(1, 5000)),
                       audio_levels=draw(st.integers(0, 4)), audio_codes=draw(st.integers(1, 1100)),
                       tasks=draw(st.lists(TASK_NAMES, max_size=5)),
                       resolutions=draw(st.lists(RESOLUTIONS, max_size=3)),
                       task_slots=draw(st.integers(0, 6)))
    for is_task, name, hw in draw(st.lists(st.tuples(st.booleans(), TASK_NAMES, RESOLUTIONS), max_size=10)):
        vocab.add_task(name) if is_task else vocab.add_resolution(*hw)
    return vocab


def blocks(vocab):
    return ["special", "resolution", "task", "text", "video",
            *(f"audio{q}" for q in range(vocab.audio_levels)), "extra"]


def named_ids(vocab):
    return {name: vocab[name] for name in [*SPECIALS, *(f"<task:{t}>" for t in vocab.tasks),
                                           *(f"<res:{h}x{w}>" for h, w in vocab.resolutions)]}


@settings(max_examples=100, deadline=None)
@given(vocabularies())
def test_ranges_tile_the_vocabulary(vocab):
    stop = 0
    for name in blocks(vocab):
        start, stop_ = vocab.range(name)
        assert start == stop and stop_ >= start, name
        stop = stop_
    assert stop == len(vocab)
    assert vocab.range("audio") == (vocab.range("video")[1], vocab.range("extra")[0])
    assert vocab.range("text")[1] - vocab.range("text")[0] == vocab.text_size
    assert vocab.range("task")[1] - vocab.range("task")[0] == vocab.task_slots


@settings(max_examples=100, deadline=None)
@given(vocabularies())
def test_every_id_has_exactly_one_modality(vocab):
    ids = np.arange(len(vocab))
    masks = {name: vocab.modality_mask(name, ids) for name in MODALITIES}
    assert (sum(m.astype(int) for m in masks.values()) == 1).all()
    edges = {i for name in blocks(vocab) for i in (vocab.range(name)[0], vocab.range(name)[1] - 1)}
    for i in sorted(e for e in edges if 0 <= e < len(vocab)) + list(range(*vocab.range("extra"))):
        assert masks[vocab.modality(i)][i]
    for name, id in named_ids(vocab).items():
        assert vocab.name(id) == name
    assert vocab.allowed("task").sum() == vocab.task_slots + sum(t.startswith("<task:") for t in vocab.extra)


@settings(max_examples=100, deadline=None)
@given(vocabularies(), st.integers(0, 2**32 - 1), st.booleans())
def test_round_trips_numpy_and_torch(vocab, seed, as_torch):
    rng = np.random.default_rng(seed)
    wrap = torch.from_numpy if as_torch else (lambda a: a)
    text = wrap(rng.integers(0, vocab.text_size, (2, 3)))  # (B, L)
    video = wrap(rng.integers(0, vocab.video_codes, (2, 3, 4)))  # (B, t, h*w)
    audio = wrap(rng.integers(0, vocab.audio_codes, (2, 5, vocab.audio_levels)))  # (B, T, Q)
    for codes, to_ids, to_codes, name in [(text, vocab.text_to_ids, vocab.ids_to_text, "text"),
                                          (video, vocab.video_to_ids, vocab.ids_to_video, "video"),
                                          (audio, vocab.audio_to_ids, vocab.ids_to_audio, "audio")]:
        ids = to_ids(codes)
        assert type(ids) is type(codes) and ids.shape == codes.shape
        assert (to_codes(ids) == codes).all()
        assert vocab.modality_mask(name, ids).all()
    ids = vocab.audio_to_ids(audio)
    for q in range(vocab.audio_levels):
        assert vocab.modality_mask("audio", ids[..., q], level=q).all()
        assert vocab.audio_level(int(ids[0, 0, q])) == q
        assert (vocab.audio_to_ids(audio[..., q], level=q) == ids[..., q]).all()
        assert (vocab.ids_to_audio(ids[..., q], level=q) == audio[..., q]).all()


@settings(max_examples=100, deadline=None)
@given(vocabularies(), st.lists(st.tuples(st.booleans(), TASK_NAMES, RESOLUTIONS), min_size=1, max_size=12))
def test_adding_tokens_never_moves_an_id(vocab, additions):
    before = named_ids(vocab)
    ranges = {name: vocab.range(name) for name in blocks(vocab) if name != "extra"}
    length, extra = len(vocab), vocab.extra
    for is_task, name, hw in additions:
        first = vocab.add_task(name) if is_task else vocab.add_resolution(*hw)
        assert (vocab.add_task(name) if is_task else vocab.add_resolution(*hw)) == first
    after = named_ids(vocab)
    assert {name: after[name] for name in before} == before
    assert {name: vocab.range(name) for name in ranges} == ranges
    assert vocab.extra[:len(extra)] == extra
    assert len(vocab) == length + len(vocab.extra) - len(extra)
    assert len(set(after.values())) == len(after)


@settings(max_examples=100, deadline=None)
@given(vocabularies())
def test_dict_round_trip_is_exact(vocab):
    data = json.loads(json.dumps(vocab.to_dict()))
    loaded = Vocabulary.from_dict(data)
    assert loaded == vocab and loaded.to_dict() == data
    assert named_ids(loaded) == named_ids(vocab) and len(loaded) == len(vocab)
    assert loaded.tasks == vocab.tasks and loaded.resolutions == vocab.resolutions


def test_default_layout_is_pinned():
    """Saved models depend on these ids; changing the layout breaks every checkpoint."""
    vocab = Vocabulary(384, tasks=["t2v", "i2v"])
    assert [vocab[s] for s in SPECIALS] == list(range(14))
    assert vocab["<res:64x64>"] == vocab.res_id(64, 64) == 14
    assert vocab.task_id("t2v") == 15 and vocab["<task:i2v>"] == 16
    assert vocab.range("text") == (79, 463)
    assert vocab.range("video") == (463, 4559)
    assert [vocab.range("audio", level=q) for q in range(4)] == [(4559, 5583), (5583, 6607),
                                                                 (6607, 7631), (7631, 8655)]
    assert len(vocab) == 8655 and vocab.range("extra") == (8655, 8655)


def test_tasks_fill_slots_then_extra():
    vocab = Vocabulary(10, video_codes=8, audio_levels=2, audio_codes=4, tasks=["a"], task_slots=2)
    assert len(vocab) == 14 + 1 + 2 + 10 + 8 + 8
    b = vocab.add_task("b")
    assert b == vocab.task_id("a") + 1 and len(vocab) == 43
    c = vocab.add_task("c")
    r = vocab.add_resolution(32, 48)
    assert (c, r) == (43, 44) and len(vocab) == 45
    assert vocab.tasks == ["a", "b", "c"] and vocab.resolutions == [(64, 64), (32, 48)]
    assert vocab.modality(c) == "task" and vocab.modality(r) == "resolution"
    assert vocab.allowed("task").nonzero().flatten().tolist() == [15, 16, 43]
    assert vocab.allowed("extra").nonzero().flatten().tolist() == [43, 44]
    assert vocab.add_task("a") == 15 and vocab.add_resolution(64, 64) == 14 and len(vocab) == 45


def test_allowed_masks():
    vocab = Vocabulary(100, tasks=["t2v"])
    assert vocab.allowed("video").dtype == torch.bool and vocab.allowed("video").shape == (len(vocab),)
    assert vocab.allowed("video").sum() == 4096
    assert vocab.allowed("audio2").sum() == vocab.allowed("audio", level=2).sum() == 1024
    assert vocab.allowed("audio").sum() == 4096 and vocab.allowed("text").sum() == 100
    assert vocab.allowed("special").sum() == len(SPECIALS)
    start, stop = vocab.range("audio1")
    assert vocab.allowed("audio1")[start:stop].all() and not vocab.allowed("audio1")[stop]


def test_mapping_input_kinds():
    vocab = Vocabulary(100)
    start = vocab.range("video")[0]
    assert vocab.video_to_ids(3) == start + 3 and isinstance(vocab.video_to_ids(3), int)
    assert vocab.video_to_ids(np.int32(3)) == start + 3
    assert vocab.video_to_ids([1, 2]).tolist() == [start + 1, start + 2]
    assert vocab.video_to_ids(np.array([], dtype=np.int16)).dtype == np.int64
    assert vocab.video_to_ids([]).shape == (0,)
    out = vocab.video_to_ids(torch.tensor([[1, 2]], dtype=torch.int16))
    assert out.dtype == torch.int64 and out.device.type == "cpu" and out.shape == (1, 2)
    assert vocab.modality_mask("video", start) is True
    assert vocab.modality_mask("video", torch.tensor([start, 0])).tolist() == [True, False]
    with pytest.raises(TypeError):
        vocab.video_to_ids(np.array([1.0]))
    with pytest.raises(TypeError):
        vocab.video_to_ids(torch.tensor([True]))


def test_out_of_range_mapping_errors():
    vocab = Vocabulary(100, video_codes=16, audio_levels=2, audio_codes=8)
    text0, video0, audio0 = vocab.range("text")[0], vocab.range("video")[0], vocab.range("audio")[0]
    with pytest.raises(ValueError, match=r"text code 100 is outside \[0, 100\)"):
        vocab.text_to_ids([5, 100])
    with pytest.raises(ValueError, match=r"video code -1"):
        vocab.video_to_ids(torch.tensor([-1]))
    with pytest.raises(ValueError, match=rf"id {text0} is outside the video range \[{video0}, {video0 + 16}\)"):
        vocab.ids_to_video([video0, text0])
    with pytest.raises(ValueError, match="text range"):
        vocab.ids_to_text(np.array([[video0]]))
    with pytest.raises(ValueError, match=r"audio level 1 code 8 is outside \[0, 8\)"):
        vocab.audio_to_ids([[0, 8]])
    swapped = [[audio0 + 8, audio0]]  # level-1 id at level 0's place
    with pytest.raises(ValueError, match=rf"outside the audio level 0 range \[{audio0}, {audio0 + 8}\)"):
        vocab.ids_to_audio(swapped)
    with pytest.raises(ValueError, match="last axis of 2 levels"):
        vocab.audio_to_ids([1, 2, 3])
    with pytest.raises(ValueError, match="audio level 2"):
        vocab.audio_to_ids([1], level=2)
    with pytest.raises(ValueError, match="not an audio id"):
        vocab.audio_level(video0)
    with pytest.raises(ValueError, match="not an id of this vocabulary"):
        vocab.modality(len(vocab))


def test_unknown_names_are_clear_key_errors():
    vocab = Vocabulary(100, tasks=["t2v"])
    for lookup, match in [(lambda: vocab["<nope>"], "unknown token '<nope>'"),
                          (lambda: vocab.task_id("v2a"), "unknown task 'v2a' .*t2v"),
                          (lambda: vocab.res_id(32, 32), "unknown resolution 32x32 .*64x64"),
                          (lambda: vocab.name(vocab.range("text")[0]), "not a named token .*text"),
                          (lambda: vocab.name(vocab.range("task")[0] + 5), "not a named token .*task")]:
        with pytest.raises(UnknownTokenError, match=match) as e:
            lookup()
        assert isinstance(e.value, KeyError) and isinstance(e.value, VideolmError)
        assert str(e.value).startswith(("unknown", "id"))  # no KeyError quoting
    with pytest.raises(ValueError, match="unknown id range 'pixels'"):
        vocab.range("pixels")


@pytest.mark.parametrize("kwargs", [dict(text_size=0), dict(text_size=10, video_codes=0),
                                    dict(text_size=10, audio_levels=-1), dict(text_size=True),
                                    dict(text_size=10, tasks=["bad name"]),
                                    dict(text_size=10, resolutions=[(0, 64)])])
def test_bad_construction(kwargs):
    with pytest.raises(ConfigError):
        Vocabulary(**kwargs)


def test_save_load(tmp_path):
    vocab = Vocabulary(384, tasks=["t2v", "i2v", "v2a"], resolutions=[(64, 64), (128, 128)], task_slots=2)
    vocab.add_resolution(32, 32)
    vocab.add_task("extend")
    path = vocab.save(tmp_path / "model")
    assert path.name == "vocab.json" and not list(path.parent.glob(".*tmp"))
    for loaded in (Vocabulary.load(tmp_path / "model"), Vocabulary.load(path)):
        assert loaded == vocab and named_ids(loaded) == named_ids(vocab)
        assert loaded.extra == ("<task:v2a>", "<res:32x32>", "<task:extend>")
    assert Vocabulary(384) != vocab


def test_load_errors(tmp_path):
    with pytest.raises(VideolmError, match="vocab.json: no vocabulary there"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ConfigError, match="vocab.json: not valid JSON"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"kind": "lm", "config": {}}))
    with pytest.raises(ConfigError, match="not a saved vocabulary"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"kind": "vocabulary", "format": 9, "vocabulary": {}}))
    with pytest.raises(ConfigError, match="format 9, expected 1"):
        Vocabulary.load(tmp_path)
    data = Vocabulary(10).to_dict()
    for bad, match in [({**data, "colour": 1}, "unknown key 'colour'"),
                       ({**data, "text_size": "10"}, "text_size"),
                       ({**data, "extra": ["<task:a>", "<task:a>"]}, "repeated"),
                       ({**data, "extra": ["<video:3>"]}, "malformed"),
                       ({**data, "tasks": ["a", "a"]}, "inconsistent"),
                       ({**data, "task_slots": 1, "tasks": ["a", "b"]}, "inconsistent")]:
        (tmp_path / "vocab.json").write_text(json.dumps({"kind": "vocabulary", "format": 1, "vocabulary": bad}))
        with pytest.raises(ConfigError, match=match):
            Vocabulary.load(tmp_path)
