"""The DiT baseline: its latent space, the network, sampling, training and `videolm dit fit`."""

import json

import numpy as np
import pytest
import torch

from videolm.cli.main import main
from videolm.core.errors import UsageError
from videolm.core.models import resolve_model
from videolm.data.shapes_data import ShapesDataset
from videolm.diffusion.dit import DiT, DiTConfig, null_text, text_batch
from videolm.diffusion.dit_pipeline import DiTGenerator, sample_latents, seeded_noise
from videolm.diffusion.latents import (
    encode_latents,
    latents_to_codes,
    round_latents,
    unrounded,
)
from videolm.diffusion.process import FlowMatching
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, to_tensor
from videolm.train.dit import DiTDataConfig, dit_loss, text_rows

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a large red circle moves left and a small blue square stays still", "a small green triangle moves up"]


@pytest.fixture(scope="module")
def tokenizer():
    return VideoTokenizer.from_pretrained(resolve_model("shapes-64") / "video_tokenizer")


@pytest.fixture(scope="module")
def clips():
    data = ShapesDataset(4, seed=0)
    return np.stack([data[i]["video"] for i in range(4)])  # (4, 17, 64, 64, 3)


def _untrained(seed: int = 0) -> DiT:
    """A debug DiT whose zero-initialised (adaLN-Zero) weights are filled, so that it outputs something."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig.from_name("debug"))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


def _generator(tokenizer, model=None) -> DiTGenerator:
    text = TextTokenizer.load(resolve_model("shapes-64") / "text.model")
    return DiTGenerator(model or _untrained(), tokenizer, text)


def test_latents_round_to_the_tokenizer_codes(tokenizer, clips):
    x = to_tensor(clips)  # (4, 3, 17, 64, 64)
    z = encode_latents(tokenizer, x)  # (4, 4, 5, 8, 8)
    assert z.shape == (4, 4, 5, 8, 8) and z.abs().max() <= 1.01
    assert torch.equal(latents_to_codes(tokenizer, z), tokenizer.encode(x))
    assert torch.equal(latents_to_codes(tokenizer, round_latents(tokenizer, z)), tokenizer.encode(x))
    fsq = tokenizer.bottleneck.quantizer.q
    raw = 3 * torch.randn(1000, 4)
    assert torch.equal(unrounded(fsq, raw).round() / (fsq._levels // 2), fsq.bound(raw))  # the library's rounding


def test_adaln_zero_init_predicts_zero():
    model = DiT(DiTConfig.from_name("debug"))
    x = torch.randn(2, 4, 5, 8, 8)
    text = text_batch([[5, 6, 7], []], model.config)
    assert torch.equal(model(x, torch.rand(2), text), torch.zeros_like(x))


def test_save_load_gives_the_same_outputs(tmp_path):
    model = _untrained()
    model.save_pretrained(tmp_path / "dit")
    again = DiT.from_pretrained(tmp_path / "dit")
    x, t = torch.randn(2, 4, 5, 8, 8), torch.rand(2)
    text = text_batch([[5, 6, 7], [9]], model.config)
    mask = torch.zeros(2, 1, 5, 8, 8)
    mask[:, :, :3] = 1
    with torch.no_grad():
        assert torch.equal(model(x, t, text, x, mask), again(x, t, text, x, mask))
    assert again.config == model.config


def test_text_padding_and_null_caption_do_not_change_outputs():
    model = _untrained()
    x, t = torch.randn(1, 4, 5, 8, 8), torch.rand(1)
    short, padded = text_batch([[5, 6]], model.config), text_batch([[5, 6]], model.config, length=9)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, short), model(x, t, padded))
        torch.testing.assert_close(model(x, t, null_text(short, model.config)), model(x, t, text_batch([[]], model.config)))


def test_batched_sampling_equals_one_by_one(tokenizer):
    gen = _generator(tokenizer)
    both = gen.generate("t2v", PROMPTS, seed=7, steps=3, cfg_scale=3.0)
    one = [gen.generate("t2v", [p], seed=7 + i, steps=3, cfg_scale=3.0) for i, p in enumerate(PROMPTS)]
    assert both.video.shape == (2, 17, 64, 64, 3) and both.video.dtype == np.uint8
    assert both.evaluations == 6
    cfg = gen.model.config
    text = gen.text(PROMPTS)
    z = sample_latents(gen.model, text, seeded_noise([7, 8], (4, *cfg.latent_shape)), steps=3, cfg_scale=3.0)
    z1 = sample_latents(gen.model, gen.text(PROMPTS[1:]), seeded_noise([8], (4, *cfg.latent_shape)), steps=3,
                        cfg_scale=3.0)  # its own, shorter text rows
    torch.testing.assert_close(z[1:], z1, atol=1e-5, rtol=1e-5)
    same = torch.cat([both.codes[i:i + 1] == o.codes for i, o in enumerate(one)]).float().mean()
    assert same > 0.99  # codes: equal but where float noise tips a value over a rounding boundary
    again = gen.generate("t2v", PROMPTS, seed=7, steps=3, cfg_scale=3.0)
    assert np.array_equal(again.video, both.video)  # deterministic for a seed


def test_extend_keeps_the_given_frames(tokenizer, clips):
    gen = _generator(tokenizer)
    out = gen.generate("extend", video=clips[:2], seed=0, steps=2)
    context = tokenizer.encode(to_tensor(clips[:2, :9]))  # (2, 3, 64): the first 9 frames, on their own
    assert torch.equal(out.codes[:, :3], context)
    assert out.evaluations == 2  # no caption: nothing to guide
    assert gen.generate("extend", PROMPTS, video=clips[:2], steps=2, cfg_scale=4.0).evaluations == 4
    with pytest.raises(UsageError, match="extend needs video"):
        gen.generate("extend", video=clips[:1, :5])


def test_a_few_training_steps_lower_the_loss(tokenizer, clips):
    torch.manual_seed(0)
    model = DiT(DiTConfig.from_name("debug"))
    data = DiTDataConfig(num=4)
    loss_fn = dit_loss(FlowMatching(), data)
    text = TextTokenizer.load(resolve_model("shapes-64") / "text.model")
    captions = [text.encode(ShapesDataset(4)[i]["caption"]) for i in range(4)]
    width = max(map(len, captions))
    batch = {"latents": encode_latents(tokenizer, to_tensor(clips)),
             "ids": torch.tensor([r + [-1] * (width - len(r)) for r in captions])}

    def loss() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return float(loss_fn(model, batch))

    before = loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
    assert loss() < 0.8 * before
    assert text_rows(batch["ids"], model.config)[:, 0].eq(model.config.begin_id).all()


def _config(tmp_path, **changes) -> str:
    lines = {"entry": "dit fit", "preset": "debug", "data": "{num: 16, encode_batch: 8}",
             "train": "{steps: 4, batch_size: 8, warmup_steps: 1, log_every: 2, checkpoint_every: 2, threads: 1}",
             "out": str(tmp_path / "run"), **changes}
    path = tmp_path / "dit.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return str(path)


def test_dit_fit_end_to_end(tmp_path):
    assert main(["dit", "fit", "--config", _config(tmp_path)]) == 0
    model_dir = tmp_path / "run" / "model"
    record = json.loads((model_dir / "training.json").read_text())
    assert record["steps"] == 4 and record["threads"] == 1 and record["device"] == "cpu" and "core_hours" in record
    assert (tmp_path / "run" / "latents" / "shapes-0-16.safetensors").is_file()
    gen = DiTGenerator.from_pretrained(model_dir)  # the tokenizers its training.json names
    assert gen.generate("t2v", PROMPTS[:1], steps=1).video.shape == (1, 17, 64, 64, 3)
    assert gen.model.config.latent_std != [1.0] * 4  # the data's statistics
    assert main(["dit", "fit", "--config", _config(tmp_path), "--steps", "6"]) == 0  # resumes from the checkpoint
    assert json.loads((model_dir / "training.json").read_text())["steps"] == 6


@pytest.mark.parametrize("change, message", [
    ({"preset": "huge"}, "unknown DiT preset 'huge'"),
    ({"model": "{widht: 64}"}, "unknown key 'model.widht'"),
    ({"data": "{tasks: {t2i: 1.0}}"}, "data.tasks"),
])
def test_bad_config_is_one_line_error(tmp_path, capsys, change, message):
    assert main(["dit", "fit", "--config", _config(tmp_path, **change)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()
