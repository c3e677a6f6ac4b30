"""Dense output of tsit5 (Tsitouras's order 4) and dopri8 (order 7, six extra stages).

Three independent checks of the coefficients: every order condition of the continuous
extension (rooted trees, all of them up to the interpolant's order, and the next order fails),
the measured order of the interpolation error of one step, and solves with many output times
against closed-form solutions (accuracy, evaluations and steps against stepping onto every
output time, which is what both methods did before they had an interpolant).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch

from noderun.ode import RUNGE_KUTTA_METHODS, ButcherTableau, odeint, track_stats
from noderun.ode.integrate import SolverOptions, integrate
from noderun.ode.interpolate import DenseOutput
from noderun.ode.rk_step import rk_step
from noderun.ode.trees import rooted_trees, tree_gamma, tree_order

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see tests/conftest.py)


# ---------------------------------------------------------------------------
# Order conditions of b(theta) = sum_p d_p theta^p over rooted trees
# ---------------------------------------------------------------------------


def stage_weights(tab: ButcherTableau):
    """phi(t) -> [Phi_i(t)] over the method's stages and then the extra dense-output stages."""
    rows = [[float(x) for x in r] for r in tab.a] + [[float(x) for x in r] for r in tab.dense_a]
    cache = {}

    def phi(t):
        if t not in cache:
            v = [1.0] * len(rows)
            for child in t:
                u = phi(child)
                v = [x * math.fsum(a * w for a, w in zip(r, u)) for x, r in zip(v, rows)]
            cache[t] = v
        return cache[t]

    return phi


def dense_residual(tab: ButcherTableau, order: int) -> float:
    """Largest |sum_j w_j(theta) Phi_j(t) - theta^rho / gamma| over trees of ``order``, theta in (0, 1]."""
    phi = stage_weights(tab)
    dense = [[float(x) for x in row] for row in tab.dense]
    worst = 0.0
    for theta in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0):
        w = [math.fsum(c * theta ** (p + 1) for p, c in enumerate(row)) for row in dense]
        for t in rooted_trees(order):
            value = math.fsum(wj * pj for wj, pj in zip(w, phi(t)))
            worst = max(worst, abs(value - theta**order / tree_gamma(t)))
    return worst


@pytest.mark.parametrize("name, order", [("dopri5", 4), ("tsit5", 4), ("dopri8", 7)])
def test_interpolant_satisfies_every_order_condition_up_to_its_order(name, order):
    tab = RUNGE_KUTTA_METHODS[name].tableau
    assert tab.dense_order == order
    for n in range(1, order + 1):
        # dopri8's coefficients reach ~2e3 and cancel to weights below 1: round-off ~1e-13.
        assert dense_residual(tab, n) < 1e-11, (n, dense_residual(tab, n))
    # ... and no more: some condition of the next order fails (the order is exactly this).
    assert dense_residual(tab, order + 1) > 1e-6


def test_dopri8_extra_stages_have_stage_order_five():
    # The extra stages are evaluated on lower-order interpolants: their inputs are accurate
    # to stage order 5 (the first two) and 6 (the other four), which the order-7 extension needs.
    tab = RUNGE_KUTTA_METHODS["dopri8"].tableau
    phi = stage_weights(tab)
    s = tab.num_stages
    for e, (c, row) in enumerate(zip(tab.dense_c, tab.dense_a)):
        stage_order = 5 if e < 2 else 6
        for n in range(1, stage_order + 1):
            for t in rooted_trees(n):
                value = math.fsum(float(a) * p for a, p in zip(row, phi(t)))
                assert abs(value - float(c) ** n / tree_gamma(t)) < 1e-11, (e, n)
    assert len(tab.dense_c) == 6 and s == 13


# ---------------------------------------------------------------------------
# Measured order: the interpolation error of one step from the exact solution
# ---------------------------------------------------------------------------

# Nonlinear scalar problems with closed forms (a scalar problem separates all elementary
# differentials, unlike a linear one).
PROBLEMS = {
    "logistic": (lambda t, y: y * (1 - y), lambda t: 1 / (1 + math.exp(-t)), 0.2),
    "riccati_forced": (lambda t, y: torch.cos(t) * y * y, lambda t: 1 / (2 - math.sin(t)), 0.0),
}


def one_step_dense_error(name, problem, h, thetas=(0.2, 0.35, 0.5, 0.65, 0.8)):
    f, exact, t0 = PROBLEMS[problem]
    tab = RUNGE_KUTTA_METHODS[name].tableau
    dense = DenseOutput(tab, extra_stages=True)
    func = lambda t, y: f(torch.tensor(t, dtype=F64), y)  # noqa: E731
    y0 = torch.tensor([exact(t0)], dtype=F64)
    res = rk_step(func, tab, t0, y0, h, func(t0, y0), with_error=False)
    ys = dense.evaluate(y0, h, res.K, res.f1, list(thetas), func=func, t0=t0)
    return max(abs(ys[i, 0].item() - exact(t0 + th * h)) for i, th in enumerate(thetas))


# Step sizes in the asymptotic regime and above round-off.
ORDER_STEPS = {"dopri5": (0.2, 0.1), "tsit5": (0.2, 0.1), "dopri8": (0.6, 0.3)}


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8"])
def test_measured_order_of_the_interpolant(name, problem):
    h1, h2 = ORDER_STEPS[name]
    e1, e2 = one_step_dense_error(name, problem, h1), one_step_dense_error(name, problem, h2)
    slope = math.log(e1 / e2) / math.log(h1 / h2)
    expected = RUNGE_KUTTA_METHODS[name].tableau.dense_order + 1  # local error of an order-q interpolant
    print(f"{name} on {problem}: dense error {e1:.2e} (h={h1}), {e2:.2e} (h={h2}), slope {slope:.2f}")
    assert abs(slope - expected) < 0.6, (e1, e2, slope)


# ---------------------------------------------------------------------------
# Solves with many output times
# ---------------------------------------------------------------------------

# Skew-symmetric A (as in test_solve): y(t) = expm(A t) y0, a rotation.
A = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [0.0, -2.0, 0.0]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)


def linear(t, y):
    return y @ A.T


def exact_linear(t):
    return torch.stack([torch.linalg.matrix_exp(A * ti) @ Y0 for ti in t])


def stepping_tableau(name):
    """The method as it was before it had an interpolant: steps onto every output time."""
    return dataclasses.replace(
        RUNGE_KUTTA_METHODS[name].tableau, dense=None, dense_order=None, dense_c=(), dense_a=(), name=f"{name}_no_dense"
    )


def solve_flat(tab, times, rtol):
    ys, stats = integrate(lambda t, y: linear(t, y), Y0, times, tab, SolverOptions(rtol=rtol, atol=rtol))
    return ys, stats


# rtol at which the interpolating solve is as accurate as stepping onto all 1,000 outputs
# (steps of 0.01 make that solve far more accurate than its tolerance asks: ~4e-12 here).
EQUAL_ERROR_RTOL = {"tsit5": 1e-12, "dopri8": 1e-12}


@pytest.mark.parametrize("name", ["tsit5", "dopri8"])
def test_many_outputs_cost_few_steps(name):
    """1,000 output times on [0, 10]: interpolation against stepping onto each time."""
    times = torch.linspace(0.0, 10.0, 1001, dtype=F64)
    exact = exact_linear(times)
    rtol = 1e-7
    ys_old, old = solve_flat(stepping_tableau(name), times.tolist(), rtol)
    ys_new, new = solve_flat(RUNGE_KUTTA_METHODS[name].tableau, times.tolist(), rtol)
    ys_eq, eq = solve_flat(RUNGE_KUTTA_METHODS[name].tableau, times.tolist(), EQUAL_ERROR_RTOL[name])
    err_old, err_new, err_eq = ((ys - exact).abs().max().item() for ys in (ys_old, ys_new, ys_eq))
    print(
        f"\n{name}, 1000 outputs, rtol=atol={rtol}: stepping onto outputs {old.steps_accepted} steps, "
        f"{old.nfe_forward} NFE, max error {err_old:.2e}; dense output {new.steps_accepted} steps, "
        f"{new.nfe_forward} NFE, max error {err_new:.2e}; dense output at rtol={EQUAL_ERROR_RTOL[name]}: "
        f"{eq.steps_accepted} steps, {eq.nfe_forward} NFE, max error {err_eq:.2e}"
    )
    # Same tolerance: the step sequence no longer depends on the outputs.
    assert old.steps_accepted >= 1000 and new.steps_accepted < 0.11 * old.steps_accepted
    assert new.nfe_forward < old.nfe_forward / 9
    assert err_new < 10 * rtol  # at the tolerance's scale, as any solve at this rtol
    # Equal error: tightening the tolerance until the interpolated solve is as accurate costs
    # at most about as many evaluations (tsit5) or far fewer (dopri8).
    assert err_eq < 1.5 * err_old
    assert eq.nfe_forward < 1.1 * old.nfe_forward if name == "tsit5" else eq.nfe_forward < old.nfe_forward / 5


@pytest.mark.parametrize("name", ["tsit5", "dopri8"])
@pytest.mark.parametrize("rtol", [1e-5, 1e-8, 1e-11])
def test_interpolated_outputs_meet_the_tolerance(name, rtol):
    times = torch.linspace(0.0, 4.0, 97, dtype=F64)
    ys = odeint(linear, Y0, times, method=name, rtol=rtol, atol=rtol)
    err = (ys - exact_linear(times)).abs().max().item()
    assert err < 10 * rtol * 2.5, (rtol, err)  # as test_solve.test_meets_tolerance; |y| <= 2.5 here


@pytest.mark.parametrize("name", ["tsit5", "dopri8"])
def test_interpolation_agrees_with_a_tight_reference_solve(name):
    # A nonlinear problem without a closed form; the reference is dopri8 at 1e-13, stepped onto
    # every output (the method without its interpolant).
    def vdp(t, y):
        return torch.stack([y[..., 1], 2.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)

    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    times = torch.linspace(0.0, 7.63, 301, dtype=F64)
    ref, _ = integrate(
        lambda t, y: vdp(t, y.view(2, 2)).reshape(-1), y0.reshape(-1), times.tolist(), stepping_tableau("dopri8"),
        SolverOptions(rtol=1e-13, atol=1e-13),
    )
    for rtol in (1e-6, 1e-9):
        ys = odeint(vdp, y0, times, method=name, rtol=rtol, atol=rtol)
        err = (ys.reshape(len(times), -1) - ref).abs().max().item()
        assert err < 100 * rtol, (rtol, err)


@pytest.mark.parametrize("name", ["tsit5", "dopri8"])
def test_gradients_through_interpolated_outputs(name):
    # d sum_i y(t_i) / d y0 = sum_i expm(A t_i)^T 1 for the linear problem.
    y0 = Y0.clone().requires_grad_(True)
    times = torch.linspace(0.0, 3.0, 41, dtype=F64)
    ys = odeint(linear, y0, times, method=name, rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(ys.sum(), y0)
    expected = sum(torch.linalg.matrix_exp(A * ti).T @ torch.ones(3, dtype=F64) for ti in times)
    torch.testing.assert_close(g, expected, rtol=1e-7, atol=1e-7)


def test_float32_dense_output_of_dopri8_is_at_float32_precision():
    # The weights are evaluated in float64 (the polynomial coefficients reach ~2e3 and cancel).
    times = torch.linspace(0.0, 4.0, 97)
    ys = odeint(lambda t, y: y @ A.float().T, Y0.float(), times, method="dopri8", rtol=1e-6, atol=1e-6)
    assert (ys.double() - exact_linear(times.double())).abs().max().item() < 1e-5


def test_dopri8_interpolation_costs_six_evaluations_per_step_with_outputs():
    t_two = torch.tensor([0.0, 4.0], dtype=F64)
    t_many = torch.linspace(0.0, 4.0, 97, dtype=F64)
    with track_stats() as two:
        odeint(linear, Y0, t_two, method="dopri8")
    with track_stats() as many:
        odeint(linear, Y0, t_many, method="dopri8")
    assert many.steps_accepted == two.steps_accepted  # the step sequence ignores the outputs
    # the outputs are denser than the steps: every step has some inside
    assert many.nfe_forward == two.nfe_forward + 6 * two.steps_accepted


# ---------------------------------------------------------------------------
# DenseOutput and the tableau fields
# ---------------------------------------------------------------------------


def test_dense_output_without_extra_stages_falls_back_to_cubic_hermite():
    tab = RUNGE_KUTTA_METHODS["dopri8"].tableau
    plain = DenseOutput(tab)
    assert plain.num_extra == 0 and plain.order == 3
    full = DenseOutput(tab, extra_stages=True)
    assert full.num_extra == 6 and full.order == 7
    y0 = torch.ones(2, dtype=F64)
    K = torch.ones(13, 2, dtype=F64)
    with pytest.raises(ValueError, match="needs 6 extra stages: pass func and t0"):
        full.evaluate(y0, 0.1, K, None, [0.5])
    # tsit5's interpolant needs no extra stage: the same either way
    assert DenseOutput(RUNGE_KUTTA_METHODS["tsit5"].tableau).order == 4


def _heun(**overrides):
    kw = dict(
        name="t", c=(0, 1), a=((), (1,)), b=(Fraction(1, 2), Fraction(1, 2)), order=2,
        dense=((1, Fraction(-1, 2)), (0, Fraction(1, 2)), (0, 0)), dense_order=2,
        dense_c=(Fraction(1, 2),), dense_a=((Fraction(1, 4), Fraction(1, 4)),),
    )  # fmt: skip
    kw.update(overrides)
    return ButcherTableau(**kw)


def test_tableau_with_extra_dense_stages_is_validated():
    assert _heun().dense_c == (Fraction(1, 2),)
    with pytest.raises(ValueError, match="row 0 of dense_a must have 2 entries"):
        _heun(dense_a=((Fraction(1, 2),),))
    with pytest.raises(ValueError, match="row 0 of dense_a sums to"):
        _heun(dense_a=((Fraction(1, 4), Fraction(1, 2)),))
    with pytest.raises(ValueError, match="dense_a has 0 rows but dense_c has 1"):
        _heun(dense_a=())
    with pytest.raises(ValueError, match="dense has 2 rows, expected 3"):
        _heun(dense=((1, Fraction(-1, 2)), (0, Fraction(1, 2))))
    with pytest.raises(ValueError, match=r"dense weight 2 at theta=1 is 1.0, expected 0.0"):
        _heun(dense=((1, Fraction(-1, 2)), (0, Fraction(1, 2)), (0, 1)))
