"""Latent ODE and RNN baseline for irregularly sampled time series (Section 5 of Chen et al. 2018).

Both models take a batch of trajectories with the same number n of observations at
trajectory-specific times: values [B, n, 2], times [B, n] (sorted), and predict positions
at later times. Batched throughout; the only Python loops are over time steps.

LatentODE: a recognition RNN runs backwards in time over (x_i, t_i) and gives the mean and
log-variance of q(z0) at t = 0; z0 is sampled with the reparameterisation trick, the latent
ODE dz/dt = f(z) is solved with noderun.ode on the shared time grid, and a decoder maps
z(t) to the mean of a Gaussian with fixed std. Loss: the negative ELBO (N(0, I) prior).

RNNBaseline: a recurrent cell reads (x_i, t_{i+1} - t_i) and predicts the mean and
log-variance of x_{i+1}; trained on the Gaussian negative log-likelihood with teacher
forcing. To extrapolate it feeds its own mean back with the gap to the next query time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint

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
    """dz/dt = f(z): one hidden layer."""

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ELU(), nn.Linear(hidden, latent_dim))

    def forward(self, t, z):
        return self.net(z)


class LatentODE(nn.Module):
    def __init__(self, *, obs_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25, dyn_hidden: int = 20,
                 dec_hidden: int = 20, cell: str = "gru", obs_std: float = 0.3, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-4, options: dict | None = None, adjoint: bool = False) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.rec_cell = make_cell(cell, obs_dim + 1, rec_hidden)
        self.rec_out = nn.Linear(rec_hidden, 2 * latent_dim)
        self.dynamics = LatentDynamics(latent_dim, dyn_hidden)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim))
        self.obs_logvar = 2 * math.log(obs_std)
        self.solver = dict(method=method, rtol=rtol, atol=atol, options=options or {})
        self.adjoint = adjoint

    def encode(self, values: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z0) from observations, read backwards in time: (mean, logvar), each [B, latent]."""
        h = values.new_zeros(values.shape[0], self.rec_cell.hidden_size)
        for i in reversed(range(values.shape[1])):
            h = self.rec_cell(torch.cat([values[:, i], times[:, i : i + 1]], dim=1), h)
        mean, logvar = self.rec_out(h).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z0: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Decoded means [B, len(grid), obs_dim] of the latent trajectory from z0 at grid[0]."""
        solve = odeint_adjoint if self.adjoint else odeint
        zs = solve(self.dynamics, z0, grid, **self.solver)  # [T, B, latent]
        return self.decoder(zs).transpose(0, 1)

    def loss(self, values, times, obs_index, grid) -> torch.Tensor:
        """Negative ELBO per trajectory (mean over the batch).

        values [B, n, 2] observed at grid[obs_index] ([B, n] indices into grid); grid starts at 0.
        """
        mean, logvar = self.encode(values, times)
        z0 = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        decoded = self.decode(z0, grid)
        at_obs = torch.gather(decoded, 1, obs_index.unsqueeze(-1).expand(-1, -1, decoded.shape[-1]))
        nll = gaussian_nll(values, at_obs, torch.full_like(at_obs, self.obs_logvar)).sum(dim=(1, 2))
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=1)
        return (nll + kl).mean()

    @torch.no_grad()
    def predict(self, values, times, grid) -> torch.Tensor:
        """Decoded trajectory [B, len(grid), 2] from the mean of q(z0)."""
        mean, _ = self.encode(values, times)
        return self.decode(mean, grid)


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
