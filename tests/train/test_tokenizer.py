"""`videolm tokenizer fit` / `eval` end to end on the debug preset: outputs, resume, GAN path, eval JSON."""

import json
from pathlib import Path

import pytest
import yaml

from videolm.cli.main import main
from videolm.tokenizers.video import VideoTokenizer

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "tokenizer" / "video-debug.yaml"


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("fit") / "run"
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--threads", "2"]) == 0
    return run


def test_fit_writes_model_samples_metrics_and_checkpoint(trained):
    model = VideoTokenizer.from_pretrained(trained / "model")
    assert model.config.channels == [8, 16, 16]
    assert sorted(p.name for p in (trained / "samples").iterdir()) == [
        "step_000002.gif", "step_000002.png", "step_000004.gif", "step_000004.png"]
    rows = _rows(trained)
    val = [r for r in rows if "val_psnr" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(0 < r["codebook_usage"] <= 1 and r["perplexity"] >= 1 for r in val)
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert json.loads((trained / "run.json").read_text())["entry"] == "tokenizer fit"


def test_rerun_resumes_from_the_last_checkpoint(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--steps", "6"]) == 0
    steps = [r["step"] for r in _rows(run) if "loss" in r]
    assert steps == [2, 4, 6]  # continued at step 5, did not start over


def test_eval_prints_one_json_object(trained, capsys):
    assert main(["tokenizer", "eval", "--model", str(trained / "model"), "--num", "3", "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"psnr", "ssim", "codebook_usage", "perplexity", "clips_per_s"}
    assert result["clips"] == 3 and result["psnr"] > 0


def test_adversarial_loss_switches_on_after_its_start_step(tmp_path):
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["train"]["adversarial"] = {"enabled": True, "start_step": 2, "channels": 8}
    path = tmp_path / "gan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["tokenizer", "fit", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    rows = {r["step"]: r for r in _rows(tmp_path / "run") if "loss" in r}
    assert "d_loss" not in rows[2] and "d_loss" in rows[4] and "g_loss" in rows[4]


def test_bad_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenizer", "eval", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tokenizer", "eval", "--model", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_audio(tmp_path_factory):
    run = tmp_path_factory.mktemp("fit_audio") / "run"
    cfg = ROOT / "configs" / "tokenizer" / "audio-debug.yaml"
    assert main(["tokenizer", "fit", "--config", str(cfg), "--out", str(run)]) == 0
    return run


def test_audio_fit_and_eval(trained_audio, capsys):
    assert (trained_audio / "samples" / "step_000004.wav").exists()
    assert main(["tokenizer", "eval", "--model", str(trained_audio / "model"), "--num", "2", "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"stft_distance", "frequency_agreement", "codebook_usage", "perplexity", "clips_per_s"}
    assert 0 <= result["frequency_agreement"] <= 1


def test_bundle_assembles_tokenizers_text_and_vocabulary(trained, trained_audio, tmp_path, capsys):
    from videolm.tokenizers.text import TextTokenizer
    from videolm.tokenizers.vocab import Vocabulary

    out = tmp_path / "bundle"
    assert main(["tokenizer", "bundle", "--out", str(out), "--video", str(trained / "model"),
                 "--audio", str(trained_audio / "model"), "--captions", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    vocab, text = Vocabulary.load(out), TextTokenizer.load(out)
    assert summary["vocabulary"] == len(vocab) and vocab.range("text")[1] - vocab.range("text")[0] == text.vocab_size
    assert vocab.range("video")[1] - vocab.range("video")[0] == 4096
    caption = "a large red circle moves left on a striped background"
    assert text.decode(text.encode(caption)) == caption and len(text.encode(caption)) <= 12
    assert main(["tokenizer", "eval", "--model", str(out), "--modality", "audio", "--num", "1", "--batch-size", "1"]) == 0
