"""The shared flow-matching process, against denoisers whose exact velocity is known."""

import pytest
import torch

from videolm.diffusion.process import FlowMatching


def point_mass(target: torch.Tensor):
    """The exact velocity when all data sit at ``target``: x_t = (1-t) target + t n  =>  v = (x_t - target) / t."""
    return lambda x, t, cond: (x - target) / t.view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 1.0), (7, 3.0)])
def test_euler_with_the_exact_velocity_lands_on_the_point_mass(steps, shift):
    target = torch.randn(3, 2, 5)
    x = FlowMatching(shift=shift).sample(point_mass(target), torch.randn(3, 2, 5), steps=steps)
    torch.testing.assert_close(x, target, atol=1e-5, rtol=0)


def test_loss_is_zero_for_the_exact_velocity():
    x0 = torch.randn(4, 3, 6)
    assert FlowMatching().loss(point_mass(x0), x0) < 1e-10
    noise = torch.randn_like(x0)
    wrong = lambda x, t, cond: torch.zeros_like(x)  # noqa: E731
    t = torch.full((4,), 0.5)
    torch.testing.assert_close(FlowMatching().loss(wrong, x0, t=t, noise=noise), (noise - x0).pow(2).mean())


def test_loss_weight_masks_elements():
    x0, noise, t = torch.randn(2, 4), torch.randn(2, 4), torch.full((2,), 0.3)
    bad_second_half = lambda x, t, cond: torch.cat([noise[:, :2] - x0[:, :2], torch.zeros(2, 2)], 1)  # noqa: E731
    weight = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert FlowMatching().loss(bad_second_half, x0, t=t, noise=noise, weight=weight) < 1e-12


def test_cfg_scale_one_is_unguided_and_guidance_extrapolates():
    noise, cond, uncond = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    denoiser = lambda x, t, c: x - c  # noqa: E731
    fm = FlowMatching()
    plain = fm.sample(denoiser, noise, cond, steps=3)
    torch.testing.assert_close(fm.sample(denoiser, noise, cond, steps=3, uncond=uncond, cfg_scale=1.0), plain)
    # one step from t = 1: x = noise - v, with v = v_u + s (v_c - v_u) = noise - (uncond + s (cond - uncond))
    guided = fm.sample(denoiser, noise, cond, steps=1, uncond=uncond, cfg_scale=2.5)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond))
    assert FlowMatching.evaluations(4, 2.5) == 8 and FlowMatching.evaluations(4, 1.0) == 4


def test_timesteps_endpoints_and_shift():
    grid = FlowMatching().timesteps(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = FlowMatching(shift=3.0).timesteps(2)
    torch.testing.assert_close(shifted, torch.tensor([1.0, 0.75, 0.0]))  # 3 * 0.5 / (1 + 2 * 0.5)
    assert torch.all(shifted[:-1] > shifted[1:])
    assert FlowMatching().timesteps(2, t_start=0.5)[0] == 0.5
    with pytest.raises(ValueError):
        FlowMatching().timesteps(0)


def test_sample_t_lies_inside_the_unit_interval():
    t = FlowMatching(logit_mean=0.5, logit_std=2.0).sample_t(1000)
    assert t.shape == (1000,) and bool(((t > 0) & (t < 1)).all())
