"""Latent ODE and RNN baseline for irregularly sampled time series (Section 5 of Chen et al. 2018).

Both models take a batch of trajectories with the same number n of observations at
trajectory-specific times: values [B, n, 2], times [B, n] (sorted), and predict positions
at later times. Batched throughout; the only Python loops are over time steps. Both also
answer the same two calls on a noderun.data.spirals.SpiralSplit, which is all a task uses:
``split_loss(split)`` and ``forecast(split)`` (positions on the split's whole time grid).

LatentODE: a recognition RNN runs backwards in time over (x_i, gap to the next observation)
and gives the mean and log-variance of q(z(t_1)) at the first observation; z(t_1) is sampled
with the reparameterisation trick, the latent ODE dz/dt = f(z) is solved with noderun.ode on
the regular time grid from there, and a decoder maps z(t) to the mean of a Gaussian with fixed
std. Loss: the negative ELBO (N(0, I) prior) plus a suffix-consistency term (see the class).

RNNBaseline: a recurrent cell reads (x_i, t_{i+1} - t_i) and predicts the mean and
log-variance of x_{i+1}; trained on the Gaussian negative log-likelihood with teacher
forcing. To extrapolate it feeds its own mean back with the gap to the next query time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noderun.models.solver import SolverSpec

LOG_2PI = math.log(2 * math.pi)


def make_cell(kind: str, input_size: int, hidden: int) -> nn.Module:
    if kind == "gru":
        return nn.GRUCell(input_size, hidden)
    if kind == "rnn":
        return nn.RNNCell(input_size, hidden, nonlinearity="tanh")
    raise ValueError(f"cell={kind!r} is invalid; valid cells: ['gru', 'rnn']")


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise -log N(x; mean, exp(logvar))."""
    return 0.5 * (LOG_2PI + logvar + (x - mean) ** 2 / logvar.exp())


class LatentDynamics(nn.Module):
    """dz/dt = f(z): `layers` hidden layers of `hidden` ELU units (the paper: one; the public latent-ODE
    example of torchdiffeq: two)."""

    def __init__(self, latent_dim: int, hidden: int, layers: int = 1) -> None:
        super().__init__()
        sizes = [latent_dim] + [hidden] * layers
        parts = []
        for a, b in zip(sizes, sizes[1:]):
            parts += [nn.Linear(a, b), nn.ELU()]
        self.net = nn.Sequential(*parts, nn.Linear(hidden, latent_dim))

    def forward(self, t, z):
        return self.net(z)


class LatentODE(nn.Module):
    """Latent ODE whose latent trajectory starts at each trajectory's first observation.

    The recognition network reads (x_i, gap to the next observation) backwards in time. It sees
    time gaps, never absolute times, so its state after reading observations i..n-1 describes
    the trajectory from t_i on, wherever t_i lies: its output after the whole sequence is
    q(z(t_1)), and its output after each suffix is q(z(t_i) | x_i..x_n-1).

    Loss: the negative ELBO (N(0, I) prior on z(t_1)) plus `consistency` times the suffix
    consistency term sum_i |z(t_i) - mean_i|^2, over the suffixes i = 1..k-1 that hold more than
    `1 - consistency_fraction` of the observations (k = max(2, floor(n * consistency_fraction))).
    z(t_i) is the ODE path from the sampled z(t_1); mean_i is the mean of q(z(t_i) | x_i..).
    The term asks the latent state at a given point of a spiral to be the same whether the
    path reached it or a recognition pass started there. Without it nothing makes the latent paths
    of trajectories that start at different points of the spiral meet, so the dynamics beyond the
    end of each training window, which extrapolation uses, can go untrained (docs/experiments/spirals.md shows the
    runaway extrapolations of the ELBO-only model). It is not in Chen et al. (2018); consistency=0 gives
    their objective.
    """

    def __init__(self, *, obs_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25, dyn_hidden: int = 20,
                 dyn_layers: int = 1,
                 dec_hidden: int = 20, cell: str = "gru", obs_std: float = 0.3, gap_scale: float = 10.0,
                 consistency: float = 10.0, consistency_fraction: float = 0.5,
                 solver: SolverSpec | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.gap_scale = gap_scale  # the time gap enters the recognition cell multiplied by this
        self.rec_cell = make_cell(cell, obs_dim + 1, rec_hidden)
        self.rec_out = nn.Linear(rec_hidden, 2 * latent_dim)
        self.dynamics = LatentDynamics(latent_dim, dyn_hidden, dyn_layers)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim))
        self.obs_logvar = 2 * math.log(obs_std)
        self.consistency = consistency
        self.consistency_fraction = consistency_fraction
        # Weight of the KL term of the ELBO: 1 is the ELBO; a training schedule may anneal it up to 1.
        self.kl_weight = 1.0
        # solver: how the latent ODE is solved (default: dopri5 at 1e-3 / 1e-4, backprop through it)
        self.solver = solver or SolverSpec(rtol=1e-3, atol=1e-4, adjoint=False)

    def encode(self, values: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z(t_i) | x_i..x_n-1) for every i: (mean, logvar), each [B, n, latent].

        values [B, n, obs_dim], times [B, n] sorted. Index 0 is q(z(t_1)) from all observations.
        """
        batch, n, _ = values.shape
        gaps = torch.cat([times[:, 1:] - times[:, :-1], times.new_zeros(batch, 1)], dim=1) * self.gap_scale
        h = values.new_zeros(batch, self.rec_cell.hidden_size)
        outputs = [None] * n
        for i in reversed(range(n)):
            h = self.rec_cell(torch.cat([values[:, i], gaps[:, i : i + 1]], dim=1), h)
            outputs[i] = self.rec_out(h)
        mean, logvar = torch.stack(outputs, dim=1).chunk(2, dim=2)
        return mean, logvar

    def latent_path(self, z_start: torch.Tensor, elapsed: torch.Tensor) -> torch.Tensor:
        """ODE solution [B, len(elapsed), latent] from z_start [B, latent] at elapsed times [S] (from 0)."""
        return self.solver.solve(self.dynamics, z_start, elapsed).transpose(0, 1)

    def _at_steps(self, path: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """path [B, S, latent] at per-trajectory step indices steps [B, m]: [B, m, latent]."""
        return torch.gather(path, 1, steps.unsqueeze(-1).expand(-1, -1, self.latent_dim))

    def consistency_count(self, n: int) -> int:
        """k: suffixes 1..k-1 (those holding more than 1 - consistency_fraction of n) enter the term."""
        return max(2, int(n * self.consistency_fraction))

    def loss(self, values, times, obs_index, grid, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO (its KL term weighted by `kl_weight`) plus the weighted suffix consistency, per
        trajectory (mean over the batch).

        values [B, n, obs_dim] observed at times grid[obs_index]; obs_index [B, n] sorted indices
        into the regular time grid [T] (t_k = t_0 + k dt). generator: draws the reparameterised
        sample of z(t_1) (None: torch's global generator).
        """
        mean, logvar = self.encode(values, times)
        start_mean, start_logvar = mean[:, 0], logvar[:, 0]
        if generator is None:
            noise = torch.randn_like(start_mean)
        else:
            noise = torch.randn(start_mean.shape, generator=generator, device=start_mean.device, dtype=start_mean.dtype)
        z_start = start_mean + noise * (0.5 * start_logvar).exp()
        steps = obs_index - obs_index[:, :1]  # [B, n] grid steps since each trajectory's first observation
        span = int(steps.max()) + 1
        path = self.latent_path(z_start, grid[:span] - grid[0])
        z_obs = self._at_steps(path, steps)  # [B, n, latent]
        decoded = self.decoder(z_obs)
        nll = gaussian_nll(values, decoded, torch.full_like(decoded, self.obs_logvar)).sum(dim=(1, 2))
        kl = 0.5 * (start_mean**2 + start_logvar.exp() - 1 - start_logvar).sum(dim=1)
        loss = nll + self.kl_weight * kl
        if self.consistency > 0:
            k = self.consistency_count(values.shape[1])
            loss = loss + self.consistency * ((z_obs[:, 1:k] - mean[:, 1:k]) ** 2).sum(dim=(1, 2))
        return loss.mean()

    @torch.no_grad()
    def predict(self, values, times, obs_index, grid) -> torch.Tensor:
        """Decoded means [B, T, obs_dim] on the grid [T] from the mean of q(z(t_1)).

        The latent path starts at each trajectory's first observation: grid points before it are NaN.
        """
        mean, _ = self.encode(values, times)
        first = obs_index[:, 0]  # [B]
        path = self.latent_path(mean[:, 0], grid[: len(grid) - int(first.min())] - grid[0])
        steps = torch.arange(len(grid), device=grid.device)[None, :] - first[:, None]  # [B, T]
        decoded = self.decoder(self._at_steps(path, steps.clamp(min=0)))
        return decoded.masked_fill((steps < 0).unsqueeze(-1), float("nan"))


    def split_loss(self, split, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss on a noderun.data.spirals.SpiralSplit (its observation window's grid)."""
        return self.loss(split.obs_values, split.obs_times, split.obs_index, split.times[: split.n_steps],
                         generator=generator)

    @torch.no_grad()
    def forecast(self, split) -> torch.Tensor:
        """Positions [B, S + E, obs_dim] on the split's whole grid: reconstruction, then extrapolation."""
        return self.predict(split.obs_values, split.obs_times, split.obs_index, split.times)


class RNNBaseline(nn.Module):
    def __init__(self, *, obs_dim: int = 2, hidden: int = 25, cell: str = "gru", gap_scale: float = 10.0) -> None:
        super().__init__()
        self.gap_scale = gap_scale  # the time gap enters the cell multiplied by this (order-1 inputs)
        self.cell = make_cell(cell, obs_dim + 1, hidden)
        self.out = nn.Linear(hidden, 2 * obs_dim)

    def _step(self, x, gap, h):
        h = self.cell(torch.cat([x, gap * self.gap_scale], dim=1), h)
        mean, logvar = self.out(h).chunk(2, dim=1)
        return h, x + mean, logvar  # predicts the increment: the mean is relative to the input

    def loss(self, values, times) -> torch.Tensor:
        """Gaussian NLL of each next observation given the ones before (mean over the batch)."""
        h = values.new_zeros(values.shape[0], self.cell.hidden_size)
        gaps = times[:, 1:] - times[:, :-1]
        total = values.new_zeros(values.shape[0])
        for i in range(values.shape[1] - 1):
            h, mean, logvar = self._step(values[:, i], gaps[:, i : i + 1], h)
            total = total + gaussian_nll(values[:, i + 1], mean, logvar).sum(dim=1)
        return total.mean()

    @torch.no_grad()
    def predict(self, values, times, query_times) -> torch.Tensor:
        """Means [B, len(query_times), 2] at query_times (all after the last observation)."""
        h = values.new_zeros(values.shape[0], self.cell.hidden_size)
        n = values.shape[1]
        for i in range(n - 1):
            h, _, _ = self._step(values[:, i], (times[:, i + 1] - times[:, i]).unsqueeze(1), h)
        x, t = values[:, n - 1], times[:, n - 1]
        outputs = []
        for q in query_times:
            h, x, _ = self._step(x, (q - t).unsqueeze(1), h)
            t = torch.full_like(t, float(q))
            outputs.append(x)
        return torch.stack(outputs, dim=1)

    def split_loss(self, split, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss on a noderun.data.spirals.SpiralSplit (deterministic: `generator` is unused)."""
        return self.loss(split.obs_values, split.obs_times)

    @torch.no_grad()
    def forecast(self, split) -> torch.Tensor:
        """Positions [B, S + E, obs_dim] on the split's whole grid: NaN on the observation window,
        which the RNN only reads, then its extrapolation."""
        extrapolation = self.predict(split.obs_values, split.obs_times, split.extrapolation_times)
        window = extrapolation.new_full((extrapolation.shape[0], split.n_steps, extrapolation.shape[2]), float("nan"))
        return torch.cat([window, extrapolation], dim=1)
