"""ODE and augmented ODE (ANODE) regressors of the crossing experiment (Dupont, Doucet & Teh 2019).

The input x (data_dim) is zero-padded to the state h(0) = [x, 0] (augment_dim zeros; none for the
plain ODE), flowed by dh/dt = f(t, h) over [0, 1] with `SolverSpec.solve` (the adjoint by
default), and read out as one number: readout="state", the first coordinate of h(1) (the flow's
own value; data_dim must be 1), or readout="linear", a linear map of the whole h(1) (Dupont et
al.'s ODENet). f is Dupont et al.'s time-dependent MLP: Linear(state + 1 -> hidden), ReLU,
Linear(hidden -> hidden), ReLU, Linear(hidden -> state), with t as an extra input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noderun.models.solver import SolverSpec

READOUTS = ("state", "linear")


class MLPDynamics(nn.Module):
    """f(t, h): [B, dim] -> [B, dim], t entering as an extra input."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        th = torch.cat([t.to(h.dtype).expand(h.shape[0], 1), h], dim=1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(th)))))


class CrossingODE(nn.Module):
    """x [B, data_dim] -> y [B, 1] through the flow of an ODE in data_dim + augment_dim dimensions."""

    def __init__(self, data_dim: int, augment_dim: int = 0, hidden: int = 32, readout: str = "linear",
                 solver: SolverSpec | None = None):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r}; valid: {list(READOUTS)}")
        if readout == "state" and data_dim != 1:
            raise ValueError("readout='state' reads one coordinate: it needs data_dim = 1")
        if augment_dim < 0:
            raise ValueError(f"augment_dim={augment_dim} must be >= 0")
        self.data_dim, self.augment_dim, self.readout_kind = data_dim, augment_dim, readout
        self.state_dim = data_dim + augment_dim
        self.solver = solver or SolverSpec()
        self.func = MLPDynamics(self.state_dim, hidden)
        self.linear = nn.Linear(self.state_dim, 1) if readout == "linear" else None
        self.register_buffer("integration_times", torch.tensor([0.0, 1.0]), persistent=False)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """h(0) = [x, 0]: [B, data_dim] -> [B, data_dim + augment_dim]."""
        return F.pad(x, (0, self.augment_dim)) if self.augment_dim else x

    def flow(self, x: torch.Tensor, adjoint: bool | None = None) -> torch.Tensor:
        """h(1): [B, data_dim] -> [B, data_dim + augment_dim]. adjoint: overrides the solver's (False
        for an evaluation without a graph)."""
        return self.solver.solve(self.func, self.initial_state(x), self.integration_times.to(x.dtype),
                                 adjoint=adjoint)[-1]

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """[B, state_dim] -> [B, 1]: the augmented dimensions are dropped (state) or mapped (linear)."""
        return self.linear(state) if self.linear is not None else state[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.flow(x))

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """h(t) at every time of `times` (from 0): [T, B, state_dim], solved without a graph."""
        return self.solver.solve(self.func, self.initial_state(x), times.to(x.dtype), adjoint=False)
