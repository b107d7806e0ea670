import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from videolm.core.errors import DataError, UsageError, VideolmError
from videolm.data.shapes import BACKGROUNDS, ShapesConfig, make_clip, sample_scene
from videolm.tokenizers.text import MODEL_NAME, TextTokenizer

EVERY_BACKGROUND = ShapesConfig(backgrounds=list(BACKGROUNDS))
# sample_scene gives make_clip's caption without rendering the clip (20x faster).
CAPTIONS = [sample_scene(seed, EVERY_BACKGROUND).caption for seed in range(300)]
HELD_OUT = [sample_scene(seed, EVERY_BACKGROUND).caption for seed in range(1_000_000, 1_000_300)]
# Any Unicode, with the characters sentencepiece treats specially drawn often.
ANY_TEXT = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(" \u2581\t\n\x00")))


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(CAPTIONS)


def test_captions_round_trip_in_one_token_per_word(tok):
    for caption in CAPTIONS + HELD_OUT:
        ids = tok.encode(caption)
        assert tok.decode(ids) == caption
        assert len(ids) == len(caption.split())
        assert all(0 <= i < tok.vocab_size for i in ids)
    one_object = next(c for c in HELD_OUT if " and " not in c)
    assert len(tok.encode(one_object)) <= 12


def test_captions_are_make_clip_captions():
    assert CAPTIONS[:3] == [make_clip(seed, EVERY_BACKGROUND).caption for seed in range(3)]
    assert any(" on a " in c for c in CAPTIONS) and any(" and " in c for c in CAPTIONS)


def test_pieces_are_whole_words(tok):
    pieces = [tok.piece(i) for i in tok.encode("a large cyan triangle moves right")]
    assert pieces == ["\u2581a", "\u2581large", "\u2581cyan", "\u2581triangle", "\u2581moves", "\u2581right"]


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_any_unicode_round_trips(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", ["", " ", "  a  b ", "\u2581", "\u2581x", "x\u2581\u2581 y", "🙂 漢字 ﬁ Ａ",
                                  "\x00\r\n\t", " leading", "trailing "])
def test_edge_cases_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_empty_text_is_no_tokens(tok):
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("a\ud800")


def test_decode_accepts_arrays_and_checks_range(tok):
    import numpy as np
    import torch
    ids = tok.encode(CAPTIONS[0])
    assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == CAPTIONS[0]
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.piece(-1)


def test_training_is_deterministic(tok):
    assert TextTokenizer.train(CAPTIONS).model_proto == tok.model_proto
    assert tok.vocab_size == 512


def test_unigram_also_round_trips():
    uni = TextTokenizer.train(CAPTIONS, model_type="unigram")
    for text in CAPTIONS[:20] + ["🙂 \u2581 x"]:
        assert uni.decode(uni.encode(text)) == text


def test_save_load_same_ids(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / MODEL_NAME
    for loaded in (TextTokenizer.load(tmp_path / "tok"), TextTokenizer.load(path)):
        assert loaded == tok
        for text in CAPTIONS[:50] + ["🙂 \u2581 漢字"]:
            assert loaded.encode(text) == tok.encode(text)


@pytest.mark.parametrize("content", [b"", b"not a model", b"\x0a\x05hello"])
def test_corrupt_file_is_one_clear_error(tok, tmp_path, content):
    (tmp_path / MODEL_NAME).write_bytes(content)
    with pytest.raises(VideolmError, match=f"{MODEL_NAME}: not a usable text tokenizer") as e:
        TextTokenizer.load(tmp_path)
    assert "\n" not in str(e.value)


def test_truncated_model_is_an_error(tok, tmp_path):
    (tmp_path / MODEL_NAME).write_bytes(tok.model_proto[:-7])
    with pytest.raises(VideolmError, match="not a usable text tokenizer"):
        TextTokenizer.load(tmp_path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(VideolmError, match=f"{MODEL_NAME}: no text tokenizer there"):
        TextTokenizer.load(tmp_path)


def test_bad_training_requests():
    with pytest.raises(UsageError, match="vocab_size=100"):
        TextTokenizer.train(CAPTIONS, vocab_size=100)
    with pytest.raises(DataError):
        TextTokenizer.train([])
    with pytest.raises(UsageError, match="model_type"):
        TextTokenizer.train(CAPTIONS, model_type="word")
