"""`videolm tokenizer fit` / `eval` end to end on the debug preset: outputs, resume, GAN path, eval JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from videolm.cli.main import main
from videolm.core.errors import UsageError
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


# ------------------------------------------------------------------- a folder of real-looking video


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Six mp4s of mixed sizes and lengths: photo-world clips (48x80, 72x128) and Shapes (64x64);
    two with a caption sidecar, the others uncaptioned."""
    from videolm.data.media import write_video
    from videolm.data.photos import PhotoConfig, make_photo_clip
    from videolm.data.shapes import ShapesConfig, make_clip

    root = tmp_path_factory.mktemp("mixed")
    for i, (h, w, n) in enumerate([(48, 80, 17), (72, 128, 13), (48, 80, 21)]):
        write_video(root / f"photo{i}.mp4", make_photo_clip(i, PhotoConfig(height=h, width=w, frames=n)).video, fps=8)
    for i in range(3):
        write_video(root / f"shapes{i}.mp4", make_clip(i, ShapesConfig(frames=13)).video, fps=8)
    (root / "photo0.txt").write_text("a photograph, panning\n")
    (root / "shapes0.txt").write_text(make_clip(0).caption + "\n")
    return root


def test_fit_on_a_folder_validates_on_held_out_videos_every_n_steps(mixed_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--data", str(mixed_folder),
                 "--frames", "5", "--data.stride", "4", "--data.held-out", "0.3", "--steps", "6",
                 "--train.val-every", "3", "--train.val-clips", "2", "--train.log-every", "3",
                 "--train.workers", "1"]) == 0  # clips read by a DataLoader worker, from the decode cache
    val = [r["step"] for r in _rows(run) if "val_psnr" in r]
    assert val == [3, 6]  # not after every step
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000003.gif", "step_000003.png", "step_000006.gif", "step_000006.png"]
    from videolm.data.folder import FolderDataset

    train = FolderDataset(mixed_folder, frames=5, size=(32, 32), stride=4, split="train", held_out=0.3)
    held = FolderDataset(mixed_folder, frames=5, size=(32, 32), stride=4, split="eval", held_out=0.3)
    assert held.paths() and set(held.paths()).isdisjoint(train.paths())
    assert len(train) + len(held) > 6 * 2  # overlapping clips: more than one per video
    from videolm.evaluation.tokenizer import evaluate_tokenizer

    scored = evaluate_tokenizer(str(run / "model"), data=str(mixed_folder), num=100, frames=5, size=(32, 32),
                                held_out=0.3)
    assert scored["clips"] == len(FolderDataset(mixed_folder, frames=5, size=(32, 32), split="eval", held_out=0.3))
    assert scored["held_out"] == 0.3  # the JSON says which videos it scored
    with pytest.raises(UsageError, match="--held-out: for a folder"):  # a world's held-out clips are its own
        evaluate_tokenizer(str(run / "model"), data="shapes", num=2, held_out=0.3)


def test_fit_on_a_pack_reads_clips_never_videos_and_validates_on_its_held_out_part(mixed_folder, tmp_path,
                                                                                  monkeypatch, capsys):
    pack = tmp_path / "pack"
    assert main(["data", "pack", str(mixed_folder), "--out", str(pack), "--size", "32x32", "--frames", "5",
                 "--stride", "4", "--held-out", "0.3"]) == 0
    import videolm.data.folder

    def no_decoding(*args, **kwargs):
        raise AssertionError("a video was decoded")

    monkeypatch.setattr(videolm.data.folder, "read_video", no_decoding)
    run = tmp_path / "run"
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--data", str(pack), "--frames", "5",
                 "--steps", "2", "--train.val-every", "2", "--train.val-clips", "2", "--train.log-every", "2"]) == 0
    assert [r["step"] for r in _rows(run) if "val_psnr" in r] == [2]
    capsys.readouterr()
    code = main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(tmp_path / "bad"), "--data", str(pack),
                 "--frames", "9", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds 32x32 clips of 5 frames at 8 fps" in err and len(err.splitlines()) == 1


def test_the_wall_clock_budget_counts_the_whole_command(mixed_folder, tmp_path):
    import time

    budget = 0.15  # minutes
    start = time.perf_counter()
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(tmp_path / "run"), "--data",
                 str(mixed_folder), "--frames", "5", "--steps", "100000", "--max-minutes", str(budget),
                 "--train.val-every", "50", "--train.log-every", "50", "--threads", "1"]) == 0
    took = time.perf_counter() - start
    steps = max(r["step"] for r in _rows(tmp_path / "run"))
    assert steps > 10 and abs(took - 60 * budget) <= 0.05 * 60 * budget, took


def test_bundle_of_a_folder_without_captions(trained, tmp_path, capsys):
    from videolm.data.media import write_video
    from videolm.data.shapes import make_clip

    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", make_clip(i).video, fps=8)
    out = tmp_path / "bundle"
    assert main(["tokenizer", "bundle", "--out", str(out), "--video", str(trained / "model"), "--data", str(folder),
                 "--captions", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "no captions" in summary["text_corpus"] and (out / "text.model").is_file()


def test_eval_puts_the_same_bits_baseline_beside_every_figure(trained, capsys):
    assert main(["tokenizer", "eval", "--model", str(trained / "model"), "--data", "photos", "--num", "2",
                 "--batch-size", "2", "--size", "48x80", "--frames", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 2 and 5 < result["baseline_psnr"] < 40 and 0 < result["baseline_ssim"] < 1


def test_reconstruct_keeps_size_and_length_and_says_what_it_cut(trained, tmp_path, capsys):
    from videolm.data.media import probe_video, read_audio, read_video, write_video
    from videolm.data.photos import PhotoConfig, make_photo_clip

    clip = make_photo_clip(0, PhotoConfig(height=56, width=96, frames=13)).video
    write_video(tmp_path / "in.mkv", clip, fps=12, quality="lossless")
    assert main(["tokenizer", "reconstruct", "--model", str(trained / "model"), "--video", str(tmp_path / "in.mkv"),
                 "--out", str(tmp_path / "out.mkv")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    info = probe_video(tmp_path / "out.mkv")
    assert (info.height, info.width, info.num_frames, info.fps) == (56, 96, 13, 12)
    assert result["size"] == [56, 96] and result["frames"] == 13 and result["notes"] == []
    assert result["psnr"] > 0 and result["baseline_psnr"] > 10 and "baseline_ssim" in result
    tone = np.sin(np.arange(16000) * 0.1).astype(np.float32) * 0.3  # a second of sound
    write_video(tmp_path / "odd.mkv", clip[:11, :54, :90], fps=12, quality="lossless", audio=tone)
    assert main(["tokenizer", "reconstruct", "--model", str(trained / "model"), "--video", str(tmp_path / "odd.mkv"),
                 "--out", str(tmp_path / "odd_out.mkv")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["size"] == [48, 88] and result["frames"] == 9 and len(result["notes"]) == 3
    assert "centre-cropped from 54x90 to 48x88" in captured.err and "first 9 of 11 frames" in captured.err
    assert "its sound is kept" in captured.err  # under the 9 frames kept
    assert read_video(tmp_path / "odd_out.mkv").shape == (9, 48, 88, 3)
    assert len(read_audio(tmp_path / "odd_out.mkv")) == 12000
    assert main(["tokenizer", "reconstruct", "--model", str(trained / "model"), "--video", str(tmp_path / "odd.mkv"),
                 "--out", str(tmp_path / "odd_out.gif")]) == 0
    assert "its sound is left out (a GIF holds none)" in capsys.readouterr().err


def test_reconstruct_in_chunks_matches_one_pass(trained, monkeypatch):
    import torch

    from videolm.evaluation import tokenizer as evaluation
    from videolm.tasks.tokenizing import load_video_tokenizer

    tok = load_video_tokenizer(str(trained / "model"))
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    whole = evaluation.roundtrip(tok, x)
    monkeypatch.setattr(evaluation, "CHUNK_PIXELS", 5 * 16 * 16)  # chunks of 1 + 4 frames
    chunked = evaluation.roundtrip(tok, x)
    assert chunked.shape == whole.shape == x.shape
    assert torch.allclose(chunked[:, :, :5], whole[:, :, :5], atol=1e-5)  # causal: the first chunk is exact


def test_decoder_fine_tuning_keeps_the_codes(trained, tmp_path):
    import torch

    run = tmp_path / "decoder"
    assert main(["tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--init", str(trained / "model"),
                 "--train.freeze-encoder", "--steps", "2", "--train.lr", "0.01", "--train.save-dtype", "float32"]) == 0
    before = VideoTokenizer.from_pretrained(trained / "model")
    after = VideoTokenizer.from_pretrained(run / "model")
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(before.encode(x), after.encode(x))  # the encoder and quantizer did not move
    assert any(not torch.equal(a, b) for a, b in zip(before.decoder.state_dict().values(),
                                                     after.decoder.state_dict().values()))


@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="needs 2 CPU cores")
def test_two_process_ddp_on_cpu(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    run = tmp_path / "run"
    out = subprocess.run([*cmd, "tokenizer", "fit", "--config", str(DEBUG), "--out", str(run), "--train.strategy",
                          "ddp", "--train.devices", "2", "--train.accelerator", "cpu", "--threads", "1"],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("trained video tokenizer saved") == 1  # printed by rank 0 only
    assert [r["step"] for r in _rows(run) if "loss" in r] == [2, 4]
    VideoTokenizer.from_pretrained(run / "model")
