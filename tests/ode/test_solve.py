"""Accuracy of odeint: closed-form solutions, convergence order, tolerance."""

import math

import pytest
import torch

from noderun.ode import RUNGE_KUTTA_METHODS, odeint

ALL = list(RUNGE_KUTTA_METHODS)
ADAPTIVE = [m for m, s in RUNGE_KUTTA_METHODS.items() if s.adaptive]
F64 = torch.float64

# Skew-symmetric A: y(t) = expm(A t) y0 rotates and conserves |y|.
A = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [0.0, -2.0, 0.0]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)


def linear(t, y):
    return y @ A.T


def exact_linear(t):
    return torch.stack([torch.linalg.matrix_exp(A * ti) @ Y0 for ti in t])


def opts(method, step):
    # Fixed-step methods need a step size to be accurate; adaptive ones control it.
    return {"step_size": step} if not RUNGE_KUTTA_METHODS[method].adaptive else None


@pytest.mark.parametrize("method", ALL)
def test_linear_skew_symmetric(method):
    t = torch.linspace(0.0, 2.0, 6, dtype=F64)
    ys = odeint(linear, Y0, t, method=method, rtol=1e-8, atol=1e-8, options=opts(method, 1e-3))
    assert ys.shape == (6, 3) and ys.dtype == F64
    tol = {"euler": 1e-2, "midpoint": 1e-5}.get(method, 1e-5)
    torch.testing.assert_close(ys, exact_linear(t), rtol=0, atol=tol)


@pytest.mark.parametrize("method", ALL)
def test_time_dependent_scalar_batch(method):
    # y' = cos(t) y  =>  y = y0 exp(sin t); batch shape [2, 2] is preserved.
    y0 = torch.tensor([[1.0, 2.0], [-0.5, 0.1]], dtype=F64)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    ys = odeint(lambda t, y: torch.cos(t) * y, y0, t, method=method, options=opts(method, 1e-3))
    exact = y0 * torch.exp(torch.sin(t)).view(-1, 1, 1)
    assert ys.shape == (3, 2, 2)
    # fehlberg2's error estimate is weak (see TOL_FACTOR below).
    tol = {"euler": 1e-2, "fehlberg2": 2e-4}.get(method, 1e-5)
    torch.testing.assert_close(ys, exact, rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["rk4", "bosh3", "dopri5", "tsit5"])
def test_tuple_state(method):
    # (x, v) harmonic oscillator plus a scalar integral channel.
    def f(t, state):
        x, v, s = state
        return v, -x, x.pow(2).sum().reshape(1)

    x0 = torch.tensor([1.0, 0.0], dtype=F64)
    v0 = torch.tensor([0.0, 1.0], dtype=F64)
    s0 = torch.zeros(1, dtype=F64)
    t = torch.linspace(0.0, 3.0, 4, dtype=F64)
    xs, vs, ss = odeint(f, (x0, v0, s0), t, method=method, options=opts(method, 1e-3))
    assert xs.shape == (4, 2) and ss.shape == (4, 1)
    torch.testing.assert_close(xs[:, 0], torch.cos(t), rtol=0, atol=1e-5)
    torch.testing.assert_close(vs[:, 1], torch.cos(t), rtol=0, atol=1e-5)
    # integral of cos^2 + sin^2 = t
    torch.testing.assert_close(ss[:, 0], t, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_decreasing_time(method):
    t = torch.tensor([2.0, 1.2, 0.0], dtype=F64)
    y2 = exact_linear(t[:1])[0]
    ys = odeint(linear, y2, t, method=method, rtol=1e-8, atol=1e-8, options=opts(method, 1e-3))
    tol = 1e-2 if method == "euler" else 1e-5
    torch.testing.assert_close(ys[-1], Y0, rtol=0, atol=tol)
    torch.testing.assert_close(ys, exact_linear(t), rtol=0, atol=tol)


def test_single_time_returns_initial_state():
    ys = odeint(linear, Y0, torch.tensor([0.3], dtype=F64))
    torch.testing.assert_close(ys, Y0[None])


def test_float32_state_keeps_dtype():
    y0 = Y0.float()
    ys = odeint(lambda t, y: y @ A.float().T, y0, torch.linspace(0, 1, 3), rtol=1e-5, atol=1e-6)
    assert ys.dtype == torch.float32


# Step counts chosen so the error is well above round-off and in the
# asymptotic regime (dopri8 needs very few, large steps).
CONVERGENCE_STEPS = {
    "euler": (50, 100),
    "midpoint": (50, 100),
    "rk4": (10, 20),
    "heun2": (50, 100),
    "heun3": (20, 40),
    "adaptive_heun": (50, 100),
    "fehlberg2": (50, 100),
    "bosh3": (20, 40),
    "dopri5": (8, 16),
    "tsit5": (32, 64),  # small leading error term: asymptotic only at small steps
    "dopri8": (3, 6),
}


@pytest.mark.parametrize("method", ALL)
def test_convergence_order(method):
    """Empirical order from fixed steps (step_size disables step control)."""
    T = 2.0
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, T], dtype=F64)
    exact = math.exp(math.sin(T))
    errors = []
    for n in CONVERGENCE_STEPS[method]:
        ys = odeint(lambda t, y: torch.cos(t) * y, y0, t, method=method, options={"step_size": T / n})
        errors.append(abs(ys[-1].item() - exact))
    n1, n2 = CONVERGENCE_STEPS[method]
    slope = math.log(errors[0] / errors[1]) / math.log(n2 / n1)
    assert abs(slope - RUNGE_KUTTA_METHODS[method].tableau.order) <= 0.5, (errors, slope)


# Global error / tolerance on [0, 2].  With error-per-step control the global
# error is a method-dependent multiple of the tolerance.  fehlberg2's embedded
# estimate is that of its first-order formula, whose leading error constant is
# tiny (1/512), so it underestimates the error of the propagated second-order
# solution by a large, tolerance-independent factor (torchdiffeq's fehlberg2
# behaves the same).
TOL_FACTOR = {"adaptive_heun": 10, "fehlberg2": 1000, "bosh3": 20, "dopri5": 10, "tsit5": 10, "dopri8": 10}


@pytest.mark.parametrize("method", ADAPTIVE)
def test_meets_tolerance(method):
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    exact = exact_linear(t)
    scale = exact.abs().max().item()
    # The low-order methods would need 1e5+ steps below 1e-7.
    rtols = [1e-3, 1e-5, 1e-7] if RUNGE_KUTTA_METHODS[method].tableau.order <= 2 else [1e-3, 1e-5, 1e-7, 1e-10]
    for rtol in rtols:
        ys = odeint(linear, Y0, t, method=method, rtol=rtol, atol=rtol)
        err = (ys - exact).abs().max().item()
        assert err <= TOL_FACTOR[method] * rtol * scale, (rtol, err)


def test_dense_output_matches_stepping_to_every_time():
    """dopri5 interpolates inside steps; that must be as accurate as the solve."""
    t = torch.linspace(0.0, 2.0, 41, dtype=F64)
    ys = odeint(linear, Y0, t, method="dopri5", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ys, exact_linear(t), rtol=0, atol=2e-8)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5", "tsit5"])
def test_gradcheck_through_odeint(method):
    """Backprop through the solver (fixed steps: the step grid must not depend on inputs)."""
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def solve(y0, w):
        return odeint(lambda t, y: torch.tanh(y @ w) * torch.cos(t), y0, t, method=method, options={"step_size": 0.25})

    assert torch.autograd.gradcheck(solve, (y0, w))


def test_gradients_through_adaptive_odeint_match_exact():
    # d y(T) / d y0 = expm(A T) for the linear problem.
    y0 = Y0.clone().requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint(linear, y0, t, rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(ys[-1].sum(), y0)
    expected = torch.linalg.matrix_exp(A).T @ torch.ones(3, dtype=F64)
    torch.testing.assert_close(g, expected, rtol=1e-7, atol=1e-7)
