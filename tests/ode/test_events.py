"""Event handling (noderun.ode.events): event times, states and gradients through the event time.

Closed forms (the bouncing ball, exponential decay), finite differences in float64, and
torchdiffeq 0.2.5's odeint_event as an oracle.
"""

import inspect
import math

import pytest
import torch
from torch import nn

from noderun.ode import ODESolverError, odeint, odeint_adjoint, odeint_event, track_stats
from noderun.ode.events import odeint_until_event

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)
T0 = torch.tensor(0.0, dtype=F64)

# (method, options) pairs: every kind of dense output (own interpolant, cubic Hermite, partial
# steps for tsit5/dopri8/rk4) and fixed steps.
METHODS = [
    ("dopri5", None),
    ("bosh3", None),
    ("tsit5", None),
    ("dopri8", None),
    ("rk4", {"step_size": 0.05}),
]


class Ball(nn.Module):
    """Free fall ``x'' = -g``, state ``[x, v]`` (or a tuple ``(x, v)``); ``g`` a parameter."""

    def __init__(self, g=9.81):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=F64))

    def forward(self, t, y):
        if isinstance(y, tuple):
            x, v = y
            return v, -self.g * torch.ones_like(x)
        return torch.stack([y[..., 1], -self.g * torch.ones_like(y[..., 0])], dim=-1)


def height(t, y):
    return y[..., 0]


def ball_impact(h0, v0, g):
    """Closed form: first time with x = 0, and the velocity then (autograd-differentiable)."""
    s = torch.sqrt(v0**2 + 2 * g * h0)
    return (v0 + s) / g, -s


def interface(adjoint):
    return odeint_adjoint if adjoint else odeint


def central_difference(fn, x, eps=1e-6):
    """d fn / d x (x a 1-D float64 tensor, fn returning a float)."""
    out = []
    for i in range(x.numel()):
        d = torch.zeros_like(x)
        d[i] = eps
        out.append((fn(x + d) - fn(x - d)) / (2 * eps))
    return torch.tensor(out, dtype=F64)


# ---------------------------------------------------------------------------
# Bouncing ball: closed form
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_ball_impact_time_velocity_and_gradients_match_closed_form(method, options, adjoint):
    ball = Ball()
    y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(
        ball, y0, T0, event_fn=height, odeint_interface=interface(adjoint), method=method, options=options, **TOL
    )
    assert event_t.shape == () and event_t.dtype == F64
    assert sol.shape == (2, 2) and sol.dtype == F64
    t_ref, v_ref = ball_impact(y0[0], y0[1], ball.g)
    # A quadratic trajectory is integrated exactly by every method here, so only the root
    # tolerance is left.
    assert abs(event_t.item() - t_ref.item()) < 1e-12
    assert abs(sol[1, 1].item() - v_ref.item()) < 1e-10
    assert 0.0 <= sol[1, 0].item() < 1e-10  # on the initial side of the event, within tolerance
    torch.testing.assert_close(sol[0], y0.detach(), rtol=0, atol=0)

    # Gradients of the event time and of the velocity at the event (which depends on the event
    # time through f(t_e, y_e) dt_e), w.r.t. y0 and the parameter g, against the closed form.
    inputs = (y0, ball.g)
    for out, ref in ((event_t, t_ref), (sol[1, 1], v_ref)):
        got = torch.autograd.grad(out, inputs, retain_graph=True)
        want = torch.autograd.grad(ref, inputs, retain_graph=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_multi_bounce_with_restitution_matches_closed_form(adjoint):
    """torchdiffeq's bouncing-ball example: solve to the impact, reflect with restitution, repeat.

    Drop from height h at rest: first impact t_1 = sqrt(2h/g) at speed u = sqrt(2gh); after
    bounce k (k >= 1) the speed is e^k u and the flight 2 e^k u / g.  The gradients chain through
    the event times (each is the next solve's t0) and the state updates.
    """
    ball = Ball()
    h = torch.tensor(5.0, dtype=F64, requires_grad=True)
    e = torch.tensor(0.8, dtype=F64, requires_grad=True)
    n_bounces = 4
    t0, y = T0, torch.stack([h, torch.zeros((), dtype=F64)])
    times = []
    for _ in range(n_bounces):
        event_t, sol = odeint_event(ball, y, t0, event_fn=height, odeint_interface=interface(adjoint), **TOL)
        times.append(event_t)
        x_e, v_e = sol[-1]
        # The state at the event is on the initial side (x >= 0), so no offset is needed to keep
        # the reflected solve from stopping at once (torchdiffeq's example adds 1e-7).
        y = torch.stack([x_e, -e * v_e])
        t0 = event_t

    g = ball.g
    u = torch.sqrt(2 * g * h)
    ref = [torch.sqrt(2 * h / g)]
    for k in range(1, n_bounces):
        ref.append(ref[-1] + 2 * e**k * u / g)
    for got, want in zip(times, ref):
        assert abs(got.item() - want.item()) < 1e-9
    got = torch.autograd.grad(times[-1], (h, e, g))
    want = torch.autograd.grad(ref[-1], (h, e, g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------
# Non-polynomial solutions: closed form, finite differences, torchdiffeq
# ---------------------------------------------------------------------------


class Decay(nn.Module):
    """``y' = -k y``: ``y(t) = y0 exp(-k (t - t0))``."""

    def __init__(self, k=0.7):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return -self.k * y


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_decay_threshold_gradients_including_t0_and_event_fn_parameter(method, adjoint):
    """Event y = c: t_e = t0 + log(y0 / c) / k, differentiated w.r.t. y0, t0, k and c.

    ``c`` lives in the event function only (torchdiffeq gives it no gradient).
    """
    decay = Decay()
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    c = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(
        decay, y0, t0, event_fn=lambda t, y: y - c, odeint_interface=interface(adjoint), method=method, **TOL
    )
    ref = t0 + torch.log(y0[0] / c) / decay.k
    tol = 1e-9 if method != "bosh3" else 1e-7
    assert abs(event_t.item() - ref.item()) < tol
    assert abs(sol[1, 0].item() - 0.5) < tol
    inputs = (y0, t0, decay.k, c)
    got = torch.autograd.grad(event_t, inputs, retain_graph=True)
    want = torch.autograd.grad(ref, inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # The state at the event is pinned to c whatever the inputs: only d/dc survives.
    got = torch.autograd.grad(sol[1, 0], inputs, allow_unused=True)
    for a, b in zip(got, (0.0, 0.0, 0.0, 1.0)):
        assert a is not None and abs(a.item() - b) < 1e-6


class Oscillator(nn.Module):
    """Damped pendulum ``x'' = -sin(x) - c x'``."""

    def __init__(self, c=0.3):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=F64))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, -torch.sin(x) - self.c * v], dim=-1)


def moving_threshold(t, y):
    # Depends on t as well, so dG/dt enters the implicit derivative.
    return y[..., 0] + 0.1 * t


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_nonlinear_event_gradients_match_finite_differences(adjoint):
    osc = Oscillator()
    y0 = torch.tensor([1.2, 0.4], dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(osc, y0, T0, event_fn=moving_threshold, odeint_interface=interface(adjoint), **TOL)
    loss = event_t + 0.5 * sol[1, 1]
    g_y0, g_c = torch.autograd.grad(loss, (y0, osc.c))

    def loss_at(y0_, c_=None):
        with torch.no_grad():
            f = Oscillator(osc.c.item() if c_ is None else c_)
            et, s = odeint_event(f, y0_, T0, event_fn=moving_threshold, rtol=1e-12, atol=1e-13)
            return (et + 0.5 * s[1, 1]).item()

    fd_y0 = central_difference(loss_at, y0.detach())
    fd_c = central_difference(lambda c: loss_at(y0.detach(), c.item()), osc.c.detach().reshape(1))
    torch.testing.assert_close(g_y0, fd_y0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_c.reshape(1), fd_c, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_agrees_with_torchdiffeq_odeint_event(adjoint):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    osc = Oscillator()
    y0 = torch.tensor([1.2, 0.4], dtype=F64, requires_grad=True)
    tol = dict(rtol=1e-9, atol=1e-11)
    event_t, sol = odeint_event(osc, y0, T0, event_fn=moving_threshold, odeint_interface=interface(adjoint), **tol)
    ref_t, ref_sol = torchdiffeq.odeint_event(
        osc, y0, T0, event_fn=moving_threshold, odeint_interface=torchdiffeq.odeint, **tol
    )
    assert ref_t.shape == event_t.shape and ref_sol.shape == sol.shape
    assert abs(event_t.item() - ref_t.item()) < 1e-8
    torch.testing.assert_close(sol, ref_sol, rtol=0, atol=1e-8)
    got = torch.autograd.grad(event_t + sol[1, 1], (y0, osc.c))
    want = torch.autograd.grad(ref_t + ref_sol[1, 1], (y0, osc.c))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_torchdiffeq_odeint_as_interface_gets_the_same_gradients():
    """Another solver's odeint (no gradient through its event time) gets it from odeint_event."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ball = Ball()
    y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(ball, y0, T0, event_fn=height, odeint_interface=torchdiffeq.odeint, **TOL)
    t_ref, v_ref = ball_impact(y0[0], y0[1], ball.g)
    assert abs(event_t.item() - t_ref.item()) < 1e-10
    got = torch.autograd.grad(event_t + sol[1, 1], (y0, ball.g))
    want = torch.autograd.grad(t_ref + v_ref, (y0, ball.g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------
# Tuple states, reverse time, vector event functions, dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_tuple_state(adjoint):
    ball = Ball()
    x0 = torch.tensor([10.0], dtype=F64, requires_grad=True)
    v0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    event_t, (xs, vs) = odeint_event(
        ball, (x0, v0), T0, event_fn=lambda t, s: s[0], odeint_interface=interface(adjoint), **TOL
    )
    assert xs.shape == (2, 1) and vs.shape == (2, 1)
    t_ref, v_ref = ball_impact(x0[0], v0[0], ball.g)
    assert abs(event_t.item() - t_ref.item()) < 1e-12
    assert abs(vs[1, 0].item() - v_ref.item()) < 1e-10
    got = torch.autograd.grad(event_t + vs[1, 0], (x0, v0, ball.g))
    want = torch.autograd.grad(t_ref + v_ref, (x0, v0, ball.g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.reshape(-1), b.reshape(-1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_reverse_time(adjoint):
    """Backwards from y(0) = 1 under y' = -k y until y = 2: t_e = -log(2) / k."""
    decay = Decay()
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    event_t, sol = odeint_event(
        decay, y0, T0, event_fn=lambda t, y: y - 2.0, reverse_time=True, odeint_interface=interface(adjoint), **TOL
    )
    ref = -torch.log(2.0 / y0[0]) / decay.k
    assert event_t.item() < 0
    assert abs(event_t.item() - ref.item()) < 1e-9
    assert abs(sol[1, 0].item() - 2.0) < 1e-9
    got = torch.autograd.grad(event_t, (y0, decay.k))
    want = torch.autograd.grad(ref, (y0, decay.k))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ref_t, _ = torchdiffeq.odeint_event(decay, y0, T0, event_fn=lambda t, y: y - 2.0, reverse_time=True, **TOL)
    assert abs(event_t.item() - ref_t.item()) < 1e-9


def test_vector_event_function_stops_at_the_first_element_to_reach_zero():
    # From x = 10 falling: x - 5 (positive) and 8 - x (negative) at t0; 8 - x reaches zero first.
    ball = Ball()
    y0 = torch.tensor([10.0, 0.0], dtype=F64)
    event_t, sol = odeint_event(ball, y0, T0, event_fn=lambda t, y: torch.stack([y[0] - 5.0, 8.0 - y[0]]), **TOL)
    assert abs(event_t.item() - math.sqrt(2 * 2.0 / 9.81)) < 1e-12
    assert abs(sol[1, 0].item() - 8.0) < 1e-10


def test_event_at_the_initial_time_returns_at_once():
    ball = Ball()
    y0 = torch.tensor([0.0, 3.0], dtype=F64)
    event_t, sol = odeint_event(ball, y0, T0, event_fn=height)
    assert event_t.item() == 0.0
    torch.testing.assert_close(sol, torch.stack([y0, y0]))


def test_float32_state_and_time():
    ball = Ball()
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float32)
    f32 = lambda t, y: ball(t, y.double()).float()  # noqa: E731
    event_t, sol = odeint_event(f32, y0, torch.tensor(0.0), event_fn=height, rtol=1e-6, atol=1e-7)
    assert event_t.dtype == torch.float32 and sol.dtype == torch.float32 and sol.shape == (2, 2)
    t_ref, _ = ball_impact(torch.tensor(10.0, dtype=F64), torch.tensor(2.0, dtype=F64), ball.g)
    assert abs(event_t.item() - t_ref.item()) < 1e-5


def test_batched_state_and_stats():
    # A [3, 2] batch of balls; the event is the first ball to land. dopri5's interpolant makes the
    # root search free of function evaluations: 2 (k1, initial step) + 6 per step.
    ball = Ball()
    y0 = torch.tensor([[10.0, 2.0], [3.0, 0.0], [7.0, -1.0]], dtype=F64)
    with track_stats() as stats:
        event_t, sol = odeint_event(ball, y0, T0, event_fn=lambda t, y: y[:, 0])
    assert sol.shape == (2, 3, 2)
    assert abs(event_t.item() - math.sqrt(2 * 3.0 / 9.81)) < 1e-12
    assert stats.num_solves == 1
    assert stats.nfe_forward == 2 + 6 * (stats.steps_accepted + stats.steps_rejected)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_no_event_before_max_num_steps_is_an_error():
    y0 = torch.tensor([0.0], dtype=F64)
    with pytest.raises(ODESolverError, match="no event.*max_num_steps=50"):
        odeint_event(
            lambda t, y: torch.ones_like(y), y0, T0, event_fn=lambda t, y: y + 1.0, options={"max_num_steps": 50}
        )
    with pytest.raises(ODESolverError, match="no event.*max_num_steps=20"):
        odeint_event(
            lambda t, y: torch.ones_like(y),
            y0,
            T0,
            event_fn=lambda t, y: y + 1.0,
            method="rk4",
            options={"step_size": 0.1, "max_num_steps": 20},
        )


def test_invalid_calls():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.tensor([1.0], dtype=F64)
    ev = lambda t, y: y - 0.5  # noqa: E731
    with pytest.raises(ValueError, match="step_size"):
        odeint_until_event(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=ev, method="rk4")
    with pytest.raises(ValueError, match="exactly 2 times"):
        odeint_until_event(f, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), event_fn=ev)
    with pytest.raises(TypeError, match="adjoint=True"):
        odeint_until_event(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=ev, adjoint_rtol=1e-6)
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_until_event(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=ev, adjoint=True,
                           adjoint_solver=odeint_adjoint)
    with pytest.raises(TypeError, match="adjoint_solver"):
        odeint_until_event(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=ev, adjoint=True)
    with pytest.raises(ODESolverError, match="non-finite"):
        odeint_event(f, y0, T0, event_fn=lambda t, y: y * float("nan"))


# ---------------------------------------------------------------------------
# Through odeint / odeint_adjoint(event_fn=...)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_odeint_event_fn_delegates_to_odeint_until_event(adjoint):
    solver = interface(adjoint)
    if "event_fn" not in inspect.signature(solver).parameters:
        pytest.skip(f"{solver.__name__} does not take event_fn yet (its change is not in place)")
    ball = Ball()
    y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)  # t[1] only gives the direction: the event is at 1.65
    event_t, sol = solver(ball, y0, t, event_fn=height, **TOL)
    direct_t, direct_sol = odeint_until_event(ball, y0, t, event_fn=height, adjoint=adjoint,
                                              **({"adjoint_solver": odeint_adjoint} if adjoint else {}), **TOL)
    assert event_t.item() == direct_t.item()
    torch.testing.assert_close(sol, direct_sol, rtol=0, atol=0)
    t_ref, _ = ball_impact(y0[0], y0[1], ball.g)
    assert abs(event_t.item() - t_ref.item()) < 1e-12
    got = torch.autograd.grad(event_t, (y0, ball.g))
    want = torch.autograd.grad(t_ref, (y0, ball.g))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------
# Step options: honoured, or refused in one line
# ---------------------------------------------------------------------------


def _pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0])])


def _pendulum_event(options, tol=1e-6):
    """The first time a pendulum released at angle 2 passes the bottom (no closed form)."""
    with track_stats() as stats:
        event_t, _ = odeint(_pendulum, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                            event_fn=lambda t, y: y[0], rtol=tol, atol=tol, options=options)
    return float(event_t), stats


def test_the_event_solve_takes_the_pi_controller_and_its_coefficients():
    exact, _ = _pendulum_event(None, tol=1e-12)
    t_integral, integral = _pendulum_event(None)
    t_pi, pi = _pendulum_event({"controller": "pi"})
    t_tuned, tuned = _pendulum_event({"controller": "pi", "pcoeff": 0.0, "icoeff": 1.0})
    for t in (t_integral, t_pi, t_tuned):
        assert t == pytest.approx(exact, abs=1e-5)
    # pcoeff 0, icoeff 1 is the integral controller; the default PI coefficients take other steps
    assert (tuned.steps_accepted, tuned.nfe_forward) == (integral.steps_accepted, integral.nfe_forward)
    assert (pi.steps_accepted, pi.nfe_forward) != (integral.steps_accepted, integral.nfe_forward)


@pytest.mark.parametrize("options, name", [
    ({"step_t": torch.tensor([0.2])}, "'step_t'"),
    ({"jump_t": torch.tensor([0.2])}, "'jump_t'"),
    ({"step_size": 0.01, "perturb": True}, "'perturb'"),
])
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_options_the_event_solve_cannot_honour_are_refused(options, name, adjoint):
    method = "rk4" if "perturb" in options else "dopri5"
    with pytest.raises(ValueError, match=rf"^option\(s\) {name} are not supported with event_fn") as info:
        interface(adjoint)(Ball(), torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                           event_fn=height, method=method, options=options)
    assert "\n" not in str(info.value)
