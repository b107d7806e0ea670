"""Sizes and lengths through generation and evaluation: `--size`, `--frames`, `--fit`, the trained
size nearest an input's aspect, untrained sizes with a warning, batched samples, and `eval --size`.
On a model folder with the shipped tokenizers and an untrained `debug` LM that lists several
trained sizes (outputs are noise, but every size, file and note is real)."""

import json
import shutil

import numpy as np
import pytest
import torch

from videolm.cli.main import main
from videolm.data.media import read_video, write_audio, write_video
from videolm.data.shapes import ShapesConfig, make_clip
from videolm.tasks.pipeline import Pipeline, nearest_size
from videolm.tokenizers.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = [[64, 64, 17], [48, 80, 17], [80, 48, 17], [64, 64, 9]]


@pytest.fixture(scope="module")
def model_dir(debug_model_dir, tmp_path_factory):
    """The debug model folder, its LM said to be trained at SIZES (their tokens in its vocabulary)."""
    folder = tmp_path_factory.mktemp("sized") / "model"
    shutil.copytree(debug_model_dir, folder)
    vocab = Vocabulary.load(folder / "lm")
    for h, w, n in SIZES:
        vocab.add_geometry(h, w, n)
    vocab.save(folder / "lm")
    (folder / "lm" / "clip.json").write_text(json.dumps({"frames": 17, "height": 64, "width": 64, "fps": 8,
                                                         "sizes": SIZES}))
    return folder


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    write_video(path, make_clip(5, ShapesConfig(height=96, width=160)).video, fps=8)
    return path


def test_the_trained_size_nearest_an_inputs_aspect_is_chosen():
    trained = [(64, 64), (48, 80), (80, 48)]
    assert nearest_size((720, 1280), trained) == (48, 80)
    assert nearest_size((1280, 720), trained) == (80, 48)
    assert nearest_size((100, 110), trained) == (64, 64)


def test_extend_of_a_wide_clip_keeps_its_aspect_and_says_what_it_chose(pipe, wide):
    with pytest.warns(UserWarning, match=r"made at 48x80, the trained size nearest its aspect \(96x160 given"):
        (result,) = pipe.generate("extend", video=str(wide))
    assert result.video.shape == (17, 48, 80, 3) and result.extra["size"] == "48x80"
    assert any("resized to 48x80" in n for n in result.extra["notes"])


def test_pad_keeps_the_whole_frame_inside_the_size_with_black_bars(pipe, wide):
    with pytest.warns(UserWarning, match="scaled to 38x64 inside 64x64 with black bars"):
        request = pipe.prepare("extend", video=str(wide), size="64x64", fit="pad")
    frames = request.inputs.video
    assert frames.shape[1:] == (64, 64, 3) and frames[:, :10].max() == 0 and frames[:, -10:].max() == 0


def test_size_and_frames_are_made_natively_or_cut_or_chained(pipe):
    (tall,) = pipe.generate("t2v", "a large red circle moves left", size="80x48")
    assert tall.video.shape == (17, 80, 48, 3) and "notes" not in tall.extra  # a trained size: nothing to say
    (short,) = pipe.generate("t2v", "a large red circle moves left", frames=9)
    assert short.video.shape[0] == 9 and short.extra["native_frames"] == 9
    with pytest.warns(UserWarning, match=r"--frames 13: made at 17 frames .*cut to 13"):
        (cut,) = pipe.generate("uncond", frames=13)
    assert cut.video.shape[0] == 13
    with pytest.warns(UserWarning, match="continued with extend to 21"):
        (longer,) = pipe.generate("uncond", frames=21)
    assert longer.video.shape[0] == 21


def test_an_untrained_size_works_and_says_so(pipe):
    with pytest.warns(UserWarning, match="not trained at this size"):
        (result,) = pipe.generate("uncond", size="64x112")
    assert result.video.shape == (17, 64, 112, 3)
    assert any("its token is new and untrained" in n for n in result.extra["notes"])


@pytest.mark.parametrize("size", ["64x60", "0x64", "64xx", "100000x100000"])
def test_bad_sizes_are_usage_errors(model_dir, tmp_path, capsys, size):
    assert main(["generate", "--model", str(model_dir), "--task", "uncond", "--size", size,
                 "--out", str(tmp_path / "o")]) == 2
    assert "--size" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_samples_are_drawn_in_batches_each_with_its_own_seed(pipe):
    batched = pipe.generate("uncond", num_samples=3, seed=4, batch_size=2)
    alone = pipe.generate("uncond", num_samples=1, seed=6)
    assert [r.seed for r in batched] == [4, 5, 6]
    assert np.array_equal(batched[2].video, alone[0].video)  # the second batch's one row: seed 6 alone
    assert not np.array_equal(batched[0].video, batched[1].video)


def test_cli_generates_at_a_size_and_records_it(model_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["generate", "--model", str(model_dir), "--task", "uncond", "--size", "48x80", "--num-samples", "2",
                 "--batch-size", "2", "--out", str(out)]) == 0
    samples = json.loads((out / "manifest.json").read_text())["samples"]
    assert [s["size"] for s in samples] == ["48x80", "48x80"]
    assert read_video(out / samples[1]["video"]).shape == (17, 48, 80, 3)


def test_eval_scores_at_a_size_and_length(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "t2v,extend", "--num", "2", "--size", "48x80",
                 "--frames", "9"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["size"], report["frames"]) == ("48x80", 9)
    assert set(report["tasks"]) == {"t2v", "extend"} and "psnr" in report["tasks"]["extend"]


def test_rows_of_different_sizes_share_one_batch_and_each_draws_what_it_would_alone(pipe):
    task = pipe.task("t2v")
    wide = pipe.prepare("t2v", "a small blue square moves up", size="48x80").sample
    square = pipe.prepare("t2v", "a small blue square moves up", frames=9).sample
    together = pipe.codes(task, [wide, square], [3, 4])
    assert together[0].shape == (5, 60) and together[1].shape == (3, 64)  # (latent frames, 6x10 or 8x8 codes)
    assert all(torch.equal(a, pipe.codes(task, [s], [seed])[0]) for a, s, seed in zip(together, [wide, square], [3, 4]))


def test_extend_of_a_720p_file_says_what_it_resized_to(pipe, tmp_path):
    frames = np.zeros((27, 720, 1280, 3), np.uint8)  # 9 frames at 8 fps
    frames[:, 300:420, 600:720] = 255
    write_video(tmp_path / "hd.mp4", frames, fps=24)
    with pytest.warns(UserWarning, match=r"720x1280 pixels, centre-cropped to 720x1200, resized to 48x80, resampled "
                                         r"from 24 to 8 fps"):
        (result,) = pipe.generate("extend", video=str(tmp_path / "hd.mp4"))
    assert result.video.shape[1:] == (48, 80, 3)


def test_other_commands_take_a_size_and_a_length(tmp_path, capsys):
    assert main(["tokenizer", "eval", "--num", "2", "--size", "48x80", "--frames", "9"]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == 2
    for command in (["tokenizer", "fit"], ["refiner", "fit"], ["dit", "fit"], ["lm", "fit"], ["refiner", "eval"],
                    ["compare"], ["eval"], ["tokenize"], ["data", "shapes"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        shown = capsys.readouterr().out
        assert "--size" in shown and "--frames" in shown, command


def test_v2a_and_a2v_follow_their_inputs_duration(pipe, tmp_path):
    clip = make_clip(7, ShapesConfig(frames=9))
    write_video(tmp_path / "short.mp4", clip.video, fps=8)
    (sound,) = pipe.generate("v2a", video=str(tmp_path / "short.mp4"))
    assert sound.extra["native_frames"] == 9 and len(sound.audio) == round(9 / 8 * 16000)
    write_audio(tmp_path / "short.wav", clip.audio)
    (video,) = pipe.generate("a2v", audio=str(tmp_path / "short.wav"))
    assert video.video.shape[0] == 9


def test_eval_judges_long_clips_over_their_last_frames_too(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "t2v", "--num", "2", "--frames", "21"]) == 0
    block = json.loads(capsys.readouterr().out)["tasks"]["t2v"]
    assert set(block["late"]) == {"shape", "color", "size"} and "direction" in block


@pytest.fixture(scope="module")
def grid_dir(model_dir, tmp_path_factory):
    """`model_dir` with its LM switched to grid positions (the same weights)."""
    folder = tmp_path_factory.mktemp("grid") / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "lm" / "config.json").read_text())
    (folder / "lm" / "config.json").write_text(json.dumps({**config, "videolm_positions": "grid"}))
    return folder


def test_a_grid_position_model_generates_and_scores_at_any_size(grid_dir, capsys):
    pipe = Pipeline.from_pretrained(grid_dir)
    assert pipe.describe_lm()["positions"] == "grid"
    task = pipe.task("t2v")
    wide = pipe.prepare("t2v", "a small blue square moves up", size="48x80").sample
    square = pipe.prepare("t2v", "a small blue square moves up", frames=9).sample
    together = pipe.codes(task, [wide, square], [3, 4])
    assert all(torch.equal(a, pipe.codes(task, [s], [seed])[0]) for a, s, seed in zip(together, [wide, square], [3, 4]))
    assert main(["eval", "--model", str(grid_dir), "--tasks", "t2v,extend", "--num", "2", "--size", "64x112"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["size"] == "64x112" and "psnr" in report["tasks"]["extend"]
