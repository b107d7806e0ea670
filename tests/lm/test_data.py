"""Task sequences from a mixture, and packing them into rows with their tasks."""

import pytest
import torch

from videolm.core.errors import ConfigError, DataError
from videolm.lm.data import PackCollate, TaskExample, TaskSequences
from videolm.lm.masks import IGNORE
from videolm.tasks.base import build_tasks
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




# -- task sequences ---------------------------------------------------------------------------------------


def test_text_dropout_happens_at_about_the_configured_rate():
    v = vocab()
    (t2v,) = build_tasks(["t2v"], v)
    data = TaskSequences([sample(0)], [t2v], text_dropout=0.25)
    torch.manual_seed(0)
    empty = [v["<bot_i>"], v["<eot_i>"]]
    dropped = 0
    for _ in range(2000):
        ids = data[0].ids.tolist()
        start = ids.index(v["<bot_i>"])
        dropped += ids[start:start + 2] == empty
    assert 0.22 < dropped / 2000 < 0.28  # binomial sd ~ 0.01
    assert TaskSequences([sample(0)], [t2v], text_dropout=0.0)[0].ids.tolist().count(v["<eot_i>"]) == 1


def test_tasks_are_drawn_by_weight_among_those_that_accept_the_clip():
    t2v, v2a = build_tasks(["t2v", "v2a"], vocab())
    data = TaskSequences([sample(0), sample(1, audio=False)], [t2v, v2a], weights=[1.0, 3.0])
    torch.manual_seed(0)
    with_audio = [data[0].task for _ in range(2000)]
    assert 0.72 < sum(with_audio) / 2000 < 0.78  # v2a (index 1) drawn 3 times out of 4
    assert {data[1].task for _ in range(50)} == {0}  # no audio: never v2a
    only_v2a = TaskSequences([sample(1, audio=False)], [v2a])
    with pytest.raises(DataError, match="none of the tasks v2a"):
        only_v2a[0]


def test_a_sequence_longer_than_a_row_or_a_bad_mixture_is_a_clear_error():
    t2v, v2a = build_tasks(["t2v", "v2a"], vocab())
    with pytest.raises(DataError, match="raise train.row_len"):
        TaskSequences([sample(0)], [v2a], max_len=10)[0]
    with pytest.raises(ConfigError, match="one weight per task"):
        TaskSequences([sample(0)], [t2v, v2a], weights=[1.0])
    with pytest.raises(ConfigError, match="not all 0"):
        TaskSequences([sample(0)], [t2v], weights=[0.0])
    with pytest.raises(ConfigError, match="text_dropout"):
        TaskSequences([sample(0)], [t2v], text_dropout=1.5)


def examples(clips: int) -> list[TaskExample]:
    """Each clip as a t2v (task 0) and a v2a (task 1) example."""
    items = []
    for k, task in enumerate(build_tasks(["t2v", "v2a"], vocab())):
        for s in range(clips):
            prefix, target = task.build(sample(s))
            items.append(TaskExample(torch.cat([prefix, target]), len(prefix), task=k))
    return items


# -- packing ----------------------------------------------------------------------------------------------


def test_collate_packs_rows_of_fixed_length_and_keeps_each_examples_task():
    items = examples(5)
    batch = PackCollate(row_len=64, pad_id=0)(items)
    rows = batch.rows
    assert rows.ids.shape[1] == 64 and rows.ids.shape[0] < len(items)  # several examples share a row
    assert batch.tasks.tolist() == [it.task for it in items]
    for e, item in enumerate(items):
        where = rows.example == e  # (R, L)
        assert torch.equal(rows.ids[where], item.ids)
        labelled = rows.labels[where] != IGNORE
        assert labelled.sum() == len(item.ids) - item.prefix_len and not labelled[:item.prefix_len].any()
    assert batch.num_tokens == sum(len(it.ids) for it in items)
    moved = batch.to("cpu")
    assert torch.equal(moved.tasks, batch.tasks) and torch.equal(moved.rows.ids, rows.ids)


def test_without_packing_each_sequence_gets_its_own_row_and_more_padding():
    items = examples(4)  # t2v 21 tokens, v2a 28
    assert sorted({len(it.ids) for it in items}) == [21, 28]
    packed, padded = PackCollate(49)(items), PackCollate(49, packing=False)(items)
    assert padded.rows.ids.shape == (8, 28) and padded.rows.padding_fraction == 4 * 7 / (8 * 28)
    assert packed.rows.ids.shape == (4, 49) and packed.rows.padding_fraction == 0  # a v2a and a t2v per row
    assert padded.num_tokens == packed.num_tokens and padded.tasks.tolist() == packed.tasks.tolist()


def test_buckets_mix_datasets_by_weight_the_same_way_every_time():
    from videolm.lm.data import Buckets

    small, large = list(range(10)), list(range(100, 130))
    mixed = Buckets([small, large], [3.0, 1.0], seed=0)
    assert len(mixed) == 40
    items = [mixed[i] for i in range(len(mixed))]
    share = sum(x < 100 for x in items) / len(items)
    assert 0.55 < share < 0.95 and abs(share - mixed.share()[0]) < 1e-9  # about 3 in 4 from the first bucket
    assert items == [Buckets([small, large], [3.0, 1.0], seed=0)[i] for i in range(40)]  # a resume sees the same
    assert len(set(x for x in items if x < 100)) == 10  # a bucket goes through all its clips before repeating
    with pytest.raises(ConfigError, match="one weight each"):
        Buckets([small], [1.0, 2.0])
    with pytest.raises(ConfigError, match="not all 0"):
        Buckets([small, large], [0.0, 0.0])
