"""Tasks lay sequences out as docs/design.md's "Sequence format" says, and read their outputs back."""

import pytest
import torch

from videolm.core.errors import ConfigError, UsageError
from videolm.tasks.base import BUILTIN, Task, build_tasks, task_class
from videolm.tokenizers.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vocab():
    return Vocabulary(text_size=16, video_codes=32, audio_levels=3, audio_codes=8, resolutions=[(64, 64), (32, 48)])


def sample(seed=0, t=2, n=6, frames=5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"text": torch.tensor([3, 1, 4, 1, 5]), "video": torch.randint(0, 32, (t, n), generator=g),
            "audio": torch.randint(0, 8, (frames, 3), generator=g), "height": 32, "width": 48}


def test_t2v_sequence_layout(vocab):
    (t2v,) = build_tasks(["t2v"], vocab)
    s = sample()
    prefix, target = t2v.build(s)
    assert prefix.tolist() == [vocab["<bos>"], vocab.task_id("t2v"), vocab.res_id(32, 48), vocab["<bot_i>"],
                               *vocab.text_to_ids([3, 1, 4, 1, 5]).tolist(), vocab["<eot_i>"], vocab["<bov_o>"]]
    assert len(target) == 2 * 6 + 2 and target[-2:].tolist() == [vocab["<eov_o>"], vocab["<eos>"]]
    # latent frame by latent frame, rows then columns: the codes flattened in (t, n) order
    assert torch.equal(vocab.ids_to_video(target[:-2]), s["video"].flatten())


def test_v2a_sequence_layout_interleaves_audio_levels_per_frame(vocab):
    (v2a,) = build_tasks(["v2a"], vocab)
    s = sample()
    prefix, target = v2a.build(s)
    assert prefix[:4].tolist() == [vocab["<bos>"], vocab.task_id("v2a"), vocab.res_id(32, 48), vocab["<bov_i>"]]
    assert prefix[-2:].tolist() == [vocab["<eov_i>"], vocab["<boa_o>"]] and len(prefix) == 4 + 12 + 2
    assert torch.equal(vocab.ids_to_video(prefix[4:-2]), s["video"].flatten())
    assert len(target) == 5 * 3 + 2 and target[-2:].tolist() == [vocab["<eoa_o>"], vocab["<eos>"]]
    assert [vocab.audio_level(int(i)) for i in target[:-2]] == [0, 1, 2] * 5
    assert torch.equal(vocab.ids_to_audio(target[:-2].view(5, 3)), s["audio"])


def test_dropping_the_text_leaves_an_empty_text_segment_and_the_rest_alone(vocab):
    t2v, v2a = build_tasks(["t2v", "v2a"], vocab)
    s = sample()
    full, empty = t2v.prefix(s), t2v.prefix(s, drop_text=True)
    assert empty.tolist() == full[:4].tolist() + [vocab["<eot_i>"], vocab["<bov_o>"]]
    assert torch.equal(v2a.prefix(s, drop_text=True), v2a.prefix(s))  # nothing to drop


@pytest.mark.parametrize("name", ["t2v", "v2a"])
def test_layout_accepts_the_target_and_output_codes_invert_it(vocab, name):
    (task,) = build_tasks([name], vocab)
    s = sample(seed=3)
    target = task.target_ids(s)
    shape = tuple(s[task.output].shape)
    layout = task.layout(shape)
    assert layout.accepts(target)
    assert torch.equal(task.output_codes(target, shape), s[task.output])
    wrong = target.clone()
    wrong[0] = vocab["<eos>"]
    assert not layout.accepts(wrong)
    with pytest.raises(UsageError, match="output ids"):
        task.output_codes(target[:3], shape)


def test_accepts_needs_every_input_and_the_output(vocab):
    t2v, v2a = build_tasks(["t2v", "v2a"], vocab)
    silent = {k: v for k, v in sample().items() if k != "audio"}
    assert t2v.accepts(silent) and not v2a.accepts(silent)
    assert not t2v.accepts({k: v for k, v in sample().items() if k != "text"})


def test_adding_tasks_moves_no_id_and_tasks_need_their_token(vocab):
    before = {name: vocab[name] for name in ("<pad>", "<eos>", "<bov_o>")}
    size, video = len(vocab), vocab.range("video")
    t2v, v2a = build_tasks(["t2v", "v2a"], vocab)
    assert len(vocab) == size and vocab.range("video") == video
    assert {name: vocab[name] for name in before} == before
    assert vocab.tasks == ["t2v", "v2a"] and t2v.task_id != v2a.task_id
    assert build_tasks(["t2v"], vocab)[0].task_id == t2v.task_id  # asking again adds nothing
    with pytest.raises(KeyError, match="unknown task 'v2a'"):
        task_class("v2a")(Vocabulary(text_size=4, video_codes=4, audio_codes=4))


def test_tasks_by_name_or_import_path(vocab):
    assert set(BUILTIN) >= {"t2v", "v2a"}
    assert task_class("videolm.tasks.t2v:TextToVideo") is task_class("t2v")
    for name in BUILTIN:
        cls = task_class(name)
        assert issubclass(cls, Task) and cls.name == name and cls.description and cls.output in ("video", "audio")
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        task_class("nope")
    with pytest.raises(ConfigError, match="not a Task subclass"):
        task_class("videolm.tasks.base:build_tasks")
    with pytest.raises(ConfigError, match="cannot import"):
        task_class("videolm.tasks.nowhere:Task")
