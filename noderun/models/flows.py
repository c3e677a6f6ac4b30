"""Planar normalizing flows, discrete (Rezende & Mohamed 2015) and continuous (Chen et al. 2018).

PlanarNF: K layers z <- z + û h(wᵀz + b), h = tanh, with û constrained so that wᵀû >= -1
(every layer invertible); log|det| = log|1 + ûᵀ h'(wᵀz + b) w| by the matrix determinant lemma.

PlanarCNF: dz/dt = Σₙ σₙ(t) uₙ h(wₙᵀz + bₙ), n = 1..M (eq. 9-10 of Chen et al.), with
(wₙ, uₙ, bₙ, gate logit) produced from t by a small hypernetwork and σₙ(t) = sigmoid(.) ∈ (0, 1).
The instantaneous change of variables (Theorem 1) gives d log p/dt = -tr(∂f/∂z), which for
this f is the sum of M scalars σₙ h'(wₙᵀz + bₙ) uₙᵀwₙ (exact, O(M)); the Hutchinson estimator
εᵀ(∂f/∂z)ε (Rademacher ε, drawn once per solve) is an unbiased alternative. Both are
solved with noderun.ode, gradients by the adjoint method.

Directions: the CNF maps base samples (t = 0) to data (t = t_end). The NF's `direction` says
which way its layers run: "generative" (density matching: samples of N(0, I) pushed through
the layers) or "normalizing" (maximum likelihood: data -> base, where its density is exact;
samples come from inverting each layer, a monotone scalar equation solved by bisection).

Both flows answer the same three questions, so a task never asks which flow it holds:

- ``sample(z0) -> (x, log q(x))``: base samples z0 [N, d] to data-side samples and their log density;
- ``log_prob(x) -> log q(x)`` [N];
- ``snapshots(z0, fractions) -> [S, N, d]``: samples along the flow (the CNF at each fraction of its
  time; the NF, which has no time, its final samples only, S = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from noderun.models.solver import SolverSpec

LOG_2PI = math.log(2 * math.pi)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)


# ------------------------------------------------------------------------ planar NF


NF_DIRECTIONS = ("generative", "normalizing")


class PlanarNF(nn.Module):
    """K planar layers in dimension `dim`, run in `direction` (see the module docstring)."""

    def __init__(self, layers: int, dim: int = 2, init_scale: float = 0.1, direction: str = "generative"):
        super().__init__()
        if direction not in NF_DIRECTIONS:
            raise ValueError(f"direction={direction!r}; valid: {list(NF_DIRECTIONS)}")
        self.layers, self.dim, self.direction = layers, dim, direction
        self.w = nn.Parameter(torch.randn(layers, dim) * init_scale)
        self.u = nn.Parameter(torch.randn(layers, dim) * init_scale)
        self.b = nn.Parameter(torch.zeros(layers))

    def u_hat(self) -> torch.Tensor:
        """û = u + (m(wᵀu) - wᵀu) w / |w|², m(x) = -1 + softplus(x): guarantees wᵀû > -1."""
        wu = (self.w * self.u).sum(-1, keepdim=True)
        m = -1 + F.softplus(wu)
        return self.u + (m - wu) * self.w / self.w.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(z), log|det ∂f/∂z|) for z [N, dim]."""
        u = self.u_hat()
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for k in range(self.layers):
            h = torch.tanh(z @ self.w[k] + self.b[k])  # [N]
            # det(I + û ψᵀ) = 1 + ψᵀû, ψ = h'(wᵀz + b) w
            logdet = logdet + torch.log((1 + (1 - h.pow(2)) * (self.w[k] @ u[k])).abs() + 1e-12)
            z = z + h[:, None] * u[k]
        return z, logdet

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, iterations: int = 80) -> torch.Tensor:
        """f⁻¹(y) layer by layer: with a = wᵀx, wᵀy = a + (wᵀû) tanh(a + b) is monotone in a."""
        u = self.u_hat()
        for k in reversed(range(self.layers)):
            w, b, c = self.w[k], self.b[k], self.w[k] @ u[k]
            s = y @ w
            low, high = s - c.abs() - 1, s + c.abs() + 1
            for _ in range(iterations):
                mid = (low + high) / 2
                above = mid + c * torch.tanh(mid + b) > s
                high = torch.where(above, mid, high)
                low = torch.where(above, low, mid)
            a = (low + high) / 2
            y = y - torch.tanh(a + b)[:, None] * u[k]
        return y

    def sample(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, log q(x)) for base samples z0 [N, dim]."""
        if self.direction == "generative":
            x, logdet = self(z0)
            return x, standard_normal_logprob(z0) - logdet
        x = self.inverse(z0)
        return x, self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) [N] for x [N, dim]."""
        if self.direction == "normalizing":
            z, logdet = self(x)
            return standard_normal_logprob(z) + logdet
        z0 = self.inverse(x)  # generative: log q(x) = log N(z0) - log|det|(z0), z0 = f⁻¹(x)
        _, logdet = self(z0)
        return standard_normal_logprob(z0) - logdet

    @torch.no_grad()
    def snapshots(self, z0: torch.Tensor, fractions) -> torch.Tensor:
        """The final samples only, [1, N, dim]: a discrete flow has no intermediate times."""
        return self.sample(z0)[0][None]


# ----------------------------------------------------------------------- planar CNF


class HyperNetwork(nn.Module):
    """t -> (W [M, d], U [M, d], B [M], σ [M]): 1 -> hidden -> hidden -> (2 M d + 2 M), tanh."""

    def __init__(self, width: int, dim: int = 2, hidden: int = 32):
        super().__init__()
        self.width, self.dim = width, dim
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * width * dim + 2 * width))

    def forward(self, t: torch.Tensor):
        p = self.net(t.reshape(1, 1)).reshape(-1)
        md = self.width * self.dim
        w = p[:md].reshape(self.width, self.dim)
        u = p[md : 2 * md].reshape(self.width, self.dim)
        b = p[2 * md : 2 * md + self.width]
        gate = torch.sigmoid(p[2 * md + self.width :])
        return w, u, b, gate


class PlanarCNFDynamics(nn.Module):
    """dz/dt = Σₙ σₙ(t) uₙ tanh(wₙᵀz + bₙ) and its divergence (exact or Hutchinson)."""

    def __init__(self, width: int, dim: int = 2, hidden: int = 32):
        super().__init__()
        self.hyper = HyperNetwork(width, dim, hidden)

    def velocity_and_trace(self, t, z, noise: torch.Tensor | None = None):
        w, u, b, gate = self.hyper(t)
        h = torch.tanh(z @ w.T + b)  # [N, M]
        f = (h * gate) @ u  # [N, d]
        slope = (1 - h.pow(2)) * gate  # σₙ h'(wₙᵀz + bₙ), [N, M]
        if noise is None:
            trace = slope @ (w * u).sum(-1)  # Σₙ σₙ h' uₙᵀwₙ
        else:
            trace = (slope * (noise @ w.T) * (noise @ u.T)).sum(-1)  # εᵀ(Σₙ σₙ h' uₙ wₙᵀ)ε
        return f, trace

    def velocity(self, t, z):
        return self.velocity_and_trace(t, z)[0]


class _Augmented(nn.Module):
    """(z, l) -> (f, -tr ∂f/∂z): the state of the instantaneous change of variables."""

    def __init__(self, dynamics: PlanarCNFDynamics, noise: torch.Tensor | None):
        super().__init__()
        self.dynamics, self.noise = dynamics, noise

    def forward(self, t, state):
        z, _ = state
        f, trace = self.dynamics.velocity_and_trace(t, z, self.noise)
        return f, -trace


class PlanarCNF(nn.Module):
    """Planar CNF of width M over [0, t_end], solved as `solver` says (default: dopri5 at 1e-5, adjoint)."""

    def __init__(self, width: int, dim: int = 2, hidden: int = 32, t_end: float = 1.0, trace: str = "exact",
                 solver: SolverSpec | None = None):
        super().__init__()
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace={trace!r}; valid: ['exact', 'hutchinson']")
        self.width, self.dim, self.t_end, self.trace = width, dim, float(t_end), trace
        self.dynamics = PlanarCNFDynamics(width, dim, hidden)
        self.solver = solver or SolverSpec(rtol=1e-5, atol=1e-5)

    def _noise(self, z: torch.Tensor) -> torch.Tensor | None:
        if self.trace == "exact":
            return None
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1  # Rademacher

    def _solve(self, z, logp, t0: float, t1: float):
        func = _Augmented(self.dynamics, self._noise(z))
        t = torch.tensor([t0, t1], dtype=z.dtype, device=z.device)
        # without a graph there is nothing for the adjoint to differentiate: a plain solve
        adjoint = None if torch.is_grad_enabled() else False
        zs, ls = self.solver.solve(func, (z, logp), t, adjoint=adjoint, adjoint_params=tuple(self.parameters()))
        return zs[-1], ls[-1]

    def sample(self, z0: torch.Tensor, logp0: torch.Tensor | None = None):
        """Push base samples z0 through the flow: (z(t_end), log q(z(t_end)))."""
        if logp0 is None:
            logp0 = standard_normal_logprob(z0)
        return self._solve(z0, logp0, 0.0, self.t_end)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x): solve back to t = 0; log p(x) = log N(z(0)) - ∫₀ᵀ tr ∂f/∂z dt."""
        z0, delta = self._solve(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), self.t_end, 0.0)
        return standard_normal_logprob(z0) - delta

    forward = sample

    @torch.no_grad()
    def snapshots(self, z0: torch.Tensor, fractions) -> torch.Tensor:
        """Samples at the given fractions of the flow time: [len(fractions), N, dim]."""
        times = [0.0] + [float(f) * self.t_end for f in fractions]
        t = torch.tensor(times, dtype=z0.dtype, device=z0.device)
        zs = self.solver.solve(lambda tt, z: self.dynamics.velocity(tt, z), z0, t, adjoint=False)
        return zs[1:]
