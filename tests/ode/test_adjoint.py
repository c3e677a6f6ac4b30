"""odeint_adjoint gradients against backprop through odeint and finite differences."""

import pytest
import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint, track_stats

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


class MLPDynamics(nn.Module):
    def __init__(self, dim=2, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _loss(ys):
    return (ys**2).sum() + ys[-1, 0].sum()


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_adjoint_matches_backprop(method):
    func = MLPDynamics()
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    options = {"step_size": 0.01} if method == "rk4" else None
    params = tuple(func.parameters())
    g_ref = torch.autograd.grad(_loss(odeint(func, y0, t, method=method, options=options, **TOL)), (y0,) + params)
    g_adj = torch.autograd.grad(
        _loss(odeint_adjoint(func, y0, t, method=method, options=options, **TOL)), (y0,) + params
    )
    for a, b in zip(g_adj, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("decreasing", [False, True])
def test_adjoint_time_gradient_matches_finite_differences(decreasing):
    func = MLPDynamics()
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    if decreasing:
        t = t.flip(0)
    t.requires_grad_(True)
    (g_t,) = torch.autograd.grad(_loss(odeint_adjoint(func, y0, t, **TOL)), t)
    eps = 1e-6
    with torch.no_grad():
        for i in range(3):
            tp, tm = t.detach().clone(), t.detach().clone()
            tp[i] += eps
            tm[i] -= eps
            fd = (_loss(odeint(func, y0, tp, rtol=1e-12, atol=1e-12)) - _loss(odeint(func, y0, tm, rtol=1e-12, atol=1e-12))) / (2 * eps)
            assert abs(fd.item() - g_t[i].item()) <= 1e-5 * max(1.0, abs(fd.item())), (i, fd, g_t)


def test_adjoint_tuple_state_and_finite_differences_for_y0():
    def f(t, state):
        x, v = state
        return v, -torch.sin(x)

    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    v0 = torch.tensor([0.1, 0.4], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    xs, vs = odeint_adjoint(f, (x0, v0), t, adjoint_params=(), **TOL)
    gx, gv = torch.autograd.grad(xs.sum() + vs[-1].sum(), (x0, v0))
    eps = 1e-6
    for k in range(2):
        d = torch.zeros(2, dtype=F64)
        d[k] = eps
        with torch.no_grad():
            xp, vp = odeint(f, (x0 + d, v0), t, **TOL)
            xm, vm = odeint(f, (x0 - d, v0), t, **TOL)
        fd = ((xp.sum() + vp[-1].sum()) - (xm.sum() + vm[-1].sum())) / (2 * eps)
        assert abs(fd.item() - gx[k].item()) < 1e-6
    assert gv.shape == v0.shape


def test_seminorm_same_gradients_no_more_backward_evaluations():
    func = MLPDynamics(hidden=16)
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    params = tuple(func.parameters())
    grads, nfe = {}, {}
    for norm in ("rms", "seminorm"):
        with track_stats() as stats:
            ys = odeint_adjoint(func, y0, t, rtol=1e-7, atol=1e-8, adjoint_options={"norm": norm})
            grads[norm] = torch.autograd.grad(_loss(ys), (y0,) + params)
        nfe[norm] = stats.nfe_backward
    for a, b in zip(grads["seminorm"], grads["rms"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert nfe["seminorm"] <= nfe["rms"]


def test_forward_keeps_no_graph():
    func = MLPDynamics()
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    ys = odeint_adjoint(func, y0, torch.tensor([0.0, 1.0], dtype=F64))
    assert type(ys.grad_fn).__name__.startswith("_OdeintAdjoint") or ys.grad_fn.next_functions


def test_plain_function_requires_adjoint_params():
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_adjoint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))
