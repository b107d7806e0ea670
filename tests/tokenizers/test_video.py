"""The video tokenizer's contracts, on the tiny `debug` preset (random weights suffice for most)."""

import numpy as np
import pytest
import torch

from videolm.core.errors import UsageError
from videolm.data.shapes import make_clip
from videolm.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, to_frames, to_tensor

VARIANTS = {
    "lfq": {"quantizer": "lfq"},
    "fsq": {"quantizer": "fsq"},
    "vq": {"quantizer": "vq"},
    "vqvae2": {"architecture": "vqvae2"},
    "lfq_norm": {"quantizer": "lfq", "quantizer_norm": True},
}


def tokenizer(variant="lfq", seed=0):
    torch.manual_seed(seed)
    return VideoTokenizer(VideoTokenizerConfig.from_name("debug", **VARIANTS[variant])).eval()


def video(t=17, h=64, w=64, b=2, seed=0):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_compression_is_4x_in_time_and_8x_in_space(variant):
    tok = tokenizer(variant)
    out = tok(video())
    per_frame = 64 if variant != "vqvae2" else 16 + 64  # top 4x4 then bottom 8x8
    assert out.recon.shape == (2, 3, 17, 64, 64)
    assert out.codes.shape == (2, 5, per_frame) and out.codes.dtype == torch.int64
    assert 0 <= out.codes.min() and out.codes.max() < tok.codebook_size
    assert tok.tokens_per_frame(64, 64) == per_frame and tok.latent_frames(17) == 5
    assert torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality_contract_prefix_frames_give_prefix_codes(variant):
    tok = tokenizer(variant)
    x = video(t=17)
    full = tok.encode(x)
    for k in range(5):  # the first 1 + 4k frames -> the first 1 + k latent frames
        assert torch.equal(tok.encode(x[:, :, : 1 + 4 * k]), full[:, : 1 + k])


def test_later_frames_never_change_earlier_codes():
    tok = tokenizer()
    x = video(t=17, b=1)
    y = x.clone()
    y[:, :, 9:] = -y[:, :, 9:]  # change frames 9..16 only
    a, b = tok.encode(x), tok.encode(y)
    assert torch.equal(a[:, :3], b[:, :3])  # latent frames 0..2 see frames <= 8
    assert not torch.equal(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_any_size_divisible_by_8_and_any_1_plus_4k_length(variant):
    tok = tokenizer(variant)
    x = video(t=33, h=64, w=96, b=1)
    codes = tok.encode(x)
    assert codes.shape == (1, 9, tok.tokens_per_frame(64, 96))
    assert tok.decode(codes, 64, 96).shape == (1, 3, 33, 64, 96)


def test_an_image_is_a_one_frame_video():
    tok = tokenizer()
    x = video(t=17, b=1)
    image_codes = tok.encode(x[:, :, :1])
    assert image_codes.shape == (1, 1, 64)
    assert torch.equal(image_codes, tok.encode(x)[:, :1])
    assert tok.decode(image_codes, 64, 64).shape == (1, 3, 1, 64, 64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_of_encode_equals_forward_reconstruction(variant):
    tok = tokenizer(variant)
    x = video()
    with torch.no_grad():
        out = tok(x)
    assert torch.allclose(tok.decode(tok.encode(x), 64, 64), out.recon.clamp(-1, 1), atol=1e-5)


def test_batched_equals_unbatched():
    tok = tokenizer()
    x = video(b=3)
    batched = tok.encode(x)
    for i in range(3):
        assert torch.equal(tok.encode(x[i : i + 1]), batched[i : i + 1])


@pytest.mark.parametrize("variant", ["lfq", "vqvae2"])
def test_save_load_gives_identical_codes_and_fp16_storage_stays_close(tmp_path, variant):
    tok = tokenizer(variant)
    x = video()
    tok.save_pretrained(tmp_path / "fp32")
    again = VideoTokenizer.from_pretrained(tmp_path / "fp32")
    assert again.config == tok.config
    assert torch.equal(again.encode(x), tok.encode(x))
    codes = tok.encode(x)
    assert torch.equal(again.decode(codes, 64, 64), tok.decode(codes, 64, 64))
    tok.save_pretrained(tmp_path / "fp16", dtype="float16")
    half = VideoTokenizer.from_pretrained(tmp_path / "fp16")
    assert (half.decode(codes, 64, 64) - tok.decode(codes, 64, 64)).abs().max() < 0.05
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size


def test_quantizer_runs_in_fp32_under_bf16_autocast():
    tok = tokenizer().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(video(t=5, h=32, w=32))
    assert torch.isfinite(out.recon.float()).all() and torch.isfinite(out.aux_loss)
    out.recon.float().mean().add(out.aux_loss).backward()


def test_bad_shapes_are_usage_errors():
    tok = tokenizer()
    for shape in [(1, 3, 16, 64, 64), (1, 3, 17, 60, 64), (1, 17, 64, 64)]:
        with pytest.raises(UsageError):
            tok.encode(torch.zeros(shape))
    with pytest.raises(UsageError, match="do not fit"):
        tok.decode(torch.zeros(1, 5, 63, dtype=torch.long), 64, 64)


def test_pixel_conversion_round_trips_uint8_exactly():
    frames = make_clip(3).video  # (T, H, W, 3)
    x = to_tensor(frames)
    assert x.shape == (1, 3, 17, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_frames(x)[0], frames)


def test_a_few_steps_of_training_reduce_the_reconstruction_error():
    tok = tokenizer().train()
    x = to_tensor(np.stack([make_clip(s).video[:5, ::2, ::2] for s in range(4)]))  # (4, 3, 5, 32, 32)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = tok(x)
        loss = (out.recon - x).abs().mean() + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((out.recon - x).abs().mean().item())
    assert losses[-1] < 0.6 * losses[0]
