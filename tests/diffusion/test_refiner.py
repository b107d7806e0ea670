"""The refiner: shapes, save -> load, identity at init, determinism, training, and the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from videolm.cli.main import main
from videolm.core.errors import UsageError
from videolm.data.media import read_audio, read_video, write_video
from videolm.data.shapes_data import ShapesDataset
from videolm.diffusion.refiner import GATE_SEED, Refiner, RefinerConfig, gate, refine
from videolm.evaluation.refiner import probe_agreement
from videolm.train.refiner import PairCrops, probe_divergence, refiner_loss

pytestmark = pytest.mark.usefixtures("one_thread")
DEBUG_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refiner" / "debug.yaml"


def trained_looking(seed: int = 0, **overrides) -> Refiner:
    """A debug refiner whose zero-initialized weights (head, and the stem's x_t inputs) have been
    given values, so it does something and depends on the noise."""
    torch.manual_seed(seed)
    model = Refiner(RefinerConfig.from_name("debug", **overrides))
    nn.init.normal_(model.head.weight, std=0.05)
    nn.init.normal_(model.stem.weight, std=0.2)
    return model.eval()


def clips(num: int = 3, frames: int = 5, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (num, frames, size, size, 3), dtype=np.uint8)  # (B, T, H, W, 3)


def test_forward_shape_and_save_load_give_the_same_outputs(tmp_path):
    model = trained_looking()
    x, cond, t = torch.randn(2, 3, 5, 16, 24), torch.randn(2, 3, 5, 16, 24), torch.tensor([0.3, 1.0])
    with torch.no_grad():
        v = model(x, t, cond)
        assert v.shape == x.shape
        model.save_pretrained(tmp_path / "m")
        torch.testing.assert_close(Refiner.from_pretrained(tmp_path / "m")(x, t, cond), v, atol=0, rtol=0)
        model.save_pretrained(tmp_path / "h", dtype="float16")
        torch.testing.assert_close(Refiner.from_pretrained(tmp_path / "h")(x, t, cond), v, atol=2e-2, rtol=2e-2)


def test_untrained_refiner_returns_its_condition():
    frames = clips()
    for bridge in (None, 0.1):
        model = Refiner(RefinerConfig.from_name("debug", bridge=bridge)).eval()
        for steps in (1, 4):
            np.testing.assert_array_equal(refine(model, frames, steps=steps), frames)
    x = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(refine(model, x), x, atol=1e-5, rtol=0)


def test_refine_is_deterministic_per_seed_and_batch_independent():
    model, frames = trained_looking(), clips(4)
    a = refine(model, frames, seed=3, batch_size=4)
    assert a.dtype == np.uint8 and a.shape == frames.shape
    np.testing.assert_array_equal(refine(model, frames, seed=3, batch_size=4), a)
    assert not np.array_equal(refine(model, frames, seed=4, batch_size=4), a)
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)
    batched = refine(model, x, seed=3, batch_size=4)
    torch.testing.assert_close(refine(model, x, seed=3, batch_size=1), batched, atol=1e-5, rtol=0)
    torch.testing.assert_close(refine(model, x[2:3], seed=5), batched[2:3], atol=1e-5, rtol=0)  # clip 2: seed 3 + 2
    assert torch.is_tensor(refine(model, torch.from_numpy(frames))) and batched.abs().max() <= 1


def test_noise_scale_is_a_temperature_zero_is_seed_free():
    model, frames = trained_looking(), clips(2)
    cold = refine(model, frames, seed=3, noise_scale=0.0)
    np.testing.assert_array_equal(refine(model, frames, seed=9, noise_scale=0.0), cold)  # no noise: no seed
    assert not np.array_equal(refine(model, frames, seed=3, noise_scale=1.0), cold)
    np.testing.assert_array_equal(refine(trained_looking(noise_scale=0.0), frames, seed=9), cold)  # config default
    with pytest.raises(UsageError, match="noise scale"):
        refine(model, frames, noise_scale=1.5)


def test_gate_keeps_the_decode_where_the_draws_disagree():
    cond = torch.zeros(1, 3, 2, 12, 12)
    refined = torch.full_like(cond, 0.5)
    other = refined.clone()
    other[0, :, 1, 2, 2] = 0.5 + 20 / 127.5  # 20 levels apart at one pixel of frame 1
    out = gate(cond, refined, other, tau=40, kernel=3)
    torch.testing.assert_close(out[0, :, 0], refined[0, :, 0])  # frame 0: the draws agree
    torch.testing.assert_close(out[0, :, 1, 1:4, 1:4], torch.full((3, 3, 3), 0.25))  # half way, over the 3x3 window
    torch.testing.assert_close(out[0, :, 1, 5:], refined[0, :, 1, 5:])  # outside the window: refined
    torch.testing.assert_close(gate(cond, refined, other, tau=10, kernel=1)[0, :, 1, 2, 2], torch.zeros(3))  # all decode


def test_refine_with_the_gate_is_the_gate_of_two_draws():
    model, frames = trained_looking(noise_scale=0.0, gate_noise=0.5, gate_kernel=3), clips(3)
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)
    plain = refine(model, x, seed=3)
    other = refine(model, x, seed=3 + GATE_SEED, noise_scale=0.5)
    assert not torch.allclose(plain, other)  # the second draw differs from the first
    want = gate(x, plain, other, tau=30, kernel=3)
    torch.testing.assert_close(refine(model, x, seed=3, gate_tau=30), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(refine(model, x, seed=3, gate_tau=30, batch_size=1), want, atol=1e-5, rtol=0)
    rows = []  # batch_size counts the network's rows: with the gate, 2 clips and their 2 second draws
    hook = model.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    torch.testing.assert_close(refine(model, x, seed=3, gate_tau=30, batch_size=4), want, atol=1e-5, rtol=0)
    hook.remove()
    assert rows and max(rows) == 4 and sum(rows) == 2 * 3 * model.config.steps
    gated = trained_looking(noise_scale=0.0, gate_noise=0.5, gate_kernel=3, gate_tau=30)  # the config's default
    torch.testing.assert_close(refine(gated, x, seed=3), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(refine(gated, x, seed=3, gate_tau=0), plain, atol=0, rtol=0)  # 0 turns it off
    moved = lambda y: float((y - x).abs().mean())  # noqa: E731
    assert moved(want) < moved(plain)  # it only ever pulls back toward the decode
    with pytest.raises(UsageError, match="gate tau"):
        refine(model, x, gate_tau=-1)
    for bad in ({"gate_tau": -1.0}, {"gate_noise": 0.0}, {"gate_kernel": 4}):
        with pytest.raises(UsageError, match="gate"):
            RefinerConfig.from_name("debug", **bad)


def test_refine_rejects_sizes_it_cannot_tile():
    model = trained_looking()
    with pytest.raises(UsageError, match="multiples of 4"):
        refine(model, clips(1, size=18))
    with pytest.raises(UsageError, match="uint8"):
        refine(model, clips(1)[0])


def test_a_few_training_steps_lower_the_loss():
    model = Refiner(RefinerConfig.from_name("debug"))
    x0 = torch.from_numpy(clips(4, 3, 8)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (4, 3, 3, 8, 8)
    batch = {"x0": x0, "cond": 0.5 * x0}  # a fixed, learnable degradation

    def loss() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            return float(refiner_loss(model, batch))

    before = loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        refiner_loss(model, batch).backward()
        opt.step()
    assert loss() < 0.7 * before


def test_pair_crops_cut_the_same_window_from_both():
    clean = torch.from_numpy(clips(2, 5, 16))
    decoded = clean.clone()
    decoded[:, :, 4:8, 4:8] = 0  # the tokenizer "got" one patch wrong
    crops = PairCrops(decoded, clean, frames=3, size=8, focus=1.0)
    for i in range(2):
        item = crops[i]
        assert item["cond"].shape == item["x0"].shape == (3, 3, 8, 8)
        assert (item["cond"] != item["x0"]).any()  # centred near the wrong patch
        same = (item["cond"] == item["x0"]).all(0)  # the rest is copied pixel for pixel
        assert same.float().mean() > 0


def test_probe_agreement_counts_every_attribute():
    obj = {"shape": "circle", "color": "red", "size": "small", "direction": "left"}
    a = [{"objects": [obj]}, {"objects": [obj]}, {"objects": [obj]}]
    b = [{"objects": [obj]}, {"objects": [{**obj, "color": "blue"}]}, {"objects": [obj, obj]}]
    agree = probe_agreement(a, b)
    assert agree["all"] == pytest.approx(1 / 3) and agree["count"] == pytest.approx(2 / 3)
    assert agree["color"] == pytest.approx(1 / 3) and agree["shape"] == pytest.approx(2 / 3)


def _reading(seed: int, batch: int = 3) -> dict[str, torch.Tensor]:
    """Random logits in the layout of `Probe.outputs` (7 colours; 3 shapes, 2 sizes, 4 directions)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"count": (2,), "background": (4,), "color": (7,), "shape": (7, 3), "size": (7, 2), "direction": (7, 4)}
    return {k: torch.randn(batch, *v, generator=g) for k, v in shapes.items()}


def test_probe_divergence_rewards_the_same_decisions_not_the_same_doubt():
    ref = _reading(0)
    ref["count"] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 1, 2, 1 objects
    ref["color"] = -torch.ones(3, 7)
    ref["color"][[0, 1, 1, 2], [3, 0, 5, 6]] = 1.0  # their colours
    sure = {k: 10 * v for k, v in ref.items()}  # the same argmax everywhere, confidently
    flipped = {**sure, "shape": sure["shape"].roll(1, -1)}  # every colour's shape read otherwise
    assert probe_divergence(sure, ref) < probe_divergence(ref, ref) < probe_divergence(flipped, ref)
    out = {k: v.clone().requires_grad_() for k, v in ref.items()}
    probe_divergence(out, ref).backward()
    assert out["shape"].grad.abs().sum() > 0 and out["color"].grad.abs().sum() > 0


def test_consistency_stage_starts_from_init_and_trains_through_the_sampler(tmp_path, capsys):
    trained_looking().save_pretrained(tmp_path / "init")
    cfg = yaml.safe_load(DEBUG_CONFIG.read_text())
    cfg.update(init=str(tmp_path / "init"), consistency={"probe": "shapes-64", "weight": 0.5, "steps": 2})
    cfg["data"].update(num=2, crop_frames=None, crop_size=None)
    cfg["train"].update(steps=2, batch_size=2, lr=0.0, ema_decay=0.0, save_dtype="float32")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["refiner", "fit", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    before, after = Refiner.from_pretrained(tmp_path / "init"), Refiner.from_pretrained(tmp_path / "run" / "model")
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)  # lr 0: the init's weights, unchanged
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)

    from videolm.train.refiner import ConsistencyConfig, ConsistencyLoss

    model = trained_looking().train()
    x0 = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    loss = ConsistencyLoss(ConsistencyConfig(probe="shapes-64", steps=2), model.config)(model, {"x0": x0, "cond": x0 * 0.9})
    loss.backward()
    assert model.stem.weight.grad.abs().sum() > 0  # the gradient runs back through both sampler steps

    cfg["data"]["crop_size"] = 16
    (tmp_path / "crops.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["refiner", "fit", "--config", str(tmp_path / "crops.yaml"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "whole clips" in err


def test_cli_fit_eval_apply_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["refiner", "fit", "--config", str(DEBUG_CONFIG), "--out", str(run), "--steps", "2"]) == 0
    assert (run / "model" / "config.json").exists() and (run / "pairs.safetensors").exists()
    capsys.readouterr()
    assert main(["refiner", "eval", "--model", str(run / "model"), "--num", "4", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"psnr_raw", "psnr_refined", "ssim_raw", "ssim_refined", "probe_agreement", "probe_agreement_by",
            "seconds_per_clip", "threads", "steps", "network_evaluations"} <= set(result)
    assert result["clips"] == 4 and result["steps"] == 2 and 0 <= result["probe_agreement"] <= 1

    clip = ShapesDataset(1)[0]
    video = clip["video"]  # (17, 64, 64, 3)
    write_video(tmp_path / "in.mp4", video, audio=clip["audio"])
    capsys.readouterr()
    assert main(["refiner", "apply", "--video", str(tmp_path / "in.mp4"), "--model", str(run / "model"),
                 "--out", str(tmp_path / "out.mp4")]) == 0
    assert read_video(tmp_path / "out.mp4").shape == video.shape
    assert "its sound is kept" in json.loads(capsys.readouterr().out)["sound"]  # the sound goes with the pictures
    assert abs(len(read_audio(tmp_path / "out.mp4")) - len(clip["audio"])) < 2000


def test_cli_bad_inputs_are_one_line_usage_errors(tmp_path, capsys):
    model = trained_looking()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "empty").mkdir()
    write_video(tmp_path / "odd.mp4", clips(1, 3, 18)[0])
    cases = [
        (["refiner", "apply", "--video", str(tmp_path / "odd.mp4"), "--model", str(tmp_path / "m"),
          "--out", str(tmp_path / "o.mp4")], "multiples of 4"),
        (["refiner", "eval", "--model", str(tmp_path / "missing"), "--num", "2"], "missing"),
        (["refiner", "apply", "--video", str(tmp_path / "odd.mp4"), "--model", str(tmp_path / "m" / "empty"),
          "--out", str(tmp_path / "o.mp4")], "no refiner"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()
