"""Reference forecasts for the spirals' extrapolation window: what Table 2's RMSE means.

Each function takes a noderun.data.spirals.SpiralSplit and returns positions [B, E, 2] on its
extrapolation window, for the same `rmse` as the trained models:

- `oracle_forecast` knows the data's family (the spiral r = a + b*theta, its angle step per time
  step, the range of starting angles) and fits only each trajectory's two unknowns, its starting
  angle and its direction, to the noisy observations by least squares (the maximum-likelihood fit
  under Gaussian noise). Its error comes from the observation noise alone: a floor no model
  trained on these observations can be expected to beat.
- `last_observation_forecast` holds the last observed position: what a model that learnt
  nothing about the motion scores.
- `linear_forecast` extrapolates a straight line fitted to the last observations.

`target_rms` is the root mean square of the targets, the scale a normalised RMSE divides by.
"""

from __future__ import annotations

import math

import torch

# The oracle's search for the starting angle: a global grid, then two local refinements around
# the best point of the previous stage, each `REFINE_POINTS` wide over +-1 spacing of the stage before.
GRID_SPACING = 0.01  # rad: finer than the width of the least-squares basin (about 1 rad)
REFINE_POINTS = 201


def spiral_positions(theta: torch.Tensor, clockwise: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Positions [..., 2] on r = a + b*theta at angles theta [...]; clockwise (broadcast) mirrors y."""
    radius = a + b * theta
    sign = 1.0 - 2.0 * clockwise.to(theta.dtype)
    return torch.stack([radius * torch.cos(theta), sign * radius * torch.sin(theta)], dim=-1)


def oracle_forecast(split, *, a: float, b: float, theta_min: float, theta_max: float, n_base: int) -> torch.Tensor:
    """Least-squares fit of each trajectory's starting angle and direction, then the exact spiral
    on the extrapolation window: [B, E, 2] float64.

    The keyword arguments are the generator's constants (noderun.data.spirals.generate_spirals):
    the angle advances (theta_max - theta_min) / (n_base - 1) per time step, and a trajectory of
    L = S + E steps starts in [theta_min, theta_max - (L - 1) * step].
    """
    step = (theta_max - theta_min) / (n_base - 1)
    length = len(split.times)
    steps = torch.arange(length, dtype=torch.float64)
    values = split.obs_values.double()  # [B, n, 2]
    index = split.obs_index  # [B, n]
    batch = values.shape[0]
    # Sum of squared errors of every (trajectory, candidate start, direction), written with the
    # observations scattered onto the window so that one einsum serves all trajectories:
    # SSE = sum |y|^2 - 2 sum y.p + sum |p|^2 over the observed steps.
    observed = torch.zeros(batch, split.n_steps, dtype=torch.float64)
    observed.scatter_(1, index, 1.0)
    scattered = torch.zeros(batch, split.n_steps, 2, dtype=torch.float64)
    scattered.scatter_(1, index.unsqueeze(-1).expand(-1, -1, 2), values)
    window = steps[: split.n_steps]
    last_start = theta_max - (length - 1) * step
    grid = torch.arange(theta_min, last_start + GRID_SPACING / 2, GRID_SPACING, dtype=torch.float64).clamp(max=last_start)
    best_sse = torch.full((batch,), math.inf, dtype=torch.float64)
    best_start = torch.zeros(batch, dtype=torch.float64)
    best_clockwise = torch.zeros(batch, dtype=torch.bool)
    for clockwise in (False, True):
        direction = torch.tensor(clockwise)
        positions = spiral_positions(grid[:, None] + step * window[None, :], direction, a, b)  # [G, S, 2]
        sse = (-2 * torch.einsum("bsc,gsc->bg", scattered, positions)
               + torch.einsum("bs,gs->bg", observed, (positions**2).sum(-1)))  # without sum |y|^2
        value, arg = sse.min(dim=1)
        better = value < best_sse
        best_sse = torch.where(better, value, best_sse)
        best_start = torch.where(better, grid[arg], best_start)
        best_clockwise = torch.where(better, direction, best_clockwise)
    # Refine the start of the chosen direction: candidates per trajectory now, evaluated at the observations.
    spacing = GRID_SPACING
    offsets = torch.linspace(-1.0, 1.0, REFINE_POINTS, dtype=torch.float64)
    for _ in range(2):
        candidates = (best_start[:, None] + spacing * offsets[None, :]).clamp(theta_min, last_start)  # [B, R]
        theta = candidates[:, :, None] + step * index[:, None, :].double()  # [B, R, n]
        positions = spiral_positions(theta, best_clockwise[:, None, None], a, b)
        sse = ((positions - values[:, None]) ** 2).sum(dim=(2, 3))
        best_start = candidates.gather(1, sse.argmin(dim=1, keepdim=True)).squeeze(1)
        spacing = spacing * 2 / (REFINE_POINTS - 1)
    theta = best_start[:, None] + step * steps[None, split.n_steps :]
    return spiral_positions(theta, best_clockwise[:, None], a, b)


def last_observation_forecast(split) -> torch.Tensor:
    """The last observed (noisy) position, held over the extrapolation window: [B, E, 2]."""
    horizon = len(split.times) - split.n_steps
    return split.obs_values[:, -1:].expand(-1, horizon, -1)


def linear_forecast(split, fraction: float = 0.2) -> torch.Tensor:
    """A least-squares line in time through the last max(2, ceil(fraction * n)) observations,
    extended over the extrapolation window: [B, E, 2] float64."""
    n = split.obs_values.shape[1]
    count = max(2, math.ceil(fraction * n))
    times = split.obs_times[:, -count:].double()  # [B, m]
    values = split.obs_values[:, -count:].double()  # [B, m, 2]
    t_mean = times.mean(dim=1, keepdim=True)
    v_mean = values.mean(dim=1, keepdim=True)
    centred = times - t_mean
    slope = (centred.unsqueeze(-1) * (values - v_mean)).sum(1) / (centred**2).sum(1, keepdim=True)  # [B, 2]
    future = split.extrapolation_times.double()[None, :, None] - t_mean.unsqueeze(-1)  # [B, E, 1]
    return v_mean + slope.unsqueeze(1) * future


def target_rms(split) -> float:
    """Root mean square of the noiseless targets on the extrapolation window."""
    return float(torch.sqrt(torch.mean(split.extrapolation_truth.double() ** 2)))
