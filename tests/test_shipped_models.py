"""The models shipped in the package load by name and still do their job."""

import numpy as np
import torch

from videolm.core.metrics import psnr_per_clip
from videolm.core.models import DEFAULT_MODEL, resolve_model, shipped_models
from videolm.data.shapes import make_clip
from videolm.tokenizers.audio import AudioTokenizer, frequency_agreement
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, to_tensor
from videolm.tokenizers.vocab import Vocabulary


def test_default_model_resolves_by_name():
    assert DEFAULT_MODEL in shipped_models()
    folder = resolve_model(DEFAULT_MODEL)
    assert (folder / "vocab.json").exists() and (folder / "text.model").exists()


def test_shipped_weights_stay_within_budget():
    folder = resolve_model(DEFAULT_MODEL)
    total = sum(p.stat().st_size for name in shipped_models() for p in resolve_model(name).rglob("*.safetensors"))
    assert total <= 60 * 2**20  # everything shipped, every model folder: tokenizers, probe, LM, refiner, DiT
    tokenizers = sum(p.stat().st_size for part in ("video_tokenizer", "audio_tokenizer", "probe")
                     for p in (folder / part).rglob("*.safetensors"))
    assert tokenizers <= 12 * 2**20


def test_shipped_lm_knows_every_task_and_generates_a_valid_clip():
    from videolm.tasks.base import BUILTIN
    from videolm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL)
    assert pipe.task_names == list(BUILTIN)
    (result,) = pipe.generate("t2v", "a large red circle moves left", seed=0, temperature=0)
    assert result.video.shape == (17, 64, 64, 3) and result.video.max() > 100  # something bright was drawn


def test_shipped_audio_tokenizer_keeps_the_tones_of_held_out_clips():
    tok = AudioTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL) / "audio_tokenizer")
    clips = [make_clip(1_000_000 + i).audio for i in range(8)]
    x = torch.from_numpy(np.stack(clips))
    recon = tok.decode(tok.encode(x), x.shape[1])
    assert all(frequency_agreement(a, b, 16000) for a, b in zip(x.numpy(), recon.numpy()))


def test_shipped_text_tokenizer_and_vocabulary_agree():
    folder = resolve_model(DEFAULT_MODEL)
    text, vocab = TextTokenizer.load(folder), Vocabulary.load(folder)
    start, stop = vocab.range("text")
    assert stop - start == text.vocab_size
    caption = make_clip(1_000_000).caption
    ids = vocab.text_to_ids(text.encode(caption))
    assert text.decode(vocab.ids_to_text(ids)) == caption


def test_shipped_video_tokenizer_reconstructs_held_out_clips():
    tok = VideoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL) / "video_tokenizer").eval()
    clips = [make_clip(1_000_000 + i).video for i in range(4)]
    x = to_tensor(np.stack(clips))  # (4, 3, 17, 64, 64)
    codes = tok.encode(x)
    assert codes.shape == (4, 5, 64) and int(codes.max()) < tok.codebook_size
    assert psnr_per_clip(x, tok.decode(codes, 64, 64)).mean() >= 27.0  # 256-clip mean is in docs/tokenizers.md
    # the causality contract with the trained weights: the first 9 frames give the first 3 latent frames
    assert torch.equal(tok.encode(x[:, :, :9]), codes[:, :3])


def test_shipped_refiner_cleans_held_out_decodes():
    from videolm.diffusion.refiner import Refiner, refine
    from videolm.tokenizers.video import to_frames

    folder = resolve_model(DEFAULT_MODEL)
    tok = VideoTokenizer.from_pretrained(folder / "video_tokenizer").eval()
    refiner = Refiner.from_pretrained(folder / "refiner")
    clips = np.stack([make_clip(1_000_000 + i).video for i in range(4)])
    with torch.no_grad():
        decoded = to_frames(tok.decode(tok.encode(to_tensor(clips)), 64, 64))

    def pooled_psnr(frames) -> float:
        return float(10 * np.log10(255**2 / np.mean((frames.astype(float) - clips) ** 2)))

    assert refiner.config.gate_tau  # shipped with its uncertainty gate on
    gated, ungated = refine(refiner, decoded), refine(refiner, decoded, gate_tau=0)
    assert pooled_psnr(ungated) > pooled_psnr(gated) > pooled_psnr(decoded) + 0.5
    assert np.abs(gated.astype(int) - decoded).mean() < np.abs(ungated.astype(int) - decoded).mean()


def test_shipped_dit_baseline_draws_the_asked_colors():
    from videolm.diffusion.dit_pipeline import DiTGenerator
    from videolm.evaluation.probe import load_probe
    from videolm.evaluation.scoring import attribute_accuracy

    gen = DiTGenerator.from_folder(resolve_model(DEFAULT_MODEL) / "dit")
    clips = [make_clip(1_000_000 + i) for i in range(8)]
    made = gen.generate("t2v", prompts=[c.caption for c in clips], seed=0, steps=16).video
    assert made.shape == (8, 17, 64, 64, 3)
    scores = attribute_accuracy(load_probe(DEFAULT_MODEL).predict(made), [c.meta["objects"] for c in clips], ("color",))
    assert scores["color"] >= 0.5  # chance is 1/7


def test_shipped_lm_follows_the_caption_colors():
    from videolm.evaluation.probe import load_probe
    from videolm.evaluation.scoring import attribute_accuracy
    from videolm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL)
    clips = [make_clip(1_000_000 + i) for i in range(8)]
    made = np.stack([pipe.generate("t2v", c.caption, seed=i, refine=False)[0].video for i, c in enumerate(clips)])
    scores = attribute_accuracy(load_probe(DEFAULT_MODEL).predict(made), [c.meta["objects"] for c in clips], ("color",))
    assert scores["color"] >= 0.6  # chance is 1/7; `videolm eval` measures it on 128 clips (docs/tasks.md)


def test_shipped_natural_tokenizer_reads_photographs_that_shapes_64_turns_into_blobs():
    """Held-out photographs at two sizes: `natural` at or above the same-bits codec (measured on 128
    clips: +0.3 to +0.6 dB, docs/results.md), and far above the Shapes tokenizer."""
    from videolm.core.metrics import same_bits_baseline
    from videolm.data.photos import PhotoConfig, make_photo_clip

    natural = VideoTokenizer.from_pretrained(resolve_model("natural") / "video_tokenizer").eval()
    shapes = VideoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL) / "video_tokenizer").eval()
    for h, w in [(64, 64), (72, 128)]:
        world = PhotoConfig(height=h, width=w)
        x = to_tensor(np.stack([make_photo_clip(1_000_000 + i, world, split="eval").video for i in range(8)]))
        with torch.no_grad():
            ours = float(psnr_per_clip(x, natural.decode(natural.encode(x), h, w)).mean())
            blobs = float(psnr_per_clip(x, shapes.decode(shapes.encode(x), h, w)).mean())
        assert ours >= float(psnr_per_clip(x, same_bits_baseline(x)).mean()) - 0.3 and ours >= blobs + 6, (h, w)
