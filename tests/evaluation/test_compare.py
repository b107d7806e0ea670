"""The diffusion stages in `Pipeline`/`videolm generate` (--refine, --backend dit) and `videolm compare`,
on a model folder with an untrained debug LM, refiner and DiT (noise, but every file and error is real)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videolm.core.errors import UsageError
from videolm.core.outputs import MARKER
from videolm.evaluation.compare import CompareConfig, compare, report_markdown, winners, write_report
from videolm.tasks.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(diffusion_model_dir):
    return Pipeline.from_pretrained(diffusion_model_dir)


def _run(*args):
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)


def test_refiner_is_on_by_default_and_can_be_turned_off(pipe):
    on = pipe.generate("t2v", "a small blue square moves up", seed=3)[0]
    off = pipe.generate("t2v", "a small blue square moves up", seed=3, refine=False)[0]
    assert (on.extra["backend"], on.extra["refined"], off.extra["refined"]) == ("ar", True, False)
    assert on.video.shape == off.video.shape == (17, 64, 64, 3)
    assert np.array_equal(on.video, pipe.refine(off.video[None], seed=3)[0])  # the same LM draw, then refined


def test_refine_flag_needs_a_refiner(debug_model_dir):
    with pytest.raises(UsageError, match="no refiner"):
        Pipeline.from_pretrained(debug_model_dir).generate("t2v", "a large red circle moves left", refine=True)


def test_dit_backend_makes_t2v_and_extend_and_refuses_other_tasks(pipe):
    t2v = pipe.generate("t2v", "a large red circle moves left", seed=1, backend="dit", steps=2, refine=False)
    again = pipe.generate("t2v", "a large red circle moves left", seed=1, backend="dit", steps=2, refine=False)
    assert t2v[0].video.shape == (17, 64, 64, 3) and t2v[0].extra["backend"] == "dit"
    assert np.array_equal(t2v[0].video, again[0].video)
    longer = pipe.generate("extend", video=t2v[0].video, seed=2, backend="dit", steps=2, frames=25, refine=False)
    assert longer[0].video.shape == (25, 64, 64, 3)
    with pytest.raises(UsageError, match="DiT baseline does t2v, extend"):
        pipe.generate("inpaint", video=t2v[0].video, backend="dit")


def test_generate_command_runs_the_dit_backend(diffusion_model_dir, tmp_path):
    out = tmp_path / "dit"
    r = _run("generate", "--task", "t2v", "--prompt", "a small green triangle moves right", "--backend", "dit",
             "--steps", "2", "--model", str(diffusion_model_dir), "--out", str(out))
    assert r.returncode == 0, r.stderr
    sample = json.loads((out / "manifest.json").read_text())["samples"][0]
    assert sample["backend"] == "dit" and sample["refined"] is True and (out / "sample_000.mp4").is_file()
    bad = _run("generate", "--task", "v2a", "--backend", "dit", "--model", str(diffusion_model_dir),
               "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "DiT" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_winners_follow_each_metric_direction():
    ar = {"color": 0.5, "fd_probe": 10.0, "seconds_per_clip": 1.0, "psnr": 20.0}
    dit = {"color": 0.9, "fd_probe": 20.0, "seconds_per_clip": 1.0, "psnr": 19.0}
    assert winners(ar, dit) == {"color": "dit", "fd_probe": "ar", "psnr": "ar", "seconds_per_clip": "tie"}


def test_compare_writes_results_report_and_plots(diffusion_model_dir, tmp_path):
    cfg = CompareConfig(model=str(diffusion_model_dir), num=2, batch_size=2, dit_steps=2, samples=2)
    results = compare(cfg)
    for name in ("t2v", "extend"):
        block = results["tasks"][name]
        for system in ("ar", "dit"):
            assert {"color", "fd_probe", "seconds_per_clip", "evaluations_per_clip"} <= set(block[system])
        assert set(block["winner"].values()) <= {"ar", "dit", "tie"}
    # AR: a forward per output id (5 latent frames of 64 codes for t2v, 2 for extend) and the end id, twice
    # with guidance (t2v has text); DiT: 2 steps, twice with guidance
    assert results["tasks"]["t2v"]["ar"]["evaluations_per_clip"] == (5 * 64 + 1) * 2
    assert results["tasks"]["extend"]["ar"]["evaluations_per_clip"] == 2 * 64 + 1
    assert results["tasks"]["t2v"]["dit"]["evaluations_per_clip"] == 4
    assert results["tasks"]["extend"]["dit"]["evaluations_per_clip"] == 2
    assert "psnr" in results["tasks"]["extend"]["ar"] and results["refined"] is True
    assert results["systems"]["ar"]["params_m"] > 0 and results["systems"]["dit"]["params_m"] > 0
    text = report_markdown(results)
    assert "| color (higher is better) |" in text and "wins" in text
    out = write_report(results, tmp_path / "cmp")
    assert {p.name for p in out.iterdir() if p.name != MARKER} == {"results.json", "report.md", "quality_vs_time.png", "attributes.png",
                                               "samples_t2v.png", "samples_extend.png"}
    assert json.loads((out / "results.json").read_text())["num"] == 2


def test_compare_runs_both_systems_at_a_landscape_size_and_another_length(diffusion_model_dir):
    cfg = CompareConfig(model=str(diffusion_model_dir), num=2, batch_size=2, dit_steps=1, samples=2, size="48x80",
                        frames=9)
    with pytest.warns(UserWarning, match="not trained at this size"):
        results = compare(cfg)
    assert (results["size"], results["frames"]) == ("48x80", 9)
    for name in ("t2v", "extend"):
        assert results["_videos"][(name, "ar")].shape[1:] == results["_videos"][(name, "dit")].shape[1:] == (9, 48, 80, 3)
    assert results["tasks"]["t2v"]["ar"]["evaluations_per_clip"] == (3 * 60 + 1) * 2  # 3 latent frames of 6x10 codes


def test_compare_command_errors_are_one_line(debug_model_dir, diffusion_model_dir, tmp_path):
    r = _run("compare", "--model", str(debug_model_dir), "--num", "2", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "no DiT baseline" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run("compare", "--model", str(diffusion_model_dir), "--tasks", "inpaint", "--num", "2",
             "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "compare runs t2v, extend" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_eval_can_score_refined_frames(diffusion_model_dir, debug_model_dir):
    from videolm.evaluation.evaluate import EvalConfig, evaluate

    report = evaluate(EvalConfig(model=str(diffusion_model_dir), tasks=("t2v",), num=2, batch_size=2, refine=True))
    assert report["refined"] is True and "color" in report["tasks"]["t2v"]
    with pytest.raises(UsageError, match="no refiner"):
        evaluate(EvalConfig(model=str(debug_model_dir), tasks=("t2v",), num=2, refine=True))
