"""Irregularly sampled 2-D spirals (Section 5.1 of Chen et al. 2018), generated deterministically.

Each trajectory is a stretch of an Archimedean spiral r = a + b*theta, theta in
[theta_min, theta_max], with angle step (theta_max - theta_min) / (n_base - 1) between
consecutive time points and a uniformly drawn starting angle: `n_steps` points form the
observation window and the next `n_extrapolate` points the extrapolation window, both on one regular time grid t_k = k * dt. Half of the trajectories
run counter-clockwise (x = r cos theta, y = r sin theta), half clockwise (the mirror image
y -> -y); each starts at its own random angle. Observations carry Gaussian noise; the
extrapolation targets are the noiseless curve. Per trajectory, `n_obs` distinct time
indices of the observation window are drawn without replacement, so the extrapolation
window never overlaps an observation.

Everything comes from one `numpy.random.Generator(seed)`: the same seed gives the same
arrays, bit for bit, whatever the training seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SpiralSplit:
    """One split. B trajectories, S = n_steps, E = n_extrapolate, n = n_obs.

    times: [S + E] the shared regular grid (observation window, then extrapolation window).
    truth: [B, S + E, 2] noiseless positions on the grid.
    noisy: [B, S, 2] noisy positions on the observation window (what a model may see).
    obs_index: [B, n] sorted indices into the observation window of the observed points.
    clockwise: [B] bool.
    """

    times: torch.Tensor
    truth: torch.Tensor
    noisy: torch.Tensor
    obs_index: torch.Tensor
    clockwise: torch.Tensor

    @property
    def n_steps(self) -> int:
        return self.noisy.shape[1]

    @property
    def obs_times(self) -> torch.Tensor:
        """[B, n] times of the observed points."""
        return self.times[self.obs_index]

    @property
    def obs_values(self) -> torch.Tensor:
        """[B, n, 2] noisy observed positions."""
        return torch.gather(self.noisy, 1, self.obs_index.unsqueeze(-1).expand(-1, -1, 2))

    @property
    def extrapolation_times(self) -> torch.Tensor:
        return self.times[self.n_steps :]

    @property
    def extrapolation_truth(self) -> torch.Tensor:
        """[B, E, 2] noiseless positions on the extrapolation window."""
        return self.truth[:, self.n_steps :]

    def to(self, device) -> "SpiralSplit":
        return SpiralSplit(*(getattr(self, f).to(device) for f in
                             ("times", "truth", "noisy", "obs_index", "clockwise")))

    def subset(self, index) -> "SpiralSplit":
        return SpiralSplit(self.times, self.truth[index], self.noisy[index], self.obs_index[index],
                           self.clockwise[index])


@dataclass(frozen=True)
class Spirals:
    """train: the trajectories the model fits; val: held out from them, for model selection (None
    without a validation split); test: the trajectories Table 2 scores."""

    train: SpiralSplit
    test: SpiralSplit
    val: SpiralSplit | None = None


# How the training trajectories' starting angles are drawn (generate_spirals' `train_coverage`).
TRAIN_COVERAGES = ("forecast", "same")


def generate_spirals(
    *,
    n_spirals: int = 1000,
    n_steps: int = 100,
    n_extrapolate: int = 100,
    n_obs: int = 100,
    n_train: int = 800,
    n_val: int = 0,
    a: float = 0.0,
    b: float = 0.3,
    theta_min: float = 6 * np.pi * 100 / 499,
    theta_max: float = 6 * np.pi,
    n_base: int = 800,
    dt: float = 0.01,
    noise_std: float = 0.3,
    train_coverage: str = "forecast",
    seed: int = 0,
) -> Spirals:
    """The data set of one configuration: see the module docstring for every choice.

    train_coverage: "forecast" draws the training trajectories' starting angles so that their
    observation windows cover every angle of [theta_min, theta_max], so every angle a test forecast
    reaches lies in some training window; "same" draws them as the test trajectories', whose
    observation windows stop n_extrapolate steps short of theta_max. The test trajectories are the
    same either way (the same uniform draws place them).
    n_val: the last n_val of the n_train training trajectories form the validation split.
    """
    if n_spirals < 2 or n_spirals % 2:
        raise ValueError(f"n_spirals={n_spirals} must be an even number >= 2 (half clockwise, half counter-clockwise)")
    if not 1 <= n_obs <= n_steps:
        raise ValueError(f"n_obs={n_obs} must be in [1, n_steps={n_steps}]")
    if not 1 <= n_train < n_spirals:
        raise ValueError(f"n_train={n_train} must be in [1, n_spirals={n_spirals})")
    if not 0 <= n_val < n_train:
        raise ValueError(f"n_val={n_val} must be in [0, n_train={n_train})")
    if train_coverage not in TRAIN_COVERAGES:
        raise ValueError(f"train_coverage={train_coverage!r} is invalid; valid values: {list(TRAIN_COVERAGES)}")
    length = n_steps + n_extrapolate
    if length > n_base:
        raise ValueError(f"n_steps + n_extrapolate = {length} must be <= n_base={n_base}")
    rng = np.random.default_rng(seed)
    step = (theta_max - theta_min) / (n_base - 1)
    # Direction: exactly half clockwise, assigned in a random order.
    clockwise = rng.permutation(np.arange(n_spirals) < n_spirals // 2)
    # Starting angle: uniform (continuous) in [theta_min, theta_max - span], span the angle the
    # trajectory's scored points cover after its start (see train_coverage).
    unit = rng.uniform(size=n_spirals)
    noise = noise_std * rng.standard_normal((n_spirals, n_steps, 2))
    # n_obs distinct indices of the observation window per trajectory (argsort of uniforms
    # is a batched permutation), sorted in time.
    obs_index = np.sort(np.argsort(rng.random((n_spirals, n_steps)), axis=1)[:, :n_obs], axis=1)
    # Split by trajectory: a random permutation, the first n_train for training.
    order = rng.permutation(n_spirals)
    span = np.full(n_spirals, (length - 1) * step)
    if train_coverage == "forecast":
        span[order[:n_train]] = (n_steps - 1) * step
    start = theta_min + unit * (theta_max - span - theta_min)
    theta = start[:, None] + step * np.arange(length)[None, :]  # [B, L]
    radius = a + b * theta
    sign = np.where(clockwise, -1.0, 1.0)[:, None]
    truth = np.stack([radius * np.cos(theta), sign * radius * np.sin(theta)], axis=-1)  # [B, L, 2]
    noisy = truth[:, :n_steps] + noise
    times = torch.arange(length, dtype=torch.float32) * dt

    def split(index: np.ndarray) -> SpiralSplit:
        return SpiralSplit(
            times=times,
            truth=torch.as_tensor(truth[index], dtype=torch.float32),
            noisy=torch.as_tensor(noisy[index], dtype=torch.float32),
            obs_index=torch.as_tensor(obs_index[index], dtype=torch.long),
            clockwise=torch.as_tensor(clockwise[index]),
        )

    fit = n_train - n_val
    return Spirals(train=split(order[:fit]), test=split(order[n_train:]),
                   val=split(order[fit:n_train]) if n_val else None)


def spirals_from_config(dataset, seed: int | None = None) -> Spirals:
    """generate_spirals with the values of a `dataset=spirals` config node; `seed` is the data seed when
    dataset.seed is null (the run's seed)."""
    data_seed = dataset.seed if dataset.seed is not None else seed
    if data_seed is None:
        raise ValueError("dataset.seed is null: pass the run's seed")
    return generate_spirals(
        n_spirals=dataset.n_spirals, n_steps=dataset.n_steps, n_extrapolate=dataset.n_extrapolate,
        n_obs=dataset.n_obs, n_train=dataset.n_train, n_val=dataset.n_val, a=dataset.a, b=dataset.b,
        theta_min=dataset.theta_min, theta_max=dataset.theta_max, n_base=dataset.n_base, dt=dataset.dt,
        noise_std=dataset.noise_std, train_coverage=dataset.train_coverage, seed=data_seed,
    )


def _squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    return (prediction.double() - target.double()) ** 2


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error over every trajectory, time point and coordinate."""
    return float(torch.sqrt(torch.mean(_squared_error(prediction, target))))


def trajectory_rmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] RMSE of each trajectory over its time points and coordinates (float64).

    Its median describes the typical trajectory; `rmse` pools every point, so a few extrapolations
    that run away can dominate it.
    """
    squared = _squared_error(prediction, target)
    return torch.sqrt(torch.mean(squared, dim=tuple(range(1, squared.ndim))))
