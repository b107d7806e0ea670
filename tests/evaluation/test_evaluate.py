"""`videolm eval`: the metrics blocks, their baselines, and the command end to end (debug LM)."""

import json

import numpy as np
import pytest

from videolm.cli.main import main
from videolm.core.models import resolve_model
from videolm.data.shapes_data import ShapesDataset
from videolm.evaluation.evaluate import chance_levels, paired_changes
from videolm.evaluation.probe import load_probe
from videolm.evaluation.scoring import Scorer, attribute_accuracy
from videolm.tasks.base import BUILTIN, Media, build_tasks
from videolm.tasks.tokenizing import ClipTokenizer
from videolm.tokenizers.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def held_out():
    data = ShapesDataset(4, split="eval")
    clips = [data[i] for i in range(4)]
    tok = ClipTokenizer("shapes-64")
    return clips, tok.encode(clips)


def test_attribute_accuracy_pairs_objects():
    wanted = [[{"shape": "circle", "color": "red", "size": "large", "direction": "left"},
               {"shape": "square", "color": "blue", "size": "small", "direction": "up"}]]
    swapped = [{"objects": list(reversed(wanted[0]))}]
    assert attribute_accuracy(swapped, wanted, ("shape", "color")) == {"shape": 1.0, "color": 1.0}
    one = [{"objects": [wanted[0][0]]}]
    assert attribute_accuracy(one, wanted, ("shape",)) == {"shape": 0.5}
    assert chance_levels()["color"] == pytest.approx(1 / 7)


def test_the_truth_scores_perfectly_and_beats_every_copy_baseline(held_out):
    """Scoring the ground truth itself as the output: PSNR far above each copy baseline, the
    probe reading what was asked, silhouettes matching."""
    clips, samples = held_out
    scorer = Scorer(load_probe("shapes-64"), clips, samples)
    tasks = {t.name: t for t in build_tasks(BUILTIN, Vocabulary.load(resolve_model("shapes-64")))}

    def score(name, made):
        return tasks[name].score(made, scorer)

    truth = [Media(video=c["video"]) for c in clips]
    for name in ("extend", "extend_back", "interpolate", "i2v"):
        block = score(name, truth)
        assert block["psnr"] > 60 and block["psnr"] > block["baseline_psnr"] + 20, (name, block)
        assert block["psnr_pooled"] > 140 and block["pooled_over_baseline"] > 20, (name, block)  # exact: floored
    for name in ("inpaint", "outpaint"):
        block = score(name, truth)
        assert block["psnr_masked"] > 60 and block["psnr_masked"] >= block["baseline_psnr_masked"]
    t2v = score("t2v", truth)
    assert min(t2v[a] for a in ("shape", "color", "size", "direction")) >= 0.75
    assert t2v["fd_probe"] < 1e-6  # the same clips: no distance
    stylize = score("stylize", truth)
    assert stylize["silhouette_iou"] > 0.9 and stylize["color"] >= 0.75
    v2a = score("v2a", [Media(audio=c["audio"]) for c in clips])
    assert v2a["tone"] >= 0.75
    # a wrong output scores worse: black clips have no objects to read
    black = [Media(video=np.zeros_like(c["video"])) for c in clips]
    assert score("t2v", black)["color"] < t2v["color"]
    black_extend = score("extend", black)
    assert black_extend["psnr_over_baseline"] < 0 and black_extend["pooled_over_baseline"] < 0


def test_eval_command_prints_a_block_per_task(debug_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(debug_model_dir), "--tasks", "all", "--num", "2", "--batch-size", "2",
                 "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text()) and report["num"] == 2
    assert list(report["tasks"]) == list(BUILTIN)
    assert {"shape", "color", "size", "direction", "fd_probe"} <= set(report["tasks"]["t2v"])
    assert {"psnr", "baseline_psnr", "ssim"} <= set(report["tasks"]["extend"])
    assert {"tone", "bounce_timing_error_s"} <= set(report["tasks"]["v2a"])
    assert {"silhouette_iou", "color"} <= set(report["tasks"]["stylize"])
    assert all(0 < block["loss"] < 20 for block in report["tasks"].values())  # every task's teacher-forced loss


def test_truth_loss_is_the_token_weighted_mean_whatever_the_batching(debug_model_dir, capsys):
    from videolm.evaluation.evaluate import truth_loss
    from videolm.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(debug_model_dir)
    data = ShapesDataset(3, split="eval")
    samples = pipe.tokenizer.encode([data[i] for i in range(3)])
    pad_id = pipe.vocab["<pad>"]
    for name in ("t2v", "extend", "v2a"):  # outputs of different lengths: padded rows
        task = pipe.task(name)
        together = truth_loss(pipe.model, task, samples, pad_id, batch_size=3)
        alone = [truth_loss(pipe.model, task, [s], pad_id, batch_size=1) for s in samples]
        sizes = [len(task.build(s)[1]) for s in samples]
        assert together == pytest.approx(sum(a * n for a, n in zip(alone, sizes)) / sum(sizes), rel=1e-4)
    assert main(["eval", "--model", str(debug_model_dir), "--tasks", "t2v", "--num", "2", "--split", "train"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "train" and report["tasks"]["t2v"]["loss"] > 0


def test_sample_seed_redraws_the_samples_of_the_same_clips(debug_model_dir, capsys):
    def run(*extra):
        assert main(["eval", "--model", str(debug_model_dir), "--tasks", "t2v", "--num", "2", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    default, same, other = run(), run("--sample-seed", "0"), run("--sample-seed", "7")
    assert default["sample_seed"] == 0 and other["sample_seed"] == 7
    assert default["tasks"]["t2v"] == same["tasks"]["t2v"]
    assert other["tasks"]["t2v"]["fd_probe"] != default["tasks"]["t2v"]["fd_probe"]  # other samples
    assert other["tasks"]["t2v"]["loss"] == default["tasks"]["t2v"]["loss"]  # of the same clips


def test_eval_usage_errors(debug_model_dir, capsys):
    assert main(["eval", "--model", str(debug_model_dir), "--tasks", "nope", "--num", "2"]) == 2
    assert "not trained on it" in capsys.readouterr().err
    assert main(["eval", "--model", str(debug_model_dir), "--num", "1"]) == 2


def test_build_tasks_has_every_builtin(held_out):
    clips, samples = held_out
    tok = ClipTokenizer("shapes-64")
    tok.vocab.add_resolution(64, 64)
    assert all(t.accepts(samples[0]) for t in build_tasks(list(BUILTIN), tok.vocab))


def test_paired_changes_against_a_hand_count():
    def report(model, hits):
        return {"model": model, "num": 4, "seed": 0, "sample_seed": 0, "tasks": {"t2v": {
            "loss": 0.5 if model == "base" else 0.75,
            "per_clip": [{"shape": [h, n]} for h, n in hits]}}}

    base = report("base", [(1, 2), (1, 1), (0, 1), (2, 2)])  # 4 of 6
    tuned = report("tuned", [(2, 2), (1, 1), (0, 1), (0, 2)])  # 3 of 6: +1, 0, 0, -2 per clip
    out = paired_changes(base, tuned)
    row = out["tasks"]["t2v"]["shape"]
    assert row["base"] == pytest.approx(66.67) and row["model"] == pytest.approx(50.0)
    assert row["change"] == pytest.approx(-16.67)
    # residuals d_i - change * n_i = 1 + 1/3, 1/6, 1/6, -2 + 1/3 around the change -1/6 per object
    d = np.array([1 + 2 / 6, 1 / 6, 1 / 6, -2 + 2 / 6])
    assert row["se"] == pytest.approx(100 * np.sqrt(4 / 3 * (d ** 2).sum()) / 6, abs=0.01)
    assert out["tasks"]["t2v"]["loss_change"] == pytest.approx(0.25)
    assert out["summary"]["mean_change"] == pytest.approx(-16.67)
    assert out["summary"]["clearly_lower"] == []  # four clips cannot tell 17 points from chance
    assert "accuracy" not in out["tasks"]["t2v"]  # one figure: nothing to pool
    with pytest.raises(Exception, match="num"):
        paired_changes({**base, "num": 8}, tuned)


def test_paired_changes_pools_a_tasks_figures_into_its_accuracy():
    def report(shape, color):
        return {"num": 2, "tasks": {"t2v": {"per_clip": [{"shape": s, "color": c} for s, c in zip(shape, color)]}}}

    base = report([[1, 1], [1, 2]], [[1, 1], [2, 2]])  # 5 of 6 readings right
    tuned = report([[1, 1], [0, 2]], [[0, 1], [2, 2]])  # 3 of 6: one hit fewer in each clip (2 and 4 readings)
    row = paired_changes(base, tuned)["tasks"]["t2v"]["accuracy"]
    assert (row["base"], row["model"], row["change"]) == pytest.approx((83.33, 50.0, -33.33))
    # residuals per clip: -1 + 2/3 and -1 + 4/3, so se = sqrt(2 * (1/9 + 1/9)) / 6
    assert row["se"] == pytest.approx(100 * np.sqrt(4 / 9) / 6, abs=0.01)
    shape = paired_changes(base, tuned)["tasks"]["t2v"]["shape"]  # clip 1: 0 of -1/3, clip 2: -1 of -2/3
    assert shape["change"] == pytest.approx(-33.33) and shape["se"] > 0


def test_eval_against_the_same_model_changes_nothing(debug_model_dir, capsys, tmp_path):
    args = ["eval", "--model", str(debug_model_dir), "--tasks", "t2v,v2a", "--num", "2"]
    assert main([*args, "--per-clip", "--out", str(tmp_path / "base.json")]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert [list(c) for c in saved["tasks"]["t2v"]["per_clip"]] == [["shape", "color", "size", "direction"]] * 2
    assert [c["tone"][1] for c in saved["tasks"]["v2a"]["per_clip"]] == [1, 1]
    for against in (str(debug_model_dir), str(tmp_path / "base.json")):  # a model run again, or the saved JSON
        assert main([*args, "--against", against]) == 0
        report = json.loads(capsys.readouterr().out)
        assert "per_clip" not in report["tasks"]["t2v"]
        rows = report["against"]["tasks"]
        assert rows["t2v"]["color"]["change"] == 0 and rows["t2v"]["color"]["se"] == 0
        assert rows["t2v"]["color"]["base"] == 100 * saved["tasks"]["t2v"]["color"]
        assert rows["v2a"]["loss_change"] == 0 and "tone" in rows["v2a"]
        assert report["against"]["summary"]["figures"] == 5
    assert main([*args, "--against", str(tmp_path / "base.json"), "--sample-seed", "3"]) == 2
    assert "sample_seed" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main([*args, "--against", str(tmp_path / "bad.json")]) == 2
    assert "not the JSON" in capsys.readouterr().err
