"""`videolm tokenize` with debug-size tokenizers: shards hold what the tokenizers encode, read back
exactly, and train the LM end to end (with sample videos decoded through the tokenizers)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videolm.cli.main import main
from videolm.data.shapes import ShapesConfig, make_clip
from videolm.data.shards import TokenShards
from videolm.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from videolm.tokenizers.text import TextTokenizer
from videolm.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, to_tensor
from videolm.tokenizers.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
WORLD = ShapesConfig(height=32, width=32, frames=5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, one_thread):
    """A model folder of untrained debug tokenizers (small codebooks), a text tokenizer and a 32x32 vocabulary."""
    from videolm.train.tokenizer import build_bundle

    root = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    VideoTokenizer(VideoTokenizerConfig.from_name("debug", codebook_size=256)).save_pretrained(root / "video")
    audio = AudioTokenizer(AudioTokenizerConfig.from_name("debug", codebook_size=64))
    audio.train()(torch.from_numpy(np.stack([make_clip(s, WORLD).audio for s in range(2)])))  # k-means init
    audio.save_pretrained(root / "audio")
    build_bundle(root / "model", str(root / "video"), str(root / "audio"), captions=300, text_vocab=400,
                 resolutions=((32, 32),))
    return root / "model"


@pytest.fixture(scope="module")
def shards(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens") / "shards"
    args = ["tokenize", "--model", str(bundle), "--num", "5", "--seed", "7", "--size", "32", "--frames", "5",
            "--batch-size", "2", "--shard-size", "2", "--out", str(out)]
    assert main(args) == 0
    return out


def test_shards_hold_what_the_tokenizers_encode(bundle, shards):
    video = VideoTokenizer.from_pretrained(bundle / "video_tokenizer")
    audio = AudioTokenizer.from_pretrained(bundle / "audio_tokenizer")
    text = TextTokenizer.load(bundle)
    data = TokenShards(shards)
    assert len(data) == 5 and len(data.index["shards"]) == 3
    for start in range(0, 5, 2):  # the batches tokenize encoded (--batch-size 2): float sums, and so ties, match
        clips = [make_clip(seed, WORLD) for seed in range(7 + start, min(12, 9 + start))]
        videos = video.encode(to_tensor(np.stack([c.video for c in clips])))  # (B, t, n) = (B, 2, 16)
        structures = video.encode(to_tensor(np.stack([c.structure for c in clips])))  # (B, 2, 16)
        audios = audio.encode(torch.from_numpy(np.stack([c.audio for c in clips])))  # (B, F, Q) = (B, 32, 4)
        for b, clip in enumerate(clips):
            got = data[start + b]
            assert got["seed"] == 7 + start + b and got["caption"] == clip.caption
            assert (got["height"], got["width"], got["frames"], got["num_samples"]) == (32, 32, 5, len(clip.audio))
            assert torch.equal(got["video"], videos[b]) and torch.equal(got["structure"], structures[b])
            assert torch.equal(got["audio"], audios[b])
            assert text.decode(got["text"].tolist()) == clip.caption
    assert got["video"].shape == (2, 16) and got["audio"].shape == (32, 4)
    assert len(got["audio"].unique()) > 1  # real codes, not an uninitialised codebook's zeros


def test_shards_carry_their_vocabulary_with_the_clips_resolution_and_length(bundle, shards):
    index = json.loads((shards / "index.json").read_text())
    assert Path(index["model"]) == bundle.absolute() and index["source"]["height"] == 32
    vocab = Vocabulary.load(shards)
    assert vocab.extends(Vocabulary.load(bundle)) and vocab.res_id(32, 32) is not None  # + the clips' length:
    assert vocab.extra == ("<frames:5>",) and vocab.lengths == [5]
    ids = vocab.video_to_ids(TokenShards(shards)[0]["video"])
    assert vocab.modality_mask("video", ids).all()


def test_tokenize_a_folder_of_videos(bundle, tmp_path):
    clips = tmp_path / "clips"
    assert main(["data", "shapes", "--out", str(clips), "--num", "2", "--size", "32", "--frames", "5"]) == 0
    out = tmp_path / "shards"
    assert main(["tokenize", "--data", str(clips), "--model", str(bundle), "--num", "5",
                 "--size", "32", "--frames", "5", "--out", str(out)]) == 0
    data = TokenShards(out)
    assert len(data) == 2 and data[0]["caption"] == make_clip(0, WORLD).caption
    assert "structure" not in data[0] and data[0]["audio"].shape == (32, 4)  # folders carry no structure video


def test_tokenize_errors_are_one_line(bundle, shards, tmp_path, capsys):
    assert main(["tokenize", "--model", str(tmp_path / "nope"), "--num", "1", "--out", str(tmp_path / "a")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["tokenize", "--model", str(bundle), "--num", "1", "--out", str(shards)]) == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text((bundle / "vocab.json").read_text())
    assert main(["tokenize", "--model", str(tmp_path / "half"), "--num", "1", "--size", "32", "--frames", "5",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "has no text.model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()  # all or nothing
    for device, says in (("mps", "only cpu and cuda"), ("gpu0", "not a device name"),
                         ("cuda:99", "no such CUDA device")):
        assert main(["tokenize", "--model", str(bundle), "--num", "1", "--device", device,
                     "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "c").exists()


def test_tokenize_on_auto_device_matches_cpu(bundle, shards, tmp_path):
    """--device auto (the CPU here, a GPU where there is one) writes the codes the CPU run wrote."""
    out = tmp_path / "auto"
    assert main(["tokenize", "--model", str(bundle), "--num", "5", "--seed", "7", "--size", "32", "--frames", "5",
                 "--batch-size", "2", "--shard-size", "2", "--device", "auto", "--out", str(out)]) == 0
    ours, theirs = TokenShards(out), TokenShards(shards)
    for i in range(5):
        agree = (ours[i]["video"] == theirs[i]["video"]).float().mean()
        assert agree > (0.99 if not torch.cuda.is_available() else 0.9)
        assert torch.equal(ours[i]["text"], theirs[i]["text"])


def test_lm_fit_on_the_shards_writes_sample_videos_and_audio(shards, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "lm" / "debug.yaml").read_text())
    cfg["train"].update(steps=2, sample_every=2)
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["lm", "fit", "--config", str(config), "--shards", str(shards), "--out", str(run)]) == 0
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["step_000002_t2v.gif", "step_000002_t2v.png", "step_000002_v2a.wav"]
    from videolm.data.media import read_audio, read_video

    gif = read_video(run / "samples" / "step_000002_t2v.gif")
    assert gif.shape == (5, 32, 64, 3)  # truth | generated, side by side
    assert len(read_audio(run / "samples" / "step_000002_v2a.wav")) == 2 * make_clip(7, WORLD).audio.shape[0]


def test_lm_fit_can_tokenize_clips_on_the_fly(bundle, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "lm" / "debug.yaml").read_text())
    cfg["data"] = {"source": "shapes", "num": 8, "frames": 5, "height": 32, "width": 32, "model": str(bundle),
                   "tasks": {"t2v": 1.0, "v2a": 1.0}}
    cfg["train"].update(steps=2)
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["lm", "fit", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    vocab = Vocabulary.load(tmp_path / "run" / "model")
    assert vocab.tasks == ["t2v", "v2a"] and vocab.res_id(32, 32) is not None
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [2]


def test_lm_fit_trains_every_task_together_and_samples_each(shards, tmp_path):
    from videolm.tasks.base import BUILTIN

    cfg = yaml.safe_load((ROOT / "configs" / "lm" / "debug.yaml").read_text())
    cfg["data"]["tasks"] = {name: 1.0 for name in BUILTIN}
    cfg["train"].update(steps=2, sample_every=2, batch_size=4)
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["lm", "fit", "--config", str(config), "--shards", str(shards), "--out", str(run)]) == 0
    assert sorted(Vocabulary.load(run / "model").tasks) == sorted(BUILTIN)
    written = {p.stem.split("_", 2)[2] for p in (run / "samples").iterdir()}
    assert written == set(BUILTIN)  # one sample (image grid, gif or wav) per task
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(key.startswith("loss_") and key != "loss_t2v" for key in logged)
