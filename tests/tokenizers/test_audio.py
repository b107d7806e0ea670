import copy
import dataclasses

import numpy as np
import pytest
import torch

from videolm.core.config import from_dict, to_dict
from videolm.core.errors import ConfigError
from videolm.data.shapes import TONES, make_clip
from videolm.tokenizers.audio import (
    AudioTokenizer,
    AudioTokenizerConfig,
    dominant_frequency,
    frequency_agreement,
    stft_distance,
)

RATE = 16000
CLIP = 34000  # samples in a 2.125 s Shapes clip


def tone(freq, num=RATE, amp=0.3):  # (S,)
    return (amp * np.sin(2 * np.pi * freq * np.arange(num) / RATE)).astype(np.float32)


def clips(*seeds, num=CLIP):  # (B, S)
    return torch.from_numpy(np.stack([make_clip(s).audio[:num] for s in seeds]))


pytestmark = pytest.mark.usefixtures("one_thread")  # the models here are tiny


@pytest.fixture(scope="module")
def trained():
    """A debug tokenizer after 60 Adam steps on two 0.5 s Shapes clips, and its loss per step."""
    torch.manual_seed(0)
    model = AudioTokenizer(AudioTokenizerConfig.from_name("debug"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    audio = clips(2, 3, num=8000)  # (2, 8000)
    losses = []
    for _ in range(60):
        out = model(audio)
        loss, logs = model.reconstruction_loss(audio, out.recon)
        opt.zero_grad()
        (loss + out.aux_loss).backward()
        opt.step()
        losses.append(logs["loss"])
    silence = model.reconstruction_loss(audio, torch.zeros_like(audio))[1]["loss"]
    return model.eval(), losses, silence


def test_training_decreases_loss(trained):
    _, losses, silence = trained
    final = np.mean(losses[-5:])
    assert np.isfinite(losses).all()
    assert final < 0.3 * losses[0]
    assert final < 0.8 * silence  # it learned the clips, not just to stay quiet


def test_config_presets_derived_fields_and_round_trip():
    cfg = AudioTokenizerConfig.from_name("default")
    assert cfg.hop == 320 and cfg.frame_rate == 50 and cfg.stage_channels == [8, 16, 32, 64, 128]
    assert AudioTokenizerConfig.from_name("debug", latent_dim=4).latent_dim == 4
    assert from_dict(AudioTokenizerConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown audio tokenizer preset"):
        AudioTokenizerConfig.from_name("huge")
    with pytest.raises(ConfigError, match="hop=300"):
        AudioTokenizerConfig(hop=300)
    with pytest.raises(ConfigError, match="strides"):
        AudioTokenizerConfig(strides=[1, 4])


def test_default_preset_fits_its_size_budget():
    model = AudioTokenizer(AudioTokenizerConfig.from_name("default"))
    params = sum(p.numel() for p in model.parameters())
    stored = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())  # + codebooks
    assert params <= 1_000_000 and 2 * stored <= 3_000_000  # fp16 bytes


def test_forward_shapes_and_code_range():
    model = AudioTokenizer(AudioTokenizerConfig.from_name("debug")).train()
    recon, codes, aux_loss = model(clips(0, 1))
    assert recon.shape == (2, CLIP) and recon.dtype == torch.float32
    assert codes.shape == (2, 107, 4) and codes.dtype == torch.int64  # 107 x 4 = 428 tokens per clip
    assert codes.min() >= 0 and codes.max() < 1024
    assert aux_loss.ndim == 0 and torch.isfinite(aux_loss)


def test_encode_decode_equals_forward_in_eval(trained):
    model = trained[0]
    audio = clips(5, 6)
    with torch.no_grad():
        out = model(audio)
        codes = model.encode(audio)
        recon = model.decode(codes, CLIP)
    assert torch.equal(codes, out.codes)
    assert len(codes.unique()) > 1  # the trained codebooks tell frames apart
    torch.testing.assert_close(recon, out.recon, rtol=1e-5, atol=1e-5)
    assert model.decode(codes).shape == (2, 107 * 320)


def test_batched_equals_unbatched(trained):
    model = trained[0]
    audio = clips(7, 8, 9)
    with torch.no_grad():
        batched = model.encode(audio)
        single = torch.cat([model.encode(audio[i : i + 1]) for i in range(3)])
    assert torch.equal(batched, single)


@pytest.mark.parametrize("num", [1, 320, 321, 16000, 34000])
def test_any_length(trained, num):
    model = trained[0]
    frames = -(-num // 320)
    assert model.num_frames(num) == frames and model.hop == 320
    with torch.no_grad():
        recon, codes, _ = model(clips(4, num=num))
    assert recon.shape == (1, num) and codes.shape == (1, frames, 4)


def test_bad_inputs_raise(trained):
    model = trained[0]
    with pytest.raises(ValueError, match="float"):
        model.encode(torch.zeros(1, 320, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model.encode(torch.zeros(320))
    with pytest.raises(ValueError, match="num_samples"):
        model.decode(torch.zeros(1, 2, 4, dtype=torch.int64), 641)


def test_eval_mode_leaves_an_untrained_model_unchanged():
    model = AudioTokenizer(AudioTokenizerConfig.from_name("debug")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = model.encode(clips(0))
        second = model.encode(clips(0))
    assert torch.equal(first, second)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no k-means init in eval


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip(trained, tmp_path, dtype):
    model = trained[0]
    model.save_pretrained(tmp_path, dtype=dtype)
    loaded = AudioTokenizer.from_pretrained(tmp_path)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)
    audio = clips(10, 11)
    with torch.no_grad():
        want, got = model(audio), loaded(audio)
    if dtype == "float32":
        assert torch.equal(got.codes, want.codes) and torch.equal(got.recon, want.recon)
    else:
        # Rounding may flip a code between near-twins (a small batch k-means-inits 1024 codes from
        # a few dozen vectors, so many start as duplicates), and a flip moves later residual levels;
        # the sound barely changes.
        assert (got.recon - want.recon).abs().mean() < 0.01 * want.recon.abs().mean()


def test_no_nan_under_bf16_autocast(trained):
    model = trained[0]
    audio = clips(12, 13)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        recon, codes, aux_loss = model(audio)
        loss, logs = model.reconstruction_loss(audio, recon)
    assert torch.isfinite(recon.float()).all() and torch.isfinite(loss) and torch.isfinite(aux_loss)
    assert codes.shape == (2, 107, 4)
    training = copy.deepcopy(model).train()  # EMA codebook updates in bf16 would be where NaNs start
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = training(audio)
        loss = training.reconstruction_loss(audio, out.recon)[0] + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.recon.float()).all()
    assert all(torch.isfinite(v).all() for v in training.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("freq", sorted(TONES.values()))
def test_dominant_frequency_of_pure_tones(freq):
    assert abs(dominant_frequency(tone(freq), RATE) - freq) < 0.5
    assert abs(dominant_frequency(tone(freq, CLIP), RATE) - freq) < 0.5
    assert abs(dominant_frequency(torch.from_numpy(tone(freq) + tone(2 * freq, amp=0.1)), RATE) - freq) < 0.5


def test_frequency_agreement_and_stft_distance():
    a, b = tone(330), tone(494)
    assert frequency_agreement(a, tone(330, amp=0.15), RATE)
    assert not frequency_agreement(a, b, RATE)
    assert stft_distance(a, a) == 0
    assert 0 < stft_distance(a, 0.9 * a) < stft_distance(a, b)
    assert stft_distance(np.stack([a, b]), np.stack([a, b])) == 0


def test_frequency_agreement_accepts_either_of_two_equally_loud_tones():
    from videolm.tokenizers.audio import dominant_frequencies, frequency_agreement

    t = np.arange(34000) / 16000
    tied = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.3 * np.sin(2 * np.pi * 494 * t)  # circle + square, same size
    louder = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.15 * np.sin(2 * np.pi * 494 * t)
    low, high = 0.3 * np.sin(2 * np.pi * 330 * t), 0.3 * np.sin(2 * np.pi * 494 * t)
    assert [round(f) for f in dominant_frequencies(tied, 16000)] == [330, 494]
    assert frequency_agreement(tied, low, 16000) and frequency_agreement(tied, high, 16000)
    assert frequency_agreement(louder, low, 16000) and not frequency_agreement(louder, high, 16000)
    strict = [frequency_agreement(tied, x, 16000, tie_db=None) for x in (low, high)]
    assert sorted(strict) == [False, True]  # the strict version picks one of the tied peaks
