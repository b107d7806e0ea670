"""Every built-in task on real codes (the shipped tokenizers, Shapes clips): its sequence, its
output read back into media, and the same prefix from a user's files as from the training views."""

import numpy as np
import pytest
import torch

from videolm.core.errors import UsageError
from videolm.data.shapes import make_clip
from videolm.data.shapes_data import ShapesDataset
from videolm.lm.data import TaskSequences
from videolm.tasks.base import BUILTIN, TaskInputs, build_tasks
from videolm.tasks.tokenizing import ClipTokenizer, LazySamples, image_caption
from videolm.tasks.views import box_mask, clip_views, ping_pong, pixel_mask_to_grid
from videolm.tokenizers.geometry import grid_of

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    tok = ClipTokenizer("shapes-64")
    tok.vocab.add_resolution(64, 64)
    return tok


@pytest.fixture(scope="module")
def clips():
    data = ShapesDataset(2, seed=11)
    return [data[i] for i in range(2)]


@pytest.fixture(scope="module")
def samples(tok, clips):
    return tok.encode(clips)


@pytest.fixture(scope="module")
def tasks(tok):
    return {t.name: t for t in build_tasks(list(BUILTIN), tok.vocab)}


EXPECTED_OUTPUT = {"t2v": (5, 64), "t2i": (1, 64), "i2v": (4, 64), "extend": (2, 64), "extend_back": (3, 64),
                   "interpolate": (3, 64), "loop": (5, 64), "inpaint": (5, 64), "outpaint": (5, 64),
                   "stylize": (5, 64), "v2a": (107, 4), "a2v": (5, 64), "uncond": (5, 64)}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_sequence_layout_and_output_round_trip(tasks, samples, tok, name):
    task, s = tasks[name], samples[0]
    v = tok.vocab
    assert task.accepts(s)
    prefix, target = task.build(s)
    begin, end = ("<boa_o>", "<eoa_o>") if task.output == "audio" else ("<bov_o>", "<eov_o>")
    assert prefix[:3].tolist() == [v["<bos>"], v.task_id(name), v.res_id(64, 64)] and prefix[-1] == v[begin]
    shape = task.output_shape(s)
    assert shape == EXPECTED_OUTPUT[name]
    assert target[-2:].tolist() == [v[end], v["<eos>"]] and len(target) == shape[0] * shape[1] + 2
    assert task.layout(shape).accepts(target)
    assert torch.equal(task.output_codes(target, shape), task.target_codes(s))
    media = task.to_media(task.target_codes(s), s, tok)
    if task.output == "audio":
        assert media.audio.shape == (s["num_samples"],)
    else:
        assert media.video.shape == ((1 if name == "t2i" else 17), 64, 64, 3) and media.video.dtype == np.uint8


def test_lazy_samples_tokenize_only_what_a_task_reads(tok, samples, tasks):
    """`LazySamples` gives `encode`'s samples (fields tokenized one clip at a time can differ only
    where a latent sits on a quantization boundary) and tokenizes a field only when it is read."""
    lazy = LazySamples(ShapesDataset(2, seed=11), tok, extra=lambda c: {"flipped": c["video"][:, ::-1]})
    s = lazy[0]
    assert set(s) == set(samples[0]) | {"flipped"} and "flipped" in s and "nope" not in s
    for name in BUILTIN:
        assert tasks[name].accepts(s)
    assert lazy.codes[0] == {}  # nothing tokenized by asking what is there
    prefix, target = tasks["extend_back"].build(s)
    assert sorted(lazy.codes[0]) == ["tail", "video"]  # what extend_back reads and writes, and no more
    assert torch.equal(prefix, tasks["extend_back"].build(samples[0])[0]) and len(target)
    for name, value in samples[0].items():
        if isinstance(value, torch.Tensor):
            assert value.shape == s[name].shape and (value == s[name]).float().mean() > 0.99, name
        else:
            assert value == s[name], name
    assert lazy[0]["tail"] is s["tail"]  # kept: a later draw of the clip tokenizes nothing again
    again = LazySamples(ShapesDataset(2, seed=11), tok)
    sequences = TaskSequences(again, [tasks["v2a"], tasks["interpolate"]], [1.0, 1.0], text_dropout=0.0)
    torch.manual_seed(0)
    examples = sequences.__getitems__([0, 1])  # what a DataLoader asks for: both clips' fields in one batch
    for clip, example in enumerate(examples):
        task = sequences.tasks[example.task]
        assert sorted(again.codes[clip]) == sorted(set(task.fields) - {"text"})
        assert torch.equal(example.ids, torch.cat(task.build(samples[clip])))  # the same codes as encode's
    assert {e.task for e in examples} == {0, 1}  # (this seed draws each task once: audio and video fields)
    no_structure = LazySamples([{**ShapesDataset(1, seed=11)[0], "structure": None}], tok)[0]
    assert not tasks["stylize"].accepts(no_structure) and tasks["extend"].accepts(no_structure)


def test_truth_decoded_through_each_task_matches_the_clip(tasks, samples, clips, tok):
    """Reassembling condition and target gives back the clip (up to the tokenizer's error)."""
    from videolm.core.metrics import psnr

    for name in ("extend", "extend_back", "interpolate", "i2v", "t2v"):
        task = tasks[name]
        video = task.to_media(task.target_codes(samples[0]), samples[0], tok).video
        assert psnr(video, clips[0]["video"]) > 25, name


def test_views(clips):
    video = clips[0]["video"]
    views, meta = clip_views(video, seed=5)
    assert views["tail"].shape[0] == 9 and np.array_equal(views["tail"], video[8:])
    assert np.array_equal(views["end"], video[12:])
    loop = ping_pong(video)
    assert len(loop) == 17 and np.array_equal(loop[0], loop[-1]) and np.array_equal(loop[8], video[8])
    hidden = box_mask(meta["inpaint_box"], (8, 8), True)
    assert 0 < hidden.sum() < 64 and not views["inpaint"][:, np.repeat(np.repeat(hidden, 8, 0), 8, 1)].any()
    kept = ~box_mask(meta["outpaint_box"], (8, 8), False)
    assert 0 < kept.sum() < 64
    assert clip_views(video, seed=5)[1] == meta and clip_views(video, seed=6)[1] != meta


def test_image_caption_drops_motion():
    assert image_caption("a large red circle moves left and a small blue square stays still on a gray background") \
        == "a large red circle and a small blue square on a gray background"


def test_generation_inputs_give_the_training_prefix(tasks, samples, clips, tok):
    """The causal tokenizer makes a user's clip start (and the views, tokenized alone) encode as
    in training, so the prefix from files equals the prefix the model was trained on."""
    geometry = tok.geometry()
    clip, s = clips[0], samples[0]
    cases = {
        "extend": TaskInputs(videos=[clip["video"][:9]]),
        "extend_back": TaskInputs(videos=[clip["video"][8:]]),
        "interpolate": TaskInputs(videos=[clip["video"][:5], clip["video"][12:]]),
        "i2v": TaskInputs(image=clip["video"][0], text=clip["caption"]),
        "t2v": TaskInputs(text=clip["caption"]),
        "stylize": TaskInputs(videos=[clip["structure"]], text=clip["caption"]),
        "v2a": TaskInputs(videos=[clip["video"]]),
        "a2v": TaskInputs(audio=clip["audio"]),
    }
    for name, inputs in cases.items():
        task = tasks[name]
        task.training = False
        try:
            made = task.encode_inputs(inputs, tok, geometry)
            assert torch.equal(task.prefix(made), task.prefix(s)), name
            assert task.output_shape(made) == task.output_shape(s), name
        finally:
            task.training = True


@pytest.mark.parametrize("name", ["inpaint", "outpaint"])
def test_masked_content_never_reaches_the_prefix(tasks, clips, tok, name):
    task = tasks[name]
    video = clips[0]["video"]
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:40, 24:48] = 255  # white: generate here
    if name == "outpaint":
        mask = 255 - mask
    hidden = pixel_mask_to_grid(mask, grid_of(64, 64))
    pixels = np.repeat(np.repeat(hidden, 8, 0), 8, 1)
    other = video.copy()
    other[:, pixels] = np.random.default_rng(0).integers(0, 255, other[:, pixels].shape, dtype=np.uint8)
    a = task.encode_inputs(TaskInputs(videos=[video], mask=mask), tok, tok.geometry())
    b = task.encode_inputs(TaskInputs(videos=[other], mask=mask), tok, tok.geometry())
    pa, pb = task.prefix(a), task.prefix(b)
    assert torch.equal(pa, pb)  # whatever was in the hidden region, the prefix is the same
    masks = (pa == tok.vocab["<mask>"]).sum().item()
    assert masks == 5 * hidden.sum()  # every hidden cell of every latent frame
    # the result keeps the given pixels where the mask kept them
    made = task.to_media(a[name], a, tok).video
    assert np.array_equal(made[:, ~pixels], video[:, ~pixels])


def test_missing_inputs_name_the_flag(tasks, tok):
    geometry = tok.geometry()
    for name, flag in [("t2v", "--prompt"), ("i2v", "--image"), ("extend", "--video"), ("v2a", "--video"),
                       ("a2v", "--audio"), ("inpaint", "--video"), ("stylize", "--video")]:
        with pytest.raises(UsageError, match=flag):
            tasks[name].encode_inputs(TaskInputs(), tok, geometry)
    with pytest.raises(UsageError, match="--mask"):
        tasks["inpaint"].encode_inputs(TaskInputs(videos=[make_clip(1).video]), tok, geometry)
    with pytest.raises(UsageError, match="at least 9 frames"):
        tasks["extend"].encode_inputs(TaskInputs(videos=[make_clip(1).video[:4]]), tok, geometry)
    with pytest.raises(UsageError, match="hides nothing"):
        tasks["inpaint"].encode_inputs(TaskInputs(videos=[make_clip(1).video], mask=np.zeros((64, 64), np.uint8)),
                                       tok, geometry)
