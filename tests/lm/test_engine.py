import pytest
import torch

from videolm.core.errors import UsageError
from videolm.lm import engine
from videolm.lm.constraints import OutputLayout, audio_layout, video_layout
from videolm.lm.cpu_packing import HUGE_PAGE, _huge_empty, cpu_fast_path, decode_weights
from videolm.lm.model import VideoLM
from videolm.tokenizers.vocab import Vocabulary

VOCAB = Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, resolutions=[(64, 64)],
                   task_slots=4)  # 83 ids, inside the debug model's 256


def prompt(length, seed):
    return torch.randint(3, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


PROMPTS = [prompt(9, 0), prompt(4, 1), prompt(13, 2)]  # different lengths: the batch is left-padded


FORWARDS = pytest.mark.parametrize("fast", [None, cpu_fast_path], ids=["modules", "cpu-packed"])


@FORWARDS
def test_cached_decoding_matches_a_full_forward_at_every_step(model, fast):
    """Both cached forwards (the model's modules, and the CPU fast path) against the reference,
    transformers' own forward of the whole sequence."""
    cache = engine.new_cache(model, len(PROMPTS), 13 + 16, fast)
    assert (cache.fast is None) == (fast is None)
    with torch.no_grad():
        logits = engine.prefill(model, cache, PROMPTS)  # (B, V)
        outputs = torch.zeros(len(PROMPTS), 0, dtype=torch.long)
        for _ in range(16):
            reference = engine.full_logits(model, PROMPTS, outputs)[:, -1]  # (B, V)
            torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
            tokens = engine.sample(logits, generator=torch.Generator().manual_seed(outputs.shape[1]))  # (B,)
            outputs = torch.cat([outputs, tokens[:, None]], 1)
            logits = engine.decode_one_token(model, cache, tokens)
    assert cache.length == 13 + 16


@pytest.mark.parametrize("threads, rows", [(1, 1), (2, 1), (4, 1), (2, 3)])
def test_each_weight_layout_decodes_as_a_full_forward(model, threads, rows):
    """One row runs on the split layout (one slab of every matrix per thread), more rows on
    oneDNN's packed one; either way the logits are the model's own, step after step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        prompts = PROMPTS[:rows]
        cache = engine.new_cache(model, rows, 13 + 8, cpu_fast_path)
        assert cache.fast is not None
        weights = cache.fast.weights
        if rows == 1:
            assert not weights.packed and weights.qkv[0].shape[0] == threads  # debug: D 64, H Dh 64, F 128
        with torch.no_grad():
            logits = engine.prefill(model, cache, prompts)  # (B, V): every id's
            outputs = torch.zeros(rows, 0, dtype=torch.long)
            lo, hi = 0, logits.shape[-1]
            for step in range(8):
                reference = engine.full_logits(model, prompts, outputs)[:, -1]  # (B, V)
                torch.testing.assert_close(logits[:, lo:hi], reference[:, lo:hi], rtol=1e-4, atol=1e-5)
                assert torch.isneginf(logits[:, :lo]).all() and torch.isneginf(logits[:, hi:]).all()
                tokens = engine.sample(logits, generator=torch.Generator().manual_seed(step))
                outputs = torch.cat([outputs, tokens[:, None]], 1)
                lo, hi = 10, 200  # from here on only these ids' logits are asked for (as a constraint does)
                logits = engine.decode_one_token(model, cache, tokens, span=(lo, hi))
    finally:
        torch.set_num_threads(before)


def test_the_engine_reuses_its_weights_and_follows_them_when_they_change():
    torch.manual_seed(1)
    fresh = VideoLM.from_lm_config("debug").eval()
    assert decode_weights(fresh) is decode_weights(fresh)  # built once
    before = engine.generate(fresh, PROMPTS, 8, temperature=0, fast=cpu_fast_path)
    with torch.no_grad():
        fresh.model.layers[0].mlp.down_proj.weight.mul_(4)  # in place: same tensor, new version
    after = engine.generate(fresh, PROMPTS, 8, temperature=0, fast=cpu_fast_path)
    assert not torch.equal(before, after)
    assert torch.equal(after, engine.generate(fresh, PROMPTS, 8, temperature=0, use_cache=False))


def test_generated_ids_are_an_ordinary_tensor(model):
    out = engine.generate(model, PROMPTS, 4, temperature=0)  # generation runs in inference mode
    assert not out.is_inference()
    out[:, 0] = 7  # the caller may edit it in place


def test_large_engine_buffers_start_on_a_huge_page_boundary():
    buffer = _huge_empty(HUGE_PAGE // 4 + 5)
    assert buffer.numel() == HUGE_PAGE // 4 + 5 and buffer.dtype == torch.float32
    buffer.fill_(1.5)
    assert buffer.sum().item() == 1.5 * buffer.numel()
    if hasattr(__import__("mmap"), "MADV_HUGEPAGE"):
        assert buffer.data_ptr() % HUGE_PAGE == 0


@FORWARDS
def test_greedy_generation_is_identical_with_and_without_the_cache(model, fast):
    cached = engine.generate(model, PROMPTS, 24, temperature=0, fast=fast)
    uncached = engine.generate(model, PROMPTS, 24, temperature=0, use_cache=False)
    assert cached.shape == (3, 24)
    assert torch.equal(cached, uncached)
    assert len(set(cached.flatten().tolist())) > 10  # a real sequence, not one repeated id


@FORWARDS
def test_after_a_one_token_prompt_greedy_decoding_equals_transformers_generate(model, fast):
    """A one-token prefix has nothing to attend to bidirectionally, so the prefix LM is then the
    plain causal LM that transformers' own cached generate() decodes."""
    ids = torch.tensor([[7], [42]])  # (2, 1)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    ours = engine.generate(model, ids.tolist(), 20, temperature=0, fast=fast)
    assert torch.equal(ours, theirs[:, 1:])


@FORWARDS
def test_batched_equals_unbatched(model, fast):
    batched = engine.generate(model, PROMPTS, 20, temperature=0, fast=fast)
    for row, p in enumerate(PROMPTS):
        assert torch.equal(batched[row], engine.generate(model, [p], 20, temperature=0, fast=fast)[0])
    with torch.no_grad():
        together = engine.prefill(model, engine.new_cache(model, 3, 13, fast), PROMPTS)  # (3, V)
        for row, p in enumerate(PROMPTS):
            alone = engine.prefill(model, engine.new_cache(model, 1, len(p), fast), [p])[0]
            torch.testing.assert_close(together[row], alone, rtol=1e-5, atol=1e-5)


def test_generation_is_seeded_and_reproducible(model):
    a = engine.generate(model, PROMPTS, 16, generator=11)
    assert torch.equal(a, engine.generate(model, PROMPTS, 16, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(a, engine.generate(model, PROMPTS, 16, generator=12))


def test_guidance_at_scale_one_equals_plain_sampling(model):
    uncond = [p[:2] for p in PROMPTS]
    plain = engine.generate(model, PROMPTS, 20, top_k=50, generator=3)
    guided = engine.generate(model, PROMPTS, 20, top_k=50, generator=3, cfg_scale=1.0, uncond_prompts=uncond)
    assert torch.equal(plain, guided)
    strong = engine.generate(model, PROMPTS, 20, top_k=50, generator=3, cfg_scale=4.0, uncond_prompts=uncond)
    assert not torch.equal(plain, strong)


def test_guidance_moves_away_from_the_unconditional_logits(model):
    uncond = [p[:2] for p in PROMPTS]
    with torch.no_grad():
        cond_logits = engine.full_logits(model, PROMPTS)[:, -1]  # (B, V)
        uncond_logits = engine.full_logits(model, uncond)[:, -1]
    expected = (uncond_logits + 3.0 * (cond_logits - uncond_logits)).argmax(-1)  # (B,)
    guided = engine.generate(model, PROMPTS, 12, temperature=0, cfg_scale=3.0, uncond_prompts=uncond,
                             fast=cpu_fast_path)
    assert torch.equal(guided[:, 0], expected)
    uncached = engine.generate(model, PROMPTS, 12, temperature=0, cfg_scale=3.0, uncond_prompts=uncond,
                               use_cache=False)
    assert torch.equal(guided, uncached)


def test_constrained_decoding_never_leaves_its_ranges(model):
    video, audio = video_layout(VOCAB, 12), audio_layout(VOCAB, 5)  # 14 and 12 positions
    layouts = [video, audio, video]
    for seed in range(100):
        out = engine.generate(model, PROMPTS, constraint=layouts, temperature=1.5, generator=seed,
                              cfg_scale=2.0 if seed % 2 else 1.0, uncond_prompts=[p[:1] for p in PROMPTS],
                              fast=cpu_fast_path)
        assert out.shape == (3, 14)
        assert video.accepts(out[0]) and video.accepts(out[2])
        assert audio.accepts(out[1, :12]) and (out[1, 12:] == 0).all()  # padded after its end
    free = engine.generate(model, PROMPTS, 12, temperature=1.5, generator=0)
    start, stop = VOCAB.range("video")
    assert ((free < start) | (free >= stop)).any()  # unconstrained, the model does leave the range


def test_audio_layout_interleaves_levels_and_ends_with_its_end_tokens():
    layout = audio_layout(VOCAB, 2)
    assert [layout(s) for s in range(7)] == [
        (VOCAB.range("audio0"),), (VOCAB.range("audio1"),), (VOCAB.range("audio0"),), (VOCAB.range("audio1"),),
        ((VOCAB["<eoa_o>"], VOCAB["<eoa_o>"] + 1),), ((VOCAB["<eos>"], VOCAB["<eos>"] + 1),), ()]
    assert len(layout) == 6
    assert not layout.accepts([VOCAB.range("audio1")[0]] + [0] * 5)


def test_any_callable_can_constrain_and_an_empty_range_list_ends_the_row(model):
    def odd_then_done(step):
        return [(101, 102), (151, 152)] if step < 6 else []

    out = engine.generate(model, PROMPTS, 10, constraint=odd_then_done, generator=1)
    assert out.shape == (3, 7)  # every row ended after 6 tokens; step 7 only confirmed it
    assert set(out[:, :6].flatten().tolist()) <= {101, 151} and (out[:, 6] == 0).all()


def test_stop_id_ends_a_row_and_the_rest_is_padding(model):
    out = engine.generate(model, PROMPTS, 12, temperature=0, stop_id=None)
    stop = int(out[0, 3])
    stopped = engine.generate(model, PROMPTS, 12, temperature=0, stop_id=stop, pad_id=255)
    first = int((out[0] == stop).nonzero()[0])
    assert torch.equal(stopped[0, :first + 1], out[0, :first + 1])
    assert (stopped[0, first + 1:] == 255).all()


def test_top_k_and_top_p_keep_to_the_best_ids():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)  # (2000, 4)
    g = torch.Generator().manual_seed(0)
    assert set(engine.sample(logits, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(engine.sample(logits, top_p=0.7, generator=g).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(engine.sample(logits, top_p=0.85, generator=g).tolist()) == {0, 1, 2}
    assert set(engine.sample(logits, generator=g).tolist()) == {0, 1, 2, 3}
    assert set(engine.sample(logits, temperature=0).tolist()) == {0}
    assert set(engine.sample(logits, top_k=1, generator=g).tolist()) == {0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompts": []}, "at least one prompt"),
        ({"prompts": [[1, 2], []]}, "at least one prompt"),
        ({"prompts": [[1, 999]]}, "id 999 is outside"),
        ({"max_new_tokens": None}, "max_new_tokens is needed"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"cfg_scale": 2.0}, "needs uncond_prompts"),
        ({"uncond_prompts": [[1]]}, "got 1 uncond_prompts for 3 prompts"),
        ({"constraint": [video_layout(VOCAB, 2)]}, "one per prompt"),
        ({"constraint": lambda step: [(0, 300)]}, "goes past the model's 256 ids"),
    ],
)
def test_bad_requests_are_usage_errors(model, kwargs, message):
    request = {"prompts": PROMPTS, "max_new_tokens": 4, **kwargs}
    with pytest.raises(UsageError, match=message):
        engine.generate(model, request.pop("prompts"), request.pop("max_new_tokens"), **request)


def test_layouts_reject_empty_ranges():
    with pytest.raises(UsageError, match="empty or negative"):
        OutputLayout([([(5, 5)], 3)])


def test_a_full_cache_refuses_more_tokens(model):
    cache = engine.new_cache(model, 1, 2)
    with torch.no_grad():
        engine.prefill(model, cache, [[1, 2]])
        with pytest.raises(UsageError, match="cache is full"):
            engine.decode_one_token(model, cache, torch.tensor([3]))
