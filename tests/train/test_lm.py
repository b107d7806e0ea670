"""`videolm lm fit` end to end on the debug preset over synthetic token shards: outputs, per-task loss,
resume, time budget, samples, the loss itself, and a 2-process DDP run on CPU."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from videolm.cli.main import main
from videolm.core.config import from_dict
from videolm.core.errors import ConfigError
from videolm.core.training import lr_factor
from videolm.lm.data import PackCollate, TaskExample
from videolm.lm.losses import distill_losses, output_logits, output_losses, project_conflict
from videolm.lm.masks import token_losses
from videolm.lm.model import VideoLM, load_videolm
from videolm.tokenizers.vocab import Vocabulary
from videolm.train.lm import LMFitConfig, training_data
from videolm.train.lm_module import LMModule, LMTrainConfig, _scale_row_steps, fit

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "lm" / "debug.yaml"


def _vocab():
    return Vocabulary(text_size=16, video_codes=32, audio_levels=2, audio_codes=8, resolutions=[(32, 32)])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _config(tmp_path: Path, **train) -> Path:
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["train"].update(train)
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("fit") / "run"
    assert main(["lm", "fit", "--config", str(DEBUG), "--shards", str(shards), "--out", str(run)]) == 0
    return run


def test_fit_writes_a_loadable_model_with_its_vocabulary_metrics_per_task_and_a_checkpoint(trained):
    model = VideoLM.from_pretrained(trained / "model")
    vocab = Vocabulary.load(trained / "model")
    assert vocab.tasks == ["t2v", "v2a"] and len(vocab) == len(_vocab()) + 1  # + <frames:5>, the clips' length
    assert vocab.lengths == [5] and vocab.resolutions == [(32, 32)]
    assert model.config.vocab_size == 192 and model.lm_config.d_model == 64  # debug preset, vocab rounded to 64
    rows = _rows(trained)
    assert [r["step"] for r in rows] == [2, 4]
    assert {k for r in rows for k in r if k.startswith("loss_")} == {"loss_t2v", "loss_v2a"}
    for row in rows:
        per_task = [v for k, v in row.items() if k.startswith("loss_")]  # the tasks drawn in the interval
        assert per_task and all(math.isfinite(v) for v in per_task)
        assert min(per_task) - 1e-9 <= row["loss"] <= max(per_task) + 1e-9  # the token-weighted mean of them
        assert row["tokens_per_s"] > 0 and 0 <= row["padding"] < 1
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert json.loads((trained / "run.json").read_text())["entry"] == "lm fit"


def test_rerun_resumes_from_the_last_checkpoint(trained, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = VideoLM.from_pretrained(run / "model").state_dict()
    assert main(["lm", "fit", "--config", str(DEBUG), "--shards", str(shards), "--out", str(run), "--steps", "6"]) == 0
    rows = _rows(run)
    assert [r["step"] for r in rows] == [2, 4, 6]  # continued at step 5, did not start over
    assert rows[2]["lr"] < rows[1]["lr"]  # further down the cosine, not back in warmup
    after = VideoLM.from_pretrained(run / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_time_budget_stops_the_run_and_still_saves_the_model(shards, tmp_path):
    run = tmp_path / "run"
    args = ["lm", "fit", "--config", str(DEBUG), "--shards", str(shards), "--out", str(run), "--max-minutes", "1e-6"]
    assert main(args) == 0
    assert [r["step"] for r in _rows(run)] == [1]  # the step in flight when the minute budget ran out
    assert (run / "model" / "model.safetensors").exists()


def test_loss_goes_down_and_samples_are_written_every_n_steps_in_eval_mode(shards, tmp_path):
    from videolm.data.shards import TokenShards
    from videolm.lm.data import TaskSequences
    from videolm.tasks.base import build_tasks

    data = TokenShards(shards)
    vocab = Vocabulary.load(data.folder)
    tasks = build_tasks(["t2v", "v2a"], vocab)
    calls = []

    def sample(model, step):
        calls.append((step, model.training, torch.is_grad_enabled()))
        (tmp_path / "run" / "samples").mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / "samples" / f"{step}.txt").write_text("ok")

    cfg = LMTrainConfig(steps=12, batch_size=4, row_len=128, lr=1e-2, warmup_steps=2, log_every=4, sample_every=5,
                        accelerator="cpu")
    model = VideoLM.from_lm_config("debug", vocab_size=192)
    fit(model, cfg, TaskSequences(data, tasks, max_len=128), tmp_path / "run", ["t2v", "v2a"], vocab=vocab,
        sample=sample)
    assert calls == [(5, False, False), (10, False, False)]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["10.txt", "5.txt"]
    losses = [r["loss"] for r in _rows(tmp_path / "run")]
    assert losses[-1] < losses[0] - 1.0  # from ~ln(192) toward the entropy of the output ranges


def test_output_losses_equal_the_full_forward_losses():
    torch.manual_seed(0)
    model = VideoLM.from_lm_config("debug").eval()
    items = [TaskExample(torch.randint(3, 256, (n,)), p, task) for n, p, task in [(30, 9, 0), (12, 4, 1), (20, 20, 1)]]
    batch = PackCollate(row_len=40)(items)
    nll, tasks = output_losses(model, batch)  # (N,), (N,)
    rows = batch.rows
    full = token_losses(model.logits(rows.ids, rows.attention_mask(), rows.positions), rows.labels)  # (R, L)
    labelled = rows.labels != -100
    assert torch.allclose(nll, full[labelled], atol=1e-5)
    assert tasks.tolist() == batch.tasks[rows.example[labelled]].tolist()
    assert len(nll) == (30 - 9) + (12 - 4)  # output tokens only (the third example is all prefix)


def test_distill_losses_are_the_kl_to_the_teacher_at_the_chosen_positions_only():
    torch.manual_seed(0)
    student, teacher = VideoLM.from_lm_config("debug").eval(), VideoLM.from_lm_config("debug").eval()
    items = [TaskExample(torch.randint(3, 256, (n,)), p, task) for n, p, task in [(30, 9, 0), (25, 5, 1), (12, 4, 1)]]
    batch = PackCollate(row_len=40)(items)
    rows = batch.rows
    assert rows.ids.shape[0] == 2 and set(batch.tasks[rows.example[0][rows.example[0] >= 0]].tolist()) == {0}
    logits = output_logits(student, rows)  # (N, V)
    nll, tasks = output_losses(student, batch, logits)
    assert torch.allclose(nll, output_losses(student, batch)[0])
    soft = tasks == 1  # task 1 is distilled: only the second row holds it, so the teacher reads that row alone
    kl = distill_losses(teacher, rows, logits, soft)  # (S,)
    labelled = rows.labels[:, 1:] != -100  # (R, L-1)
    mask, positions = rows.attention_mask(), rows.positions
    with torch.no_grad():
        t = teacher.logits(rows.ids, mask, positions)[:, :-1][labelled][soft].log_softmax(-1)  # (S, V)
        s = student.logits(rows.ids, mask, positions)[:, :-1][labelled][soft].log_softmax(-1)
    assert len(kl) == int(soft.sum()) == (25 - 5) + (12 - 4)
    assert torch.allclose(kl, (t.exp() * (t - s)).sum(-1), atol=1e-5) and (kl > 0).all()
    assert torch.allclose(distill_losses(student, rows, logits, soft), torch.zeros(len(kl)), atol=1e-5)  # itself
    logits = logits.detach().requires_grad_(True)
    distill_losses(teacher, rows, logits, soft).sum().backward()
    assert logits.grad[~soft].abs().max() == 0 and logits.grad[soft].abs().max() > 0


def test_distilled_tasks_log_their_kl_and_train_toward_the_teacher(shards, tmp_path):
    """A student trained with v2a distilled from itself (a copy taken before training) stays
    closer to where it was on v2a than one trained on v2a's true tokens (t2v, trained on its
    true tokens either way, moves the shared weights in both)."""
    from videolm.data.shards import TokenShards
    from videolm.lm.data import TaskSequences
    from videolm.tasks.base import build_tasks

    data = TokenShards(shards)
    vocab = Vocabulary.load(data.folder)
    cfg = LMTrainConfig(steps=6, batch_size=4, row_len=128, lr=1e-2, warmup_steps=1, log_every=6, accelerator="cpu")
    probe = PackCollate(128)([TaskSequences(data, build_tasks(["v2a"], vocab), max_len=128)[i] for i in (1, 2, 3, 5)])  # clips with audio
    drift = {}
    for targets in ("truth", "teacher"):
        torch.manual_seed(0)
        model = VideoLM.from_lm_config("debug", vocab_size=192)
        teacher = VideoLM.from_lm_config("debug", vocab_size=192)
        teacher.load_state_dict(model.state_dict())
        with torch.no_grad():
            start = output_logits(model.eval(), probe.rows).log_softmax(-1)
        fit(model.train(), cfg, TaskSequences(data, build_tasks(["t2v", "v2a"], vocab), max_len=128),
            tmp_path / targets, ["t2v", "v2a"], vocab=vocab,
            teacher=teacher if targets == "teacher" else None, distill=["v2a"] if targets == "teacher" else ())
        with torch.no_grad():
            end = output_logits(model.eval(), probe.rows).log_softmax(-1)
        drift[targets] = float((start.exp() * (start - end)).sum(-1).mean())
        logged = _rows(tmp_path / targets)[-1]
        assert ("kl_to_teacher" in logged) == (targets == "teacher") and "loss_v2a" in logged
    assert drift["teacher"] < 0.7 * drift["truth"]  # 0.58 here (0.15-0.58 over five seeds)
    with pytest.raises(ConfigError, match="distill: a2v not among the trained tasks"):
        fit(model, cfg, TaskSequences(data, build_tasks(["t2v"], vocab), max_len=128), tmp_path / "bad", ["t2v"],
            teacher=teacher, distill=["a2v"])


def test_project_conflict_drops_only_the_opposing_component():
    g, m = [torch.tensor([1.0, 2.0]), None, torch.tensor([3.0])], [torch.tensor([-1.0, 0.0]), torch.tensor([5.0]), torch.tensor([-2.0])]
    out, conflict = project_conflict(g, m)  # g.m = -1 - 6 = -7 over |m|^2 = 1 + 4 (the None pair left out)
    assert conflict
    flat = lambda ts: torch.cat([t for t in ts])
    projected = flat(out) - flat(m)  # the new task's part after the projection
    assert torch.allclose(projected[[0, 1, 3]] @ flat(m)[[0, 1, 3]], torch.tensor(0.0), atol=1e-6)
    # g + (1 + 7/5) m where both exist; m alone where g is None
    assert torch.allclose(flat(out), torch.tensor([1 - 12 / 5, 2.0, 5.0, 3 - 2 * 12 / 5]))
    same, conflict = project_conflict([torch.tensor([1.0])], [torch.tensor([2.0])])  # agreeing: the plain sum
    assert not conflict and same[0].item() == 3.0
    assert project_conflict([None], [None])[0] == [None]
    # agreement over the whole model hides a conflict inside one tensor; per tensor it is projected
    g, m = [torch.tensor([1.0, 0.0]), torch.tensor([3.0])], [torch.tensor([-1.0, 0.0]), torch.tensor([2.0])]
    whole, share = project_conflict(g, m)  # dot -1 + 6 > 0: the plain sum
    assert share == 0 and torch.equal(flat(whole), torch.tensor([0.0, 0.0, 5.0]))
    each, share = project_conflict(g, m, per_tensor=True)  # the first pair projected (g + 2m), the second summed
    assert share == 0.5 and torch.equal(flat(each), torch.tensor([-1.0, 0.0, 5.0]))


def test_protected_tasks_get_the_a_gem_gradient():
    """One step by hand: after backward and on_before_optimizer_step the gradient is the
    unprotected task's, projected when it opposes the protected task's, plus the protected one."""
    torch.manual_seed(0)
    model = VideoLM.from_lm_config("debug")
    items = [TaskExample(torch.randint(3, 256, (n,)), p, task) for n, p, task in [(30, 9, 0), (25, 5, 1), (12, 4, 1)]]
    batch = PackCollate(row_len=40)(items)
    params = [p for p in model.parameters() if p.requires_grad]
    nll, tasks = output_losses(model, batch)
    g_new = torch.autograd.grad(nll.masked_fill(tasks == 1, 0).sum() / len(nll), params, retain_graph=True)
    g_old = torch.autograd.grad(nll.masked_fill(tasks == 0, 0).sum() / len(nll), params)
    want, conflict = project_conflict(list(g_new), list(g_old))
    module = LMModule(model, LMTrainConfig(accelerator="cpu"), "unused", ["t2v", "v2a"], protect=["v2a"])
    module.training_step(batch, 0).backward()
    module.on_before_optimizer_step(None)
    for p, w in zip(params, want):
        assert torch.allclose(p.grad, w, atol=1e-6)
    total = torch.cat([p.grad.flatten() for p in params])
    old = torch.cat([g.flatten() for g in g_old])
    plain = torch.cat([(a + b).flatten() for a, b in zip(g_new, g_old)])
    if conflict:  # the new task's part is orthogonal to the old tasks' gradient
        assert torch.allclose((total - old) @ old, torch.tensor(0.0), atol=1e-6 * float(old @ old))
    else:
        assert torch.allclose(total, plain, atol=1e-6)
    assert int(module._stats["projectable"]) == 1 and int(module._stats["projected"]) == int(conflict)
    with pytest.raises(ConfigError, match="at least one trained task must be left unprotected"):
        LMModule(model, LMTrainConfig(), "unused", ["t2v", "v2a"], protect=["v2a", "t2v"])
    with pytest.raises(ConfigError, match="protect: a2v not among the trained tasks"):
        LMModule(model, LMTrainConfig(), "unused", ["t2v", "v2a"], protect=["a2v"])


def test_fast_rows_take_scaled_adamw_steps_and_the_other_rows_take_the_same_steps():
    """A learning rate k times larger for some rows of a matrix: after several AdamW steps (decay
    included) those rows are where a run at k times the rate puts them, the other rows where the
    plain run puts them, bit for bit. (The loss is separable, so each element's gradients, and so
    AdamW's moments, depend on that element alone.)"""
    torch.manual_seed(0)
    start = torch.randn(6, 4)

    def run(lr, scale=None):
        w = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.1)
        if scale:
            _scale_row_steps(opt, w, [1, 4], scale)
        for step in range(5):
            opt.zero_grad()
            ((w - step) ** 2 * torch.arange(1.0, 5.0)).sum().backward()
            opt.step()
        return w.detach()

    plain, fast, fast_everywhere = run(1e-2), run(1e-2, scale=20.0), run(2e-1)
    others = [0, 2, 3, 5]
    assert torch.equal(fast[others], plain[others])
    assert torch.allclose(fast[[1, 4]], fast_everywhere[[1, 4]], atol=1e-5)
    assert not torch.allclose(fast[[1, 4]], plain[[1, 4]], atol=1e-2)


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    cfg = LMTrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1) and lr_factor(500, cfg) == pytest.approx(0.1)
    timed = LMTrainConfig(steps=110, warmup_steps=10, max_minutes=1.0)
    assert lr_factor(20, timed, elapsed_s=60.0) == pytest.approx(0.1)  # the clock ran out first


def test_init_starts_a_second_stage_from_saved_weights_with_a_fresh_schedule(trained, shards, tmp_path, capsys):
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["init"] = str(trained / "model")
    cfg["train"].update(steps=1, lr=0.0, warmup_steps=1)  # lr 0: the one step leaves the weights as they were
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "stage2"
    assert main(["lm", "fit", "--config", str(tmp_path / "stage2.yaml"), "--shards", str(shards),
                 "--out", str(run)]) == 0
    before = VideoLM.from_pretrained(trained / "model").state_dict()
    after = VideoLM.from_pretrained(run / "model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # started from the saved weights, not afresh
    assert [r["step"] for r in _rows(run)] == [1]  # a new run: step 1, not the first stage's 4
    from videolm.train.lm import training_compute

    compute = training_compute(run)  # both stages, as `lm bundle` writes to training.json
    assert [s["steps"] for s in compute["stages"]] == [4, 1] and compute["steps"] == 5
    assert compute["core_hours"] == pytest.approx(sum(s["core_hours"] for s in compute["stages"]), abs=0.011)
    cfg["data"]["tasks"] = {"v2a": 1.0, "t2v": 1.0}  # other task order: other task-token ids
    (tmp_path / "swapped.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    code = main(["lm", "fit", "--config", str(tmp_path / "swapped.yaml"), "--shards", str(shards),
                 "--out", str(tmp_path / "swapped")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another vocabulary" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    cfg["init"] = str(tmp_path / "empty")
    (tmp_path / "nomodel.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["lm", "fit", "--config", str(tmp_path / "nomodel.yaml"), "--shards", str(shards),
                 "--out", str(tmp_path / "nomodel")])
    assert code == 2 and "not a model folder" in capsys.readouterr().err


def test_bad_runs_are_one_clear_line(shards, tmp_path, capsys):
    def error(path, *extra):
        code = main(["lm", "fit", "--config", str(path), "--out", str(tmp_path / "run"), *extra])
        return code, capsys.readouterr().err.strip()

    code, err = error(DEBUG, "--shards", str(tmp_path / "none"))
    assert code == 2 and "no such folder" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, err = error(DEBUG, "--shards", str(tmp_path / "empty"))
    assert code == 2 and "videolm tokenize" in err and len(err.splitlines()) == 1
    code, err = error(_config(tmp_path, row_len=24), "--shards", str(shards))
    assert code == 2 and "raise train.row_len" in err and len(err.splitlines()) == 1
    # found while drawing sequences, after the run began: it still leaves no run folder behind
    code, err = error(_config(tmp_path, row_len=24), "--data.source", "shapes", "--data.num", "4")
    assert code == 2 and "raise train.row_len" in err and not (tmp_path / "run").exists()
    # the config's shards, replaced by --data.source on the command line (and shards given as null)
    for flags in (["--data.source", "shapes"], ["--data.source", "shapes", "--shards", "null"]):
        code, err = error(DEBUG, *flags, "--data.num", "4", "--size", "32x32", "--frames", "5", "--steps", "1")
        assert code == 0, err
        assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["source"] == "shapes"
        shutil.rmtree(tmp_path / "run")
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["data"]["source"] = "shapes"
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(cfg))
    code, err = error(tmp_path / "both.yaml")
    assert code == 2 and "exactly one of shards" in err
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["model"] = {"vocab_size": 64}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(cfg))
    code, err = error(tmp_path / "small.yaml", "--shards", str(shards))
    assert code == 2 and "smaller than the vocabulary" in err


def test_held_out_loss_is_logged_every_n_steps_and_leaves_training_as_it_was(trained, shards, tmp_path, capsys):
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["data"]["val_shards"] = str(shards)  # mechanics only: a real run holds out other clips
    cfg["train"].update(val_every=3, val_sequences=6)
    (tmp_path / "val.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["lm", "fit", "--config", str(tmp_path / "val.yaml"), "--shards", str(shards), "--out", str(run)]) == 0
    rows = _rows(run)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 3, 4]  # before training, every 3 steps, and the final weights
    for row in val:
        per_task = [v for k, v in row.items() if k.startswith("val_loss_")]
        assert {k for k in row if k.startswith("val_loss_")} <= {"val_loss_t2v", "val_loss_v2a"} and per_task
        assert min(per_task) - 1e-9 <= row["val_loss"] <= max(per_task) + 1e-9
    assert val[-1]["val_loss"] < val[0]["val_loss"]  # the training clips themselves: the loss fell
    assert main(["lm", "fit", "--config", str(tmp_path / "val.yaml"), "--shards", str(shards), "--out", str(run)]) == 0
    assert _rows(run) == rows  # a finished run rerun: exported again, nothing logged twice
    assert [r["step"] for r in rows if "val_loss" not in r] == [2, 4]
    ours, plain = VideoLM.from_pretrained(run / "model").state_dict(), VideoLM.from_pretrained(trained / "model").state_dict()
    assert all(torch.equal(ours[k], plain[k]) for k in plain)  # scoring drew nothing from training's random stream
    cfg["data"].pop("val_shards")
    (tmp_path / "noval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["lm", "fit", "--config", str(tmp_path / "noval.yaml"), "--shards", str(shards),
                 "--out", str(tmp_path / "run2")]) == 2
    assert "held-out data (data.val_shards)" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def _can_run_two_processes() -> bool:
    return (os.cpu_count() or 1) >= 2 and torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _can_run_two_processes(), reason="needs 2 CPU cores and torch.distributed with gloo")
def test_two_process_ddp_on_cpu_ends_with_identical_weights_on_both_ranks(shards, tmp_path):
    config = _config(tmp_path, strategy="ddp", devices=2, steps=3, log_every=1)
    exe = Path(sys.executable).with_name("videolm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]
    run = tmp_path / "run"
    out = subprocess.run([*cmd, "lm", "fit", "--config", str(config), "--shards", str(shards), "--out", str(run)],
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("trained LM saved") == 1  # printed by rank 0 only
    rows = _rows(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    (fingerprints,) = [r["rank_weight_fingerprints"] for r in rows if "rank_weight_fingerprints" in r]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    from videolm.lm.losses import weights_fingerprint

    saved = weights_fingerprint(VideoLM.from_pretrained(run / "model")).tolist()
    assert saved == pytest.approx(fingerprints[0], rel=1e-12)  # rank 0 saved the weights both ranks hold


def _sized_shards(folder: Path, height: int, width: int, frames: int, num: int, seed: int) -> Path:
    """``num`` clips of random codes at one clip size, as `videolm tokenize` lays them out."""
    from videolm.data.shards import ShardWriter

    folder.mkdir()
    g = torch.Generator().manual_seed(seed)
    t, n = 1 + (frames - 1) // 4, (height // 8) * (width // 8)
    writer = ShardWriter(folder)
    for i in range(num):
        writer.add({"text": torch.randint(0, 16, (4,), generator=g), "video": torch.randint(0, 32, (t, n), generator=g)},
                   {"caption": f"clip {i}", "height": height, "width": width, "frames": frames, "seed": i})
    vocab = _vocab()
    vocab.add_geometry(height, width, frames)
    vocab.save(folder)
    writer.close({"model": None})
    return folder


def test_a_mixture_of_sizes_and_lengths_trains_in_weighted_buckets_and_records_its_sizes(tmp_path):
    square = _sized_shards(tmp_path / "square", 32, 32, 5, 12, 0)
    wide = _sized_shards(tmp_path / "wide", 32, 48, 9, 12, 1)
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["data"] = {"shards": str(square), "buckets": {"32x32x5": 1.0, "32x48x9": 3.0}, "tasks": {"t2v": 1.0}}
    cfg["train"].update(steps=2, log_every=1, checkpoint_every=2)
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"  # several shard folders on the command line: the flag repeated (in place of the config's)
    assert main(["lm", "fit", "--config", str(path), "--shards", str(square), "--data.shards", str(wide),
                 "--out", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["data"]["shards"] == [str(square), str(wide)]
    vocab = Vocabulary.load(run / "model")  # both sizes' geometry tokens, whatever folder came first
    assert set(vocab.resolutions) == {(32, 32), (32, 48)} and vocab.lengths == [5, 9]
    clip = json.loads((run / "model" / "clip.json").read_text())
    assert (clip["height"], clip["width"], clip["frames"]) == (32, 48, 9)  # the heaviest bucket
    assert sorted(map(tuple, clip["sizes"])) == [(32, 32, 5), (32, 48, 9)]
    assert all(math.isfinite(r["loss"]) for r in _rows(run))


def test_grid_positions_train_on_mixed_sizes_and_a_trained_model_switches_to_them(shards, tmp_path, capsys):
    square = _sized_shards(tmp_path / "square", 32, 32, 5, 12, 0)
    wide = _sized_shards(tmp_path / "wide", 32, 48, 9, 12, 1)

    def run(name: str, **changes) -> int:
        cfg = yaml.safe_load(DEBUG.read_text())
        cfg["data"] = {"shards": [str(square), str(wide)], "buckets": {"32x32x5": 1.0, "32x48x9": 1.0},
                       "tasks": {"t2v": 1.0}, "val_shards": str(wide)}
        cfg["train"].update(steps=2, log_every=1, checkpoint_every=2, val_every=2)
        for key, value in changes.items():
            cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return main(["lm", "fit", "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)])

    assert run("grid", model={"positions": "grid"}) == 0
    assert load_videolm(tmp_path / "grid" / "model").lm_config.positions == "grid"
    rows = _rows(tmp_path / "grid")
    assert all(math.isfinite(r.get("loss", r.get("val_loss"))) for r in rows) and any("val_loss" in r for r in rows)
    # a model trained with sequence positions, continued with grid ones: the same weights to start from
    assert run("seq") == 0
    assert run("switched", init=str(tmp_path / "seq" / "model"), model={"positions": "grid"},
               train={"steps": 1, "lr": 0.0, "warmup_steps": 1, "val_every": 0}) == 0
    before, after = load_videolm(tmp_path / "seq" / "model"), load_videolm(tmp_path / "switched" / "model")
    assert before.lm_config.positions == "sequence" and after.lm_config.positions == "grid"
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in before.state_dict().items())
    # clips whose frames are not one H/8 x W/8 map (the debug shards: 8 codes a frame at 32x32) are refused
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["model"] = {"positions": "grid"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(["lm", "fit", "--config", str(tmp_path / "bad.yaml"), "--shards", str(shards), "--out",
                 str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "one 4x4 map of tokens per latent frame" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_buckets_that_name_no_data_or_data_outside_them_are_config_errors(tmp_path):
    square = _sized_shards(tmp_path / "square", 32, 32, 5, 4, 0)
    for buckets, message in [({"32x32x5": 1.0, "32x48x9": 1.0}, "no shard folder holds clips of 32x48x9"),
                             ({"32x48x9": 1.0}, "fit no bucket"), ({"32x30": 1.0}, "multiples of 8"),
                             ({"32x32x6": 1.0}, r"1 \+ 4k")]:
        cfg = yaml.safe_load(DEBUG.read_text())
        cfg["data"] = {"shards": str(square), "buckets": buckets, "tasks": {"t2v": 1.0}}
        path = tmp_path / "lm.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=message):  # bad names fail as the config is read, the rest on the data
            training_data(from_dict(LMFitConfig, {k: v for k, v in cfg.items() if k != "entry"}).data)
