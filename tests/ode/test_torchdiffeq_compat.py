"""noderun.ode as a drop-in for torchdiffeq 0.2.5: signatures, every method name, the t-gradient.

torchdiffeq is used only as a reference (it is a test dependency, never imported by the library).
"""

from __future__ import annotations

import inspect
import sys
import warnings

import pytest
import torch
from torch import nn

import noderun.ode.adjoint
import noderun.ode.solve
from noderun.ode import METHODS, RUNGE_KUTTA_METHODS, ODESolverError, get_method, odeint, odeint_adjoint, track_stats
from noderun.ode import methods as methods_module

torchdiffeq = pytest.importorskip("torchdiffeq")
from torchdiffeq._impl.odeint import SOLVERS  # noqa: E402

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see tests/conftest.py)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", ["odeint", "odeint_adjoint"])
def test_signatures_equal_torchdiffeqs(name):
    ours = {"odeint": odeint, "odeint_adjoint": odeint_adjoint}[name]
    assert _params(ours) == _params(getattr(torchdiffeq, name))


# A smooth nonlinear test problem: two forced pendulums.
def pendulum(t, y):
    return torch.stack([y[..., 1], -torch.sin(y[..., 0]) + 0.3 * torch.cos(t)], dim=-1)


Y0 = torch.tensor([[1.0, 0.0], [0.5, -0.5]], dtype=F64)
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

FIXED_STEP = 0.125  # divides every interval of T: torchdiffeq's grid and ours coincide
# How closely each method agrees with torchdiffeq's on the test problem.
#  * fixed-step methods, same tableau and grid: to round-off;
#  * rk4: ours is the classical tableau, torchdiffeq's the 3/8 rule (same order, see below);
#  * adaptive methods: both meet the tolerance, with different step sequences and interpolants;
#    fehlberg2's error estimate understates its error (see test_solve.TOL_FACTOR);
#  * scipy_solver: the same solve_ivp call, but torchdiffeq rounds t through float32 before
#    calling func (torch.tensor(python_float)), so the step sequences drift apart slightly.
AGREEMENT = {
    "euler": (None, 1e-13),
    "midpoint": (None, 1e-13),
    "heun2": (None, 1e-13),
    "heun3": (None, 1e-13),
    "rk4": (None, 1e-6),
    "dopri5": (1e-9, 1e-8),
    "bosh3": (1e-9, 1e-6),
    "dopri8": (1e-9, 1e-6),
    "adaptive_heun": (1e-6, 1e-5),
    "fehlberg2": (1e-6, 1e-3),
    "scipy_solver": (1e-7, 1e-7),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_torchdiffeq_method_agrees_or_is_refused_with_an_alternative(name):
    if name not in AGREEMENT:
        with pytest.raises(ValueError) as info:
            odeint(pendulum, Y0, T, method=name)
        message = str(info.value)
        assert "\n" not in message and name in message
        assert "not implement" in message and "use method=" in message
        named = [m for m in RUNGE_KUTTA_METHODS if f"'{m}'" in message]
        assert named, message
        # the named alternatives work
        for alternative in named:
            kind = {"step_size": FIXED_STEP} if not METHODS[alternative].adaptive else None
            odeint(pendulum, Y0, T, method=alternative, options=kind)
        return
    tol, agreement = AGREEMENT[name]
    if tol is None:
        kw = dict(options={"step_size": FIXED_STEP})
        assert not METHODS[name].adaptive
        # the same kind and order as torchdiffeq's solver
        assert METHODS[name].tableau.order == SOLVERS[name].order
    else:
        kw = dict(rtol=tol, atol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchdiffeq's scipy wrapper passes min_step to every solver
        ref = torchdiffeq.odeint(pendulum, Y0, T, method=name, **kw)
    ours = odeint(pendulum, Y0, T, method=name, **kw)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=agreement)


@pytest.mark.parametrize("name", ["explicit_adams", "implicit_adams", "fixed_adams"])
def test_adams_methods_are_refused_by_odeint_adjoint_too(name):
    with pytest.raises(ValueError, match=rf"^'{name}' is a multistep .* use method='rk4'.*'dopri5'"):
        odeint_adjoint(pendulum, Y0, T, method=name, adjoint_params=())


def test_method_none_is_dopri5():
    assert torch.equal(odeint(pendulum, Y0, T, method=None), odeint(pendulum, Y0, T, method="dopri5"))
    assert torch.equal(odeint(pendulum, Y0, T), odeint(pendulum, Y0, T, method="dopri5"))
    y0 = Y0.clone().requires_grad_(True)
    a = odeint_adjoint(pendulum, y0, T, adjoint_params=())
    assert torch.equal(a, odeint(pendulum, Y0, T))


def test_unknown_method_lists_every_valid_name():
    with pytest.raises(ValueError, match="unknown method 'rk45'") as info:
        odeint(pendulum, Y0, T, method="rk45")
    listed = str(info.value).split("valid methods: ")[1].split(", ")
    assert listed == list(METHODS) and listed[-1] == "scipy_solver"
    assert {"heun2", "heun3", "scipy_solver"} <= set(listed)
    # every name torchdiffeq has is either valid or refused with its own message
    assert set(SOLVERS) - set(listed) == set(methods_module.UNSUPPORTED_METHODS)


def test_heun_tableaus_are_torchdiffeqs():
    """The coefficients torchdiffeq's fixed_grid.Heun2 / Heun3 use (c | A, then b)."""

    def floats(tab):
        return [float(x) for x in tab.c], [[float(x) for x in row] for row in tab.a], [float(x) for x in tab.b]

    heun2, heun3 = get_method("heun2").tableau, get_method("heun3").tableau
    assert floats(heun2) == ([0.0, 1.0], [[], [1.0]], [0.5, 0.5])
    assert floats(heun3) == ([0.0, 1 / 3, 2 / 3], [[], [1 / 3], [0.0, 2 / 3]], [0.25, 0.0, 0.75])
    assert (heun2.order, heun3.order) == (2, 3)
    assert not heun2.adaptive and not heun3.adaptive and heun2.source and heun3.source


def test_our_rk4_is_the_classical_tableau_not_torchdiffeqs_three_eighths_rule():
    """Same order, different error constant: the two differ by O(h^4), far from round-off."""
    tab = get_method("rk4").tableau
    assert [float(x) for x in tab.b] == [1 / 6, 1 / 3, 1 / 3, 1 / 6] and tab.order == 4  # 3/8 rule: 1/8, 3/8, 3/8, 1/8
    t = torch.tensor([0.0, 1.0], dtype=F64)
    diffs = []
    for h in (0.1, 0.05):
        opts = {"step_size": h}
        ours = odeint(pendulum, Y0, t, method="rk4", options=opts)
        ref = torchdiffeq.odeint(pendulum, Y0, t, method="rk4", options=opts)
        diffs.append((ours - ref).abs().max().item())
    assert diffs[1] > 1e-12  # not the same method
    assert 16 / 1.5 < diffs[0] / diffs[1] < 16 * 1.5  # the difference shrinks as h^4


# ------------------------------------------------------------------ scipy_solver


def test_scipy_solver_returns_y0s_dtype_without_gradients_and_takes_tuples_and_decreasing_t():
    y0 = Y0.float().requires_grad_(True)
    ys = odeint(pendulum, y0, T.flip(0), method="scipy_solver", options={"solver": "RK45"}, rtol=1e-6, atol=1e-8)
    assert ys.dtype == torch.float32 and not ys.requires_grad
    back = odeint(pendulum, Y0, T.flip(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ys.double(), back, rtol=0, atol=1e-5)

    def split(t, state):
        x, v = state
        return v, -torch.sin(x)

    with track_stats() as stats:
        xs, vs = odeint(split, (Y0[:, 0], Y0[:, 1]), T, method="scipy_solver", options={"solver": "DOP853"})
    ref = odeint(lambda t, y: torch.stack([y[..., 1], -torch.sin(y[..., 0])], -1), Y0, T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.stack([xs, vs], -1), ref, rtol=0, atol=1e-6)
    assert stats.nfe_forward > 0 and stats.num_solves == 1


def test_scipy_solver_options_and_failures():
    with pytest.raises(ValueError, match="unknown option.*'step_size'.*valid options: eps, grid_points, max_step"):
        odeint(pendulum, Y0, T, method="scipy_solver", options={"step_size": 0.1})
    # accepted and ignored as in torchdiffeq
    odeint(pendulum, Y0, T, method="scipy_solver", options={"norm": "rms", "max_step": 0.1, "min_step": 0.0})
    with pytest.raises(ODESolverError, match="solve_ivp .*'RK45'.* failed"):
        odeint(lambda t, y: y**2, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
               method="scipy_solver", options={"solver": "RK45"})
    with pytest.raises(ValueError, match="^'scipy_solver' wraps scipy.integrate.solve_ivp .*'dopri5'"):
        odeint_adjoint(pendulum, Y0, T, method="scipy_solver", adjoint_params=())


def test_without_scipy_scipy_solver_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)  # makes `import scipy.integrate` fail
    with pytest.raises(ValueError, match=r"^method 'scipy_solver' needs SciPy.*`pip install scipy` enables it$"):
        odeint(pendulum, Y0, T, method="scipy_solver")
    monkeypatch.setattr(methods_module, "scipy_available", lambda: False)
    with pytest.raises(ValueError, match="valid methods: ") as info:
        odeint(pendulum, Y0, T, method="nope")
    assert "scipy_solver" not in str(info.value)


# ------------------------------------------------------------------ event_fn


@pytest.mark.parametrize("adjoint", [False, True])
def test_event_fn_is_delegated_to_odeint_until_event(monkeypatch, adjoint):
    calls = []

    def odeint_until_event(func, y0, t, **kwargs):
        calls.append((func, y0, t, kwargs))
        return "delegated"

    monkeypatch.setattr(noderun.ode.solve, "odeint_until_event", odeint_until_event)
    monkeypatch.setattr(noderun.ode.adjoint, "odeint_until_event", odeint_until_event)
    event_fn = lambda t, y: y[..., 0]  # noqa: E731
    if adjoint:
        out = odeint_adjoint(pendulum, Y0, T[:2], event_fn=event_fn, rtol=1e-5, adjoint_atol=1e-4, adjoint_params=())
    else:
        out = odeint(pendulum, Y0, T[:2], event_fn=event_fn, atol=1e-6, options={"step_size": 0.1}, method="rk4")
    assert out == "delegated" and len(calls) == 1
    func, y0, t, kwargs = calls[0]
    assert func is pendulum and y0 is Y0 and torch.equal(t, T[:2])
    expected = dict(event_fn=event_fn, adjoint=adjoint)
    if adjoint:
        expected.update(method="dopri5", rtol=1e-5, atol=1e-9, options=None, adjoint_rtol=None, adjoint_atol=1e-4,
                        adjoint_method=None, adjoint_options=None, adjoint_params=(), adjoint_solver=odeint_adjoint)
    else:
        expected.update(method="rk4", rtol=1e-7, atol=1e-6, options={"step_size": 0.1})
    assert kwargs == expected


# ------------------------------------------------------------------ gradient with respect to t


class Forced(nn.Module):
    """Nonlinear, time-dependent dynamics with parameters."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3, dtype=F64) * 0.7)
        self.b = nn.Parameter(torch.randn(3, dtype=F64) * 0.3)

    def forward(self, t, y):
        return torch.tanh(y @ self.w + self.b) * torch.cos(1.3 * t) - 0.2 * y


TIGHT = dict(rtol=1e-11, atol=1e-11)
TIMES = [0.2, 0.9, 1.7]


def _weighted(ys, weights):
    return (ys * weights).sum()


@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
def test_time_gradient_matches_finite_differences(decreasing):
    func = Forced()
    y0 = torch.randn(2, 3, dtype=F64)
    weights = torch.randn(len(TIMES), 2, 3, dtype=F64)
    times = TIMES[::-1] if decreasing else TIMES
    t = torch.tensor(times, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(_weighted(odeint(func, y0, t, **TIGHT), weights), t)
    eps = 1e-5
    with torch.no_grad():
        for i in range(len(times)):  # t_0, an interior time and the end time
            tp, tm = t.detach().clone(), t.detach().clone()
            tp[i] += eps
            tm[i] -= eps
            plus = _weighted(odeint(func, y0, tp, **TIGHT), weights)
            minus = _weighted(odeint(func, y0, tm, **TIGHT), weights)
            fd = (plus - minus) / (2 * eps)
            assert abs(fd.item() - g[i].item()) <= 1e-7 * max(1.0, abs(fd.item())), (i, fd.item(), g[i].item())


def test_time_gradient_per_output_and_values_unchanged():
    func = Forced()
    y0 = torch.randn(2, 3, dtype=F64)
    t = torch.tensor(TIMES, dtype=F64, requires_grad=True)
    ys = odeint(func, y0, t, **TIGHT)
    # the values are exactly those of a solve without the t-gradient
    assert torch.equal(ys.detach(), odeint(func, y0, t.detach(), **TIGHT))
    with torch.no_grad():
        f = torch.stack([func(t[i], ys[i]) for i in range(len(TIMES))])
    for i in range(len(TIMES)):
        (g,) = torch.autograd.grad(ys[i].sum(), t, retain_graph=True)
        if i == 0:
            assert torch.equal(g, torch.zeros_like(g))  # y_0 = y0 whatever t_0
        else:
            torch.testing.assert_close(g[i], f[i].sum(), rtol=1e-12, atol=1e-12)
            assert torch.all(g[1:i] == 0) and torch.all(g[i + 1 :] == 0)


def test_time_gradient_matches_torchdiffeq_and_the_adjoint():
    func = Forced()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    weights = torch.randn(len(TIMES), 2, 3, dtype=F64)
    params = (y0,) + tuple(func.parameters())
    grads = {}
    for name, solve, kw in [
        ("ours", odeint, TIGHT),
        ("adjoint", odeint_adjoint, TIGHT),
        ("torchdiffeq", torchdiffeq.odeint, dict(rtol=1e-10, atol=1e-10)),
    ]:
        t = torch.tensor(TIMES, dtype=F64, requires_grad=True)
        grads[name] = torch.autograd.grad(_weighted(solve(func, y0, t, **kw), weights), (t,) + params)
    for name in ("adjoint", "torchdiffeq"):
        for a, b in zip(grads["ours"], grads[name]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_time_gradient_of_a_tuple_state_with_a_fixed_step_method():
    def split(t, state):
        x, v = state
        return v, -torch.sin(x) * (1 + t)

    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    x0, v0 = torch.tensor([0.3, 1.0], dtype=F64), torch.tensor([0.2, 0.0], dtype=F64)
    xs, vs = odeint(split, (x0, v0), t, method="rk4", options={"step_size": 0.01})
    (g,) = torch.autograd.grad(xs[-1].sum(), t)
    torch.testing.assert_close(g[-1], vs[-1].sum().detach(), rtol=1e-12, atol=0)  # dx/dt = v
    assert g[1] == 0


def test_time_gradient_costs_len_t_uncounted_evaluations():
    func = Forced()
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return func(t, y)

    y0 = torch.randn(2, 3, dtype=F64)
    nfe, n_calls = {}, {}
    for needs_grad in (False, True):
        calls[0] = 0
        with track_stats() as stats:
            odeint(counted, y0, torch.tensor(TIMES, dtype=F64, requires_grad=needs_grad))
        nfe[needs_grad], n_calls[needs_grad] = stats.nfe_forward, calls[0]
    assert nfe[True] == nfe[False] == n_calls[False]
    assert n_calls[True] == n_calls[False] + len(TIMES)
    # and none without grad mode
    calls[0] = 0
    with torch.no_grad():
        odeint(counted, y0, torch.tensor(TIMES, dtype=F64, requires_grad=True))
    assert calls[0] == n_calls[False]


def test_methods_lists_every_method_odeint_accepts():
    # torchdiffeq's SOLVERS lists scipy_solver beside its Runge-Kutta methods; so does METHODS
    assert "scipy_solver" in METHODS and METHODS["scipy_solver"].tableau is None
    assert set(METHODS) - set(RUNGE_KUTTA_METHODS) == {"scipy_solver"}
    for name, spec in METHODS.items():
        assert spec.name == name and spec.source
        options = None if spec.adaptive else {"step_size": FIXED_STEP}
        ys = odeint(pendulum, Y0, T, method=name, options=options)
        assert torch.isfinite(ys).all()
