import math

import pytest
import torch

from srpo_trl import direct_align as da


def test_time_shift_and_grid_match_hand_values():
    grid = da.shifted_grid(50, 3.0)
    assert grid.shape == (51,)
    assert grid[0].item() == 1.0 and grid[-1].item() == 0.0
    # S[5]: t = 0.9 -> 3 * 0.9 / (1 + 2 * 0.9) = 2.7 / 2.8
    assert grid[5].item() == pytest.approx(2.7 / 2.8, abs=1e-12)
    assert grid[25].item() == pytest.approx(0.75, abs=1e-12)
    assert torch.equal(da.time_shift(torch.tensor([0.3]), 1.0), torch.tensor([0.3]))


def test_window_levels_and_discounts_follow_the_recipe():
    w = da.TrainingWindow()
    assert w.levels.shape == (1000,)
    assert w.levels[0].item() == pytest.approx(2.7 / 2.8)
    assert w.levels[-1].item() == pytest.approx(0.75)
    assert w.denoise_discount[0].item() == pytest.approx(0.10)
    assert w.denoise_discount[-1].item() == pytest.approx(0.25)
    assert w.inversion_discount[0].item() == pytest.approx(0.30)
    assert w.inversion_discount[-1].item() == pytest.approx(0.01)


@pytest.mark.parametrize(
    "m, gap",
    [
        (5, 5),
        (50, 50),
        (99, 99),
        (100, 100),
        (101, 100),
        (120, 100),
        (400, 100),
        (899, 100),
        (900, 100),
        (901, 99),
        (990, 10),
        (995, 5),
    ],
)
def test_gap_formula(m, gap):
    # int((1 - 0.9) * 1000) is int(99.99999999999998) = 99, so the cap is 100, not 101.
    assert da.TrainingWindow().gap(m) == gap


def test_levels_for_hand_computed_draws():
    w = da.TrainingWindow()
    W = w.levels
    # m = 400: K = 100, m' = 300, r' = W[1000 - 400] = r.
    lv = w.levels_for(400)
    assert (lv.gap, lv.denoise_from, lv.denoise_to) == (100, W[500].item(), W[600].item())
    assert lv.inversion_from == W[700].item() and lv.inversion_to == lv.denoise_to
    assert lv.denoise_discount == w.denoise_discount[400].item()
    assert lv.inversion_discount == w.inversion_discount[300].item()
    # m = 50: K = 50, m - K = 0 < 1 -> m' = 1, r' = W[1000 - 51] is one level noisier than r = W[950].
    lv = w.levels_for(50)
    assert lv.denoise_from == W[900].item() and lv.denoise_to == W[950].item()
    assert lv.inversion_from == W[999].item() and lv.inversion_to == W[949].item()
    assert lv.inversion_to > lv.denoise_to
    assert lv.inversion_discount == w.inversion_discount[1].item()
    # m = 995: K = 5, a = W[0], the noisiest level.
    lv = w.levels_for(995)
    assert lv.denoise_from == W[0].item() and lv.denoise_to == W[5].item()
    with pytest.raises(ValueError, match="m must be in"):
        w.levels_for(4)


def test_sample_m_covers_both_ends_and_nothing_outside():
    w = da.TrainingWindow(num_levels=12)
    g = torch.Generator().manual_seed(0)
    draws = {w.sample_m(g) for _ in range(500)}
    assert draws == set(range(5, 8))


@pytest.mark.parametrize("m", [5, 50, 100, 101, 400, 901, 995])
def test_both_branches_recover_x0_exactly_with_the_oracle_velocity(m):
    g = torch.Generator().manual_seed(m)
    x0, eps = (
        torch.randn(2, 16, 8, generator=g, dtype=torch.float64),
        torch.randn(2, 16, 8, generator=g, dtype=torch.float64),
    )
    lv = da.TrainingWindow().levels_for(m)
    oracle = eps - x0
    for start, end in [(lv.denoise_from, lv.denoise_to), (lv.inversion_from, lv.inversion_to)]:
        x_start = da.add_noise(x0, eps, start)
        x_end = da.euler_step(x_start, oracle, start, end)
        torch.testing.assert_close(x_end, da.add_noise(x0, eps, end))
        torch.testing.assert_close(da.recover_x0(x_end, eps, end), x0)


def test_per_sample_levels_broadcast():
    x0, eps = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    x = da.add_noise(x0, eps, torch.tensor([0.25, 0.5]))
    assert x[0].unique().item() == 0.25 and x[1].unique().item() == 0.5


def test_euler_sample_with_oracle_reaches_x0():
    x0, eps = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    sigmas = da.shifted_grid(7, 3.0).float()
    out = da.euler_sample(lambda x, s, _: eps - x0, eps, sigmas)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_hinge_loss():
    loss = da.hinge_loss(torch.tensor([0.2, 0.7, 1.5]), 0.7)
    torch.testing.assert_close(loss, torch.tensor([0.25, 0.0, 0.0]))
    assert math.isclose(da.hinge_loss(torch.tensor(-0.3), 0.7).item(), 0.5)
