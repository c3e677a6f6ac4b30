"""Reference forecasts of Table 2 (noderun.data.spiral_references) against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noderun.data.spiral_references import (last_observation_forecast, linear_forecast, oracle_forecast,
                                            target_rms)
from noderun.data.spirals import SpiralSplit, generate_spirals, rmse

THETA_MIN, THETA_MAX, N_BASE = 6 * np.pi * 100 / 499, 6 * np.pi, 800
FAMILY = dict(a=0.0, b=0.3, theta_min=THETA_MIN, theta_max=THETA_MAX, n_base=N_BASE)


def _test_split(**changes):
    settings = dict(n_spirals=60, n_train=20, n_obs=30, theta_min=THETA_MIN, noise_std=0.3)
    settings.update(changes)
    return generate_spirals(**settings).test


def test_oracle_recovers_noiseless_spirals_of_both_directions_exactly():
    test = _test_split(noise_std=0.0)
    assert 0 < int(test.clockwise.sum()) < len(test.clockwise)
    assert rmse(oracle_forecast(test, **FAMILY), test.extrapolation_truth) < 1e-6


def test_oracle_error_grows_with_noise_shrinks_with_observations_and_stays_far_below_holding_still():
    scores = {(noise, n): rmse(oracle_forecast(split := _test_split(noise_std=noise, n_obs=n), **FAMILY),
                               split.extrapolation_truth)
              for noise in (0.1, 0.3) for n in (30, 100)}
    assert scores[(0.1, 30)] < scores[(0.3, 30)] and scores[(0.3, 100)] < scores[(0.3, 30)]
    test = _test_split()
    assert scores[(0.3, 30)] < 0.1 * rmse(last_observation_forecast(test), test.extrapolation_truth)


def test_oracle_with_the_wrong_family_does_worse():
    test = _test_split(noise_std=0.0)
    wrong = dict(FAMILY, b=0.25)
    assert rmse(oracle_forecast(test, **wrong), test.extrapolation_truth) > 0.05


def _line_split(batch=3, n_steps=10, horizon=5, n_obs=6):
    """Trajectories moving on straight lines x = p + v t, observed without noise."""
    times = torch.arange(n_steps + horizon, dtype=torch.float32) * 0.1
    start, velocity = torch.randn(batch, 1, 2), torch.randn(batch, 1, 2)
    truth = start + velocity * times[None, :, None]
    index = torch.sort(torch.stack([torch.randperm(n_steps)[:n_obs] for _ in range(batch)]), dim=1).values
    return SpiralSplit(times, truth, truth[:, :n_steps].clone(), index, torch.zeros(batch, dtype=torch.bool))


def test_linear_forecast_is_exact_on_straight_lines():
    split = _line_split()
    forecast = linear_forecast(split)
    assert forecast.shape == (3, 5, 2)
    assert torch.allclose(forecast, split.extrapolation_truth.double(), atol=1e-5)


def test_last_observation_is_held_and_target_rms_is_hand_computed():
    split = _line_split()
    held = last_observation_forecast(split)
    assert held.shape == (3, 5, 2)
    last = split.noisy[torch.arange(3), split.obs_index[:, -1]]
    assert torch.equal(held, last[:, None, :].expand(-1, 5, -1))
    expected = math.sqrt(float((split.truth[:, 10:].double() ** 2).mean()))
    assert target_rms(split) == pytest.approx(expected)
