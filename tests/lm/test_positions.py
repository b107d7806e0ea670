"""Grid positions (M-RoPE): the positions of a sequence, the model that takes them, and the engine and
training that feed them."""

import copy

import numpy as np
import pytest
import torch

from videolm.core.errors import UsageError
from videolm.lm import engine
from videolm.lm.cpu_packing import cpu_fast_path
from videolm.lm.data import PackCollate, TaskExample
from videolm.lm.engine import uses_grid
from videolm.lm.losses import output_logits
from videolm.lm.masks import pack
from videolm.lm.model import LMConfig, VideoLM, load_videolm
from videolm.lm.positions import GridLayout, GridPositions, grid_positions, set_positions
from videolm.tokenizers.vocab import Vocabulary

VOCAB = Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8,
                   resolutions=[(16, 24), (24, 16), (16, 16)], task_slots=4)  # 89 ids, inside the debug model's 256
VOCAB.add_task("t2v")
GRID = GridLayout.from_vocab(VOCAB, 8)
V0 = VOCAB.range("video")[0]
T0 = VOCAB.range("text")[0]


def t2v_prompt(h: int, w: int, text: int) -> list[int]:
    return [VOCAB["<bos>"], VOCAB.task_id("t2v"), VOCAB.res_id(h, w), VOCAB["<bot_i>"],
            *range(T0, T0 + text), VOCAB["<eot_i>"], VOCAB["<bov_o>"]]


def extend_sequence(h: int, w: int, latents: int, out_latents: int) -> list[int]:
    """A prefix with a video run, then an output video run and its end tokens."""
    n = (h // 8) * (w // 8)
    video = [V0 + i % 32 for i in range(n * latents)]
    video[1] = VOCAB["<mask>"]
    out = [V0 + (3 * i) % 32 for i in range(n * out_latents)]
    return [VOCAB["<bos>"], VOCAB.task_id("t2v"), VOCAB.res_id(h, w), VOCAB["<bov_i>"], *video, VOCAB["<eov_i>"],
            VOCAB["<bov_o>"], *out, VOCAB["<eov_o>"], VOCAB["<eos>"]]


def test_text_counts_up_and_video_sits_on_its_grid():
    ids = extend_sequence(16, 24, 2, 1)  # a 2 x 3 grid
    pos = grid_positions(ids, GRID).numpy()
    assert pos.shape == (len(ids), 3)
    np.testing.assert_array_equal(pos[:4], [[i] * 3 for i in range(4)])  # <bos> <task> <res> <bov_i>
    run = pos[4:4 + 12] - 4  # p0 = 4, the position after <bov_i>; the <mask> at index 1 is on the grid too
    expected = [[t, h, w] for t in range(2) for h in range(2) for w in range(3)]
    np.testing.assert_array_equal(run, expected)
    eov = 4 + 12
    np.testing.assert_array_equal(pos[eov], [4 + 2 + 1] * 3)  # one past the run's largest component (w = 2)
    np.testing.assert_array_equal(pos[eov + 1], [8] * 3)  # <bov_o>
    np.testing.assert_array_equal(pos[eov + 2:eov + 8] - 9, [[0, h, w] for h in range(2) for w in range(3)])
    np.testing.assert_array_equal(pos[-2:], [[12] * 3, [13] * 3])  # <eov_o> <eos>: past the output grid
    assert pos.max() < len(ids)  # never past the 1D index: a table of the sequence's length holds every row


def test_the_grid_follows_the_last_resolution_token_and_needs_one():
    tall = grid_positions(extend_sequence(24, 16, 1, 1), GRID).numpy()  # 3 x 2
    assert tall[4:10, 1].max() - 4 == 2 and tall[4:10, 2].max() - 4 == 1
    no_res = extend_sequence(16, 16, 1, 1)
    no_res.pop(2)  # a video run without <res> stays on 1D positions
    flat = grid_positions(no_res, GRID).numpy()
    np.testing.assert_array_equal(flat, np.arange(len(no_res))[:, None].repeat(3, 1))


@pytest.mark.parametrize("cuts", [[1], [5, 9, 10], list(range(1, 30))])
def test_fed_in_pieces_the_positions_are_the_same(cuts):
    ids = extend_sequence(16, 24, 2, 2)
    whole = GridPositions(GRID).feed(ids)
    stream = GridPositions(GRID)
    bounds = [0, *cuts, len(ids)]
    pieces = [stream.feed(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    one_by_one = GridPositions(GRID)
    np.testing.assert_array_equal([one_by_one.step(t) for t in ids], whole)


@pytest.fixture(scope="module")
def grid_model() -> VideoLM:
    torch.manual_seed(0)
    return VideoLM.from_lm_config("debug", positions="grid").eval()


def test_equal_components_are_plain_rope_and_files_round_trip(grid_model, tmp_path):
    plain = VideoLM.from_lm_config("debug").eval()
    plain.load_state_dict(grid_model.state_dict())
    ids = torch.tensor([extend_sequence(16, 24, 1, 1)])
    line = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        torch.testing.assert_close(grid_model.logits(ids, positions=line[..., None].expand(-1, -1, 3)),
                                   plain.logits(ids, positions=line), rtol=0, atol=0)
        on_grid = grid_model.logits(ids, positions=grid_positions(ids[0], GRID)[None])
        assert not torch.allclose(on_grid, plain.logits(ids, positions=line))
    grid_model.save_pretrained(tmp_path)
    again = load_videolm(tmp_path)
    assert again.lm_config.positions == "grid" and uses_grid(again) and not uses_grid(plain)
    with torch.no_grad():
        torch.testing.assert_close(again.logits(ids, positions=grid_positions(ids[0], GRID)[None]), on_grid)
    with pytest.raises(UsageError, match="grid positions"):
        plain.logits(ids, positions=line[..., None].expand(-1, -1, 3))
    with pytest.raises(UsageError, match=r"needs \(batch, length, 3\) position ids"):  # never 1D by mistake
        grid_model.logits(ids, positions=line)
    with pytest.raises(UsageError, match="positions='cube'"):
        LMConfig.from_name("debug", positions="cube")


PROMPTS = [t2v_prompt(16, 24, 3), extend_sequence(24, 16, 2, 0)[:-2], t2v_prompt(16, 16, 1)]  # rows of 3 sizes


@pytest.mark.parametrize("fast", [None, cpu_fast_path], ids=["modules", "cpu-packed"])
def test_cached_decoding_on_the_grid_matches_a_full_forward(grid_model, fast):
    """Prompts of different sizes and lengths in one batch, decoded into video runs; each step's
    logits equal transformers' forward of the whole sequence at the whole sequence's grid positions."""
    cache = engine.new_cache(grid_model, len(PROMPTS), 40 + 12, fast, GRID)
    assert (cache.fast is None) == (fast is None)
    with torch.no_grad():
        logits = engine.prefill(grid_model, cache, PROMPTS)
        outputs = torch.zeros(len(PROMPTS), 0, dtype=torch.long)
        for step in range(12):
            reference = engine.full_logits(grid_model, PROMPTS, outputs, grid=GRID)[:, -1]
            torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
            tokens = torch.full((len(PROMPTS),), V0 + step)
            if step == 7:
                tokens[1] = VOCAB["<eov_o>"]  # one row closes its run early: it goes back to 1D positions
            outputs = torch.cat([outputs, tokens[:, None]], 1)
            logits = engine.decode_one_token(grid_model, cache, tokens)
    grid = torch.from_numpy(GridPositions(GRID).feed(PROMPTS[0] + outputs[0].tolist()))
    assert grid[len(PROMPTS[0]):, 1].max() - grid[len(PROMPTS[0]), 0] == 1  # row 0: a 2 x 3 grid


def test_generation_on_the_grid_needs_the_layout_and_works_through_lora(grid_model):
    with pytest.raises(UsageError, match="grid layout"):
        engine.generate(grid_model, PROMPTS, 4, temperature=0)
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(copy.deepcopy(grid_model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert uses_grid(wrapped)
    a = engine.generate(wrapped.eval(), PROMPTS, 6, temperature=0, grid=GRID)
    b = engine.generate(grid_model, PROMPTS, 6, temperature=0, grid=GRID, fast=cpu_fast_path)
    c = engine.generate(grid_model, PROMPTS, 6, temperature=0, grid=GRID, use_cache=False)
    assert torch.equal(a, b) and torch.equal(b, c)


def test_training_rows_carry_each_examples_grid_positions(grid_model):
    seqs = [extend_sequence(16, 24, 1, 1), extend_sequence(24, 16, 2, 1), t2v_prompt(16, 16, 2)]
    items = [TaskExample(torch.tensor(s), len(s) - 3, 0) for s in seqs]
    batch = PackCollate(row_len=64, grid=GRID)(items).rows
    assert batch.positions.shape == (*batch.ids.shape, 3)
    for i, s in enumerate(seqs):
        where = batch.example == i
        torch.testing.assert_close(batch.positions[where], grid_positions(s, GRID))
    assert PackCollate(row_len=64)(items).rows.positions.dim() == 2
    with torch.no_grad():  # an example packed with others reads as it does alone
        logits = output_logits(grid_model, batch)  # (N, V)
        alone = pack([(torch.tensor(seqs[1]), len(seqs[1]) - 3)], 64, positions=GRID.positions)
        theirs = output_logits(grid_model, alone)
    keep = batch.labels[:, 1:] != -100
    torch.testing.assert_close(logits[batch.example[:, 1:][keep] == 1], theirs, rtol=1e-4, atol=1e-5)


def test_switching_positions_keeps_the_weights(tmp_path):
    torch.manual_seed(1)
    model = VideoLM.from_lm_config("debug")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_positions(model, "grid")
    assert uses_grid(model) and model.lm_config.positions == "grid"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    set_positions(model, "sequence")
    assert not uses_grid(model)
    with pytest.raises(UsageError, match="choose from"):
        set_positions(model, "3d")
