"""Solve statistics and error handling."""

import pytest
import torch
from torch import nn

from noderun.ode import ODESolverError, last_solve_stats, odeint, odeint_adjoint, track_stats


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t, y):
        return self.lin(y)


def test_fixed_step_counts_are_exact_and_do_not_carry_over():
    func = Linear()
    y0 = torch.randn(5, 3)
    t = torch.tensor([0.0, 0.5, 1.0])  # step 0.1 -> 5 + 5 steps
    for _ in range(3):
        with track_stats() as stats:
            loss = odeint_adjoint(func, y0, t, method="rk4", options={"step_size": 0.1}).sum()
            loss.backward()
        assert stats.nfe_forward == 4 * 10
        assert stats.nfe_backward == 4 * 10  # same grid backwards, t needs no gradient
        assert stats.steps_accepted == 10 and stats.steps_rejected == 0
        assert stats.backward_steps_accepted == 10


def test_plain_odeint_has_no_backward_evaluations_and_nesting():
    func = Linear()
    y0 = torch.randn(2, 3)
    t = torch.tensor([0.0, 1.0])
    with track_stats() as outer:
        with track_stats() as inner:
            odeint(func, y0, t, method="midpoint", options={"step_size": 0.25}).sum().backward()
        odeint(func, y0, t, method="euler")
    assert inner.nfe_forward == 8 and inner.nfe_backward == 0
    assert outer.nfe_forward == 9 and outer.num_solves == 2
    assert last_solve_stats().nfe_forward == 1


def test_adaptive_counts_steps():
    with track_stats() as stats:
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 5.0]), method="dopri5")
    # FSAL: 6 new evaluations per step, plus k1 and the initial-step probe.
    assert stats.nfe_forward == 6 * (stats.steps_accepted + stats.steps_rejected) + 2


def test_unknown_method_and_option():
    y0, t = torch.ones(1), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="unknown method 'rk45'; valid methods: euler, midpoint, rk4"):
        odeint(lambda t, y: y, y0, t, method="rk45")
    with pytest.raises(ValueError, match="unknown option.*'foo'.*valid options: .*max_num_steps"):
        odeint(lambda t, y: y, y0, t, options={"foo": 1})
    with pytest.raises(ValueError, match="valid options: step_size"):
        odeint(lambda t, y: y, y0, t, method="rk4", options={"first_step": 0.1})


@pytest.mark.parametrize("t", [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0, 0.0, 0.5]])
def test_non_monotone_t_raises(t):
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(lambda t, y: y, torch.ones(1), torch.tensor(t))


def test_bad_t_shape_raises():
    with pytest.raises(ValueError, match="1-D"):
        odeint(lambda t, y: y, torch.ones(1), torch.zeros(2, 2))


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5", "dopri8"])
def test_blow_up_stops_with_solver_error(method):
    # y' = y^2, y(0) = 1 has y = 1 / (1 - t): singular at t = 1.
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ODESolverError, match="t="):
        odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), method=method,
               options={"max_num_steps": 5000})


def test_max_num_steps_raises():
    with pytest.raises(ODESolverError, match="max_num_steps=10"):
        odeint(lambda t, y: torch.cos(50 * t) * y, torch.ones(1), torch.tensor([0.0, 10.0]), options={"max_num_steps": 10})


def test_fixed_step_overflow_raises():
    with pytest.raises(ODESolverError, match="non-finite"):
        odeint(lambda t, y: y**2, torch.ones(1), torch.tensor([0.0, 2.0]), method="euler", options={"step_size": 0.01})
