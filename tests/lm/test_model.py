import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from videolm.core.config import from_dict, to_dict
from videolm.core.errors import UsageError
from videolm.lm import engine
from videolm.lm.cpu_packing import cpu_fast_path
from videolm.lm.masks import pad
from videolm.lm.model import PRESETS, LMConfig, VideoLM, from_llama_config, to_llama_config


def ids_of(length, seed, batch=1):  # (B, N)
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- configs and presets ------------------------------------------------------------------------


def test_every_size_has_a_preset():
    assert list(PRESETS) == ["debug", "tiny", "small", "base", "large"]


@pytest.mark.parametrize("name, low, high", [("tiny", 9e6, 12e6), ("small", 85e6, 115e6),
                                             ("base", 270e6, 350e6), ("large", 0.9e9, 1.15e9)])
def test_presets_have_their_advertised_sizes(name, low, high):
    assert low <= LMConfig.from_name(name).num_params() <= high


@pytest.mark.parametrize("name, overrides", [("debug", {}), ("debug", {"tie_embeddings": True}),
                                             ("tiny", {})])
def test_num_params_counts_the_built_model(name, overrides):
    cfg = LMConfig.from_name(name, **overrides)
    built = VideoLM.from_lm_config(cfg)
    assert sum(p.numel() for p in built.parameters()) == cfg.num_params()


def test_derived_fields_are_filled_in():
    cfg = LMConfig.from_name("tiny")
    assert cfg.n_kv_heads == cfg.n_heads
    assert cfg.ffn_hidden == 704  # 8/3 * 256 = 682.7, rounded up to a multiple of 64
    assert cfg.head_dim == 64


def test_configs_round_trip_through_plain_data_and_llama_config():
    cfg = LMConfig.from_name("debug", rope_theta=5e5, tie_embeddings=True)
    assert from_dict(LMConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert from_llama_config(to_llama_config(cfg)) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "huge"}, "unknown LM preset 'huge'"),
        ({"name": "debug", "d_modl": 8}, "unknown LMConfig field 'd_modl'"),
        ({"name": "debug", "d_model": 66}, "d_model=66 must split into n_heads=4"),
        ({"name": "debug", "d_model": 20}, "heads of even size"),
        ({"name": "debug", "n_kv_heads": 3}, "multiple of n_kv_heads=3"),
        ({"name": "debug", "n_layers": 0}, "n_layers=0"),
        ({"name": "debug", "vocab_size": 2}, "special ids must be below"),
    ],
)
def test_bad_configs_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        LMConfig.from_name(**kwargs)


# -- a transformers model -------------------------------------------------------------------------


def test_parity_with_llama_for_causal_lm_on_the_same_weights(model):
    llama = LlamaForCausalLM(to_llama_config(model.lm_config)).eval()
    llama.load_state_dict(model.state_dict())
    ids = ids_of(20, 0, batch=2)  # (2, 20)
    with torch.no_grad():
        ours, theirs = model(ids).logits, llama(ids).logits  # (2, 20, V)
        assert torch.equal(ours, theirs)
        # a one-token prefix is plain causal attention, so the prefix-LM path agrees too
        batch = pad([(ids[0], 1)])
        prefix_one = model.logits(batch.ids, batch.attention_mask(), batch.positions)
    torch.testing.assert_close(prefix_one, theirs[:1], rtol=1e-5, atol=1e-5)


def test_eager_and_sdpa_agree_under_the_prefix_mask(model):
    eager = VideoLM(to_llama_config(LMConfig.from_name("debug", attn_implementation="eager"))).eval()
    eager.load_state_dict(model.state_dict())
    assert (eager.config._attn_implementation, model.config._attn_implementation) == ("eager", "sdpa")
    batch = pad([(ids_of(12, 1)[0], 5), (ids_of(7, 2)[0], 3)])
    with torch.no_grad():
        a = model.logits(batch.ids, batch.attention_mask(), batch.positions)
        b = eager.logits(batch.ids, batch.attention_mask(), batch.positions)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_save_then_load_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = VideoLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_config == model.lm_config
    batch = pad([(ids_of(16, 3)[0], 6)])
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch.ids, batch.attention_mask(), batch.positions),
                           model.logits(batch.ids, batch.attention_mask(), batch.positions))
    prompts = [ids_of(6, 4)[0], ids_of(9, 5)[0]]
    assert torch.equal(engine.generate(loaded, prompts, 10, generator=7),
                       engine.generate(model, prompts, 10, generator=7))
    # plain transformers tooling reads the same folder as a Llama
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(auto(batch.ids).logits, model(batch.ids).logits)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft
def test_lora_from_peft_changes_the_model_and_the_engine_follows_it():
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = VideoLM.from_lm_config("debug").eval()
    prompts = [ids_of(7, 6)[0].tolist(), ids_of(4, 7)[0].tolist()]
    before = engine.full_logits(base, prompts)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                     init_lora_weights=False)).eval()
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in lora.parameters()) / 5
    with torch.no_grad():
        after = engine.full_logits(lora, prompts)
    assert (after - before).abs().max() > 1e-3
    assert engine.new_cache(lora, 2, 20, cpu_fast_path).fast is None  # LoRA layers: the modules run
    cached = engine.generate(lora, prompts, 12, temperature=0, fast=cpu_fast_path)
    uncached = engine.generate(lora, prompts, 12, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_logits_wants_a_batch(model):
    with pytest.raises(UsageError, match=r"\(batch, length\)"):
        model.logits(torch.zeros(5, dtype=torch.long))
