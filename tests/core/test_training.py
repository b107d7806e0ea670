"""The shared run skeleton: the resumable data order, the metrics log, and exact resume after SIGKILL
for `lm fit` and `tokenizer fit` (bit-identical weights, identical metrics.jsonl)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from videolm.core.errors import UsageError
from videolm.core.training import (
    WALL_CLOCK_FIELDS,
    MetricsLog,
    ResumableSampler,
    SeededItems,
    check_resume,
    item_seed,
)

ROOT = Path(__file__).resolve().parents[2]


def test_a_rerun_resumes_only_a_run_of_the_same_settings(tmp_path):
    run = {"entry": "finetune", "task": "colorize:Colorize", "out": "a", "model": {},
           "data": {"num": 8, "mix": {"t2v": 0.1}}, "train": {"steps": 4, "max_minutes": 11, "lr": 1e-3}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    check_resume(tmp_path, {**run, "task": "reverse:Reverse"})  # no checkpoint: a fresh run, anything goes
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    check_resume(tmp_path, run)
    check_resume(tmp_path, {**run, "out": "b", "train": {**run["train"], "steps": 8, "max_minutes": None}})
    check_resume(tmp_path, {**run, "data": {**run["data"], "stride": 4}})  # not recorded there (an older run)
    check_resume(tmp_path, {**run, "eval": {"num": 64}})  # evaluation only
    (tmp_path / "run.json").write_text(json.dumps({**run, "shards": "tok"}))
    check_resume(tmp_path, {**run, "shards": ["tok"]})  # a flag's list of one is the config's one folder
    (tmp_path / "tok").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({**run, "shards": [str(tmp_path / "tok"), "x"]}))
    other = tmp_path / "sub" / ".." / "tok"  # another spelling of the same folder
    (tmp_path / "sub").mkdir()
    check_resume(tmp_path, {**run, "shards": [str(other), "x"]})
    with pytest.raises(UsageError, match="shards"):  # a different existing folder is another run
        check_resume(tmp_path, {**run, "shards": [str(tmp_path / "sub"), "x"]})
    (tmp_path / "run.json").write_text(json.dumps({**run, "shards": "tok"}))
    for changed, words in [({"task": "reverse:Reverse"}, "task: 'colorize:Colorize' there, 'reverse:Reverse' now"),
                           ({"train": {**run["train"], "lr": 3e-4}}, "train.lr"),
                           ({"data": {**run["data"], "mix": {}}}, "data.mix"),
                           ({"model": {"positions": "grid"}}, "model.positions: unset there, 'grid' now")]:
        with pytest.raises(UsageError, match="other settings") as e:
            check_resume(tmp_path, {**run, **changed})
        assert words in str(e.value)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_but_a_stopped_one_keeps_its_cache(tmp_path):
    from dataclasses import dataclass, field

    from videolm.core.outputs import read_marker
    from videolm.core.training import TrainArgs, starting_run

    @dataclass
    class Cfg:
        out: str
        train: TrainArgs = field(default_factory=TrainArgs)

    for stop, kept in [(ValueError("bad input found late"), False), (KeyboardInterrupt(), True)]:
        out = tmp_path / type(stop).__name__
        with pytest.raises(type(stop)), starting_run(Cfg(str(out)), "dit fit"):
            (out / "latents").mkdir(parents=True)
            (out / "latents" / "clips.safetensors").write_bytes(b"an encoding that took minutes")
            raise stop
        assert out.exists() == kept
        if kept:  # the rerun that resumes it takes the folder as its own
            assert read_marker(out)["command"] == "dit fit"
            with starting_run(Cfg(str(out)), "dit fit"):
                pass


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_visits_every_item_once_per_epoch_and_resumes_where_it_stopped():
    sampler = ResumableSampler(10, batch_size=4, seed=3)
    keys = _take(sampler, 40)
    for epoch in range(4):
        assert sorted(i for i, _ in keys[10 * epoch:10 * epoch + 10]) == list(range(10))
    assert [i for i, _ in keys[:10]] != [i for i, _ in keys[10:20]]  # a new order each epoch
    assert len({s for _, s in keys}) == 40  # every position its own seed
    again = ResumableSampler(10, batch_size=4, seed=3)
    again.start_batch = 3
    assert _take(again, 12) == keys[12:24]
    assert [k for k, _ in _take(ResumableSampler(10, 4, seed=4), 10)] != [k for k, _ in keys[:10]]


def test_sharded_data_is_read_a_window_of_shards_at_a_time_in_a_new_order_each_epoch():
    sizes = [3, 3, 2, 3, 1, 3]  # six shards of 15 items
    starts = [0, 3, 6, 8, 11, 12]
    shard_of = {i: j for j, (a, n) in enumerate(zip(starts, sizes)) for i in range(a, a + n)}
    sampler = ResumableSampler(15, batch_size=5, seed=7, groups=(sizes, 2))
    keys = _take(sampler, 45)
    orders = []
    for epoch in range(3):
        items = [i for i, _ in keys[15 * epoch:15 * epoch + 15]]
        assert sorted(items) == list(range(15))
        shards = [shard_of[i] for i in items]
        windows, current, seen = [], set(), [0] * 6
        for j in shards:  # stretches of two whole shards each, one after the other
            current.add(j)
            seen[j] += 1
            assert len(current) <= 2
            if len(current) == 2 and all(seen[c] == sizes[c] for c in current):
                windows.append(current)
                current = set()
        assert len(windows) == 3 and not current
        orders.append(shards)
    assert orders[0] != orders[1]  # shards in a new order each epoch
    again = ResumableSampler(15, batch_size=5, seed=7, groups=(sizes, 2))
    again.start_batch = 4
    assert _take(again, 10) == keys[20:30]  # resumes exactly
    assert sorted(i for i, _ in _take(ResumableSampler(15, 5, seed=7, groups=(sizes, 6)), 15)) == list(range(15))
    with pytest.raises(ValueError):
        ResumableSampler(16, batch_size=5, groups=(sizes, 2))


def test_ranks_take_disjoint_slices_of_each_global_batch():
    one = _take(ResumableSampler(16, batch_size=2, seed=0), 8)
    ranks = []
    for rank in range(2):
        s = ResumableSampler(16, batch_size=2, seed=0)
        s.rank, s.world = rank, 2
        ranks.append(_take(s, 4))
    assert ranks[0][:2] + ranks[1][:2] + ranks[0][2:] + ranks[1][2:] == one


class _Draws:
    """A dataset whose items are random draws from torch's global generator."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.rand(2)


def test_an_item_is_made_under_its_own_seed_and_leaves_the_global_generator_alone():
    data = SeededItems(_Draws())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = data[(1, 7)], data[(1, 7)]
    assert torch.equal(a, b) and not torch.equal(a, data[(1, 8)])
    assert torch.equal(torch.get_rng_state(), state)
    assert item_seed(0, 5) != item_seed(0, 5, stream=1) and 0 <= item_seed(2**62, 10**12) < 2**63


def test_metrics_are_cut_back_to_the_checkpoint_and_a_torn_line_is_dropped(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (5, 10, 15):
        log.append({"step": step, "loss": 1.0 / step})
    with open(log.path, "a") as f:
        f.write('{"step": 20, "lo')  # a kill mid-line
    assert [r["step"] for r in log.rows()] == [5, 10, 15]
    log.truncate(10)
    assert [r["step"] for r in log.rows()] == [5, 10]


# ------------------------------------------------------------------------------------ SIGKILL


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("videolm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "videolm.cli.main"]


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in MetricsLog(run / "metrics.jsonl").rows()]


def _kill_at(args: list[str], run: Path, step: int, timeout: float = 240) -> None:
    """Start the run, SIGKILL it once its metrics reach ``step``; fail if it finished first."""
    proc = subprocess.Popen([*_cli(), *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and max(_steps(run), default=0) >= step:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before step {step}: {proc.stderr.read()}"


def _same_runs(full: Path, resumed: Path) -> None:
    a, b = load_file(full / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    strip = lambda rows: [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in rows]  # noqa: E731
    rows_a, rows_b = MetricsLog(full / "metrics.jsonl").rows(), MetricsLog(resumed / "metrics.jsonl").rows()
    assert strip(rows_a) == strip(rows_b)
    assert len({r["step"] for r in rows_b if "loss" in r}) == len([r for r in rows_b if "loss" in r])  # none twice


def _both(args: list[str], tmp_path: Path, kill_step: int) -> None:
    """An uninterrupted run beside one killed at ``kill_step`` and resumed: the same end."""
    full = subprocess.Popen([*_cli(), *args, "--out", str(tmp_path / "full")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _kill_at(args, tmp_path / "killed", kill_step)
    killed_at = max(_steps(tmp_path / "killed"))
    resumed = subprocess.run([*_cli(), *args, "--out", str(tmp_path / "killed")], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert full.wait(timeout=300) == 0, full.stderr.read()
    assert killed_at < max(_steps(tmp_path / "full"))
    _same_runs(tmp_path / "full", tmp_path / "killed")


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


def test_lm_fit_killed_and_resumed_ends_as_an_uninterrupted_run(shards, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/lm/debug.yaml").read_text())
    cfg["data"].update(shards=str(shards), text_dropout=0.3)  # the task draws and the dropout both random
    cfg["train"].update(steps=120, log_every=5, checkpoint_every=10)
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    _both(["lm", "fit", "--config", str(tmp_path / "lm.yaml")], tmp_path, kill_step=35)


def test_tokenizer_fit_killed_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/tokenizer/video-debug.yaml").read_text())
    cfg["train"].update(steps=80, log_every=5, val_every=30, checkpoint_every=10, threads=1,
                        video_crop_size=16)  # random crops in every step
    (tmp_path / "tok.yaml").write_text(yaml.safe_dump(cfg))
    _both(["tokenizer", "fit", "--config", str(tmp_path / "tok.yaml")], tmp_path, kill_step=25)
    rows = MetricsLog(tmp_path / "killed" / "metrics.jsonl").rows()
    assert [r["step"] for r in rows if "val_psnr" in r] == [30, 60, 80]


def test_a_checkpoint_is_tensors_and_plain_values(shards, tmp_path):
    """What resume reads back loads with weights_only=True, and holds the random state and position."""
    cfg = yaml.safe_load((ROOT / "configs/lm/debug.yaml").read_text())
    cfg["data"]["shards"] = str(shards)
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*_cli(), "lm", "fit", "--config", str(tmp_path / "lm.yaml"), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["videolm"]["steps"] == cfg["train"]["steps"]
    assert {"torch", "numpy", "python"} <= set(state["videolm"]["rng"])
    assert json.loads((tmp_path / "r" / ".videolm-output.json").read_text())["command"] == "lm fit"
