import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videolm.core.errors import UsageError
from videolm.lm.masks import (
    IGNORE,
    PackedBatch,
    attention_bias,
    pack,
    pad,
    prefix_lm_loss,
    prefix_lm_mask,
    token_losses,
)
from videolm.lm.model import VideoLM

LENGTHS = [(30, 9), (5, 3), (12, 4), (20, 20), (8, 1), (3, 2), (25, 10), (17, 6)]  # (length, prefix_len)


def ids_of(length, seed):  # (N,)
    return torch.randint(3, 256, (length,), generator=torch.Generator().manual_seed(seed))


def examples(lengths=LENGTHS):
    return [(ids_of(n, seed), p) for seed, (n, p) in enumerate(lengths)]


def logits_of(model, batch: PackedBatch):  # (R, L, V)
    with torch.no_grad():
        return model.logits(batch.ids, batch.attention_mask(), batch.positions)


# -- the mask itself ------------------------------------------------------------------------------


def test_mask_is_bidirectional_in_the_prefix_and_causal_after():
    mask = pad([(ids_of(6, 0), 3)]).attention_mask()[0, 0]  # (6, 6)
    expected = torch.tensor([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_packed_mask_is_block_diagonal_and_padding_sees_only_itself():
    batch = pack([(ids_of(3, 0), 2), (ids_of(2, 1), 1)], row_len=7, longest_first=False)
    mask = batch.attention_mask()[0, 0].int()  # (7, 7)
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ])
    assert torch.equal(mask, expected)
    assert batch.positions[0].tolist() == [0, 1, 2, 0, 1, 0, 0]


def test_attention_bias_is_zero_where_attended_and_very_negative_elsewhere():
    mask = pad([(ids_of(4, 0), 2)]).attention_mask()
    bias = attention_bias(mask, torch.bfloat16)
    assert bias.dtype == torch.bfloat16
    assert torch.equal(bias == 0, mask)
    assert (bias[~mask] == torch.finfo(torch.bfloat16).min).all()
    with pytest.raises(UsageError, match="boolean"):
        attention_bias(mask.float(), torch.float32)


# -- the model under the mask ------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_prefix_tokens_see_later_prefix_tokens_but_nothing_sees_later_outputs(impl):
    torch.manual_seed(1)
    model = VideoLM.from_lm_config("debug", attn_implementation=impl).eval()
    ids, prefix_len = ids_of(12, 0), 6
    base = logits_of(model, pad([(ids, prefix_len)]))[0]  # (12, V)

    later_prefix = ids.clone()
    later_prefix[4] = (later_prefix[4] + 1) % 256
    changed = logits_of(model, pad([(later_prefix, prefix_len)]))[0]
    assert (changed[1] - base[1]).abs().max() > 1e-3  # position 1 saw position 4

    output = ids.clone()
    output[8] = (output[8] + 1) % 256
    changed = logits_of(model, pad([(output, prefix_len)]))[0]
    torch.testing.assert_close(changed[:8], base[:8], rtol=0, atol=1e-6)
    assert (changed[8:] - base[8:]).abs().max() > 1e-3


def test_a_causal_model_would_fail_the_prefix_property(model):
    """The same probe under a plain causal mask: position 1 does not see position 4."""
    ids = ids_of(12, 0)[None]  # (1, 12)
    later = ids.clone()
    later[0, 4] = (later[0, 4] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model.logits(later)[0, :4], model.logits(ids)[0, :4], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_fully_padded_rows_stay_finite_in_forward_loss_and_gradients(impl):
    torch.manual_seed(2)
    model = VideoLM.from_lm_config("debug", attn_implementation=impl)
    one = pad([(ids_of(10, 0), 4)], row_len=16)
    empty = PackedBatch(torch.zeros(1, 16, dtype=torch.long), torch.full((1, 16), -1),
                        torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.bool))
    batch = PackedBatch(*(torch.cat([a, b]) for a, b in zip(
        (one.ids, one.example, one.positions, one.is_prefix),
        (empty.ids, empty.example, empty.positions, empty.is_prefix))))
    logits = model.logits(batch.ids, batch.attention_mask(), batch.positions)  # (2, 16, V)
    assert torch.isfinite(logits).all()
    loss = prefix_lm_loss(logits, batch.labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert prefix_lm_loss(logits[1:], batch.labels[1:]).item() == 0.0  # no targets: 0, not NaN


# -- labels and loss --------------------------------------------------------------------------


def test_labels_cover_exactly_the_output_tokens():
    batch = pack(examples(), row_len=32)
    labels = batch.labels
    output = (batch.example >= 0) & ~batch.is_prefix
    assert torch.equal(labels != IGNORE, output)
    assert torch.equal(labels[output], batch.ids[output])
    assert int(output.sum()) == sum(n - p for n, p in LENGTHS)


def test_loss_equals_transformers_own_loss_on_the_same_labels(model):
    batch = pack(examples(), row_len=32)
    bias = attention_bias(batch.attention_mask(), model.dtype)
    with torch.no_grad():
        out = model(input_ids=batch.ids, attention_mask=bias, position_ids=batch.positions, labels=batch.labels)
    torch.testing.assert_close(prefix_lm_loss(out.logits, batch.labels), out.loss)


def test_token_losses_fall_on_outputs_only(model):
    batch = pad([(ids_of(10, 0), 4)])
    losses = token_losses(logits_of(model, batch), batch.labels)[0]  # (10,)
    assert (losses[:4] == 0).all() and (losses[4:] > 0).all()


# -- packing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_no_attention_crosses_packed_examples(impl):
    torch.manual_seed(3)
    model = VideoLM.from_lm_config("debug", attn_implementation=impl).eval()
    exs = examples()
    batch = pack(exs, row_len=32)
    assert batch.ids.shape[0] < len(exs)  # several examples did share rows
    packed = logits_of(model, batch)  # (R, 32, V)
    for i, (ids, prefix_len) in enumerate(exs):
        alone = logits_of(model, pad([(ids, prefix_len)]))[0]  # (N, V)
        where = batch.example == i  # (R, 32)
        torch.testing.assert_close(packed[where], alone, rtol=1e-5, atol=1e-5)


def test_packing_lowers_the_padding_fraction():
    exs = examples()
    unpacked, packed = pad(exs), pack(exs, row_len=32)
    tokens = sum(n for n, _ in LENGTHS)  # 120
    assert unpacked.padding_fraction == pytest.approx(1 - tokens / (len(exs) * 30))  # 0.5
    assert packed.padding_fraction == pytest.approx(1 - tokens / (4 * 32))  # 4 rows: 0.06
    assert packed.padding_fraction < unpacked.padding_fraction / 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=12),
       st.integers(20, 40), st.booleans())
def test_pack_places_each_example_once_contiguously_with_its_own_positions(sizes, row_len, longest_first):
    exs = [(ids_of(n, i), min(p, n)) for i, (n, p) in enumerate(sizes)]
    batch = pack(exs, row_len, pad_id=0, longest_first=longest_first)
    assert batch.ids.shape[1] == row_len
    assert batch.num_examples == len(exs)
    for i, (ids, prefix_len) in enumerate(exs):
        rows, cols = (batch.example == i).nonzero(as_tuple=True)
        assert rows.unique().numel() == 1  # one row
        assert torch.equal(cols, torch.arange(cols[0], cols[0] + len(ids)))  # contiguous
        assert torch.equal(batch.ids[rows, cols], ids)
        assert torch.equal(batch.positions[rows, cols], torch.arange(len(ids)))
        assert int(batch.is_prefix[rows, cols].sum()) == prefix_len
    fill = (batch.example >= 0).sum(1)  # (R,)
    assert (fill > 0).all()
    assert int((2 * fill <= row_len).sum()) <= 1  # first fit leaves at most one row half empty or worse
    assert batch.ids[batch.example < 0].eq(0).all()


@pytest.mark.parametrize(
    "bad, row_len, message",
    [
        ([(ids_of(5, 0), 0)], 8, "prefix_len=0 must be in"),
        ([(ids_of(5, 0), 6)], 8, "prefix_len=6 must be in"),
        ([(ids_of(9, 0), 2)], 8, "9 tokens do not fit a row of 8"),
        ([(torch.zeros(0, dtype=torch.long), 1)], 8, "non-empty 1-D"),
        ([(torch.zeros(2, 2, dtype=torch.long), 1)], 8, "non-empty 1-D"),
        ([], 8, "no examples"),
    ],
)
def test_bad_examples_are_usage_errors(bad, row_len, message):
    with pytest.raises(UsageError, match=message):
        pack(bad, row_len)


def test_prefix_lm_mask_marks_padding_only_on_the_diagonal():
    example = torch.tensor([[0, 0, -1, -1]])
    mask = prefix_lm_mask(example, torch.tensor([[True, False, False, False]]))[0, 0]  # (4, 4)
    assert torch.equal(mask[2:], torch.eye(4, dtype=torch.bool)[2:])
    assert not mask[:2, 2:].any()
