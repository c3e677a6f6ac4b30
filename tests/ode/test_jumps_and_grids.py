"""step_t / jump_t (adaptive methods) and fixed grids: grid_constructor, perturb, interp, dtype.

torchdiffeq 0.2.5 is the oracle for the semantics where ours coincide (output times on the
grid); where they differ by design (noderun steps onto output times between grid points,
torchdiffeq interpolates them) the exact solution decides.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint, track_stats

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see tests/conftest.py)


def sign_switch(t, y):
    """y' = 1 for t < 1, -1 from t = 1 on: a jump in the dynamics at t = 1."""
    return torch.where(t < 1, torch.ones_like(y), -torch.ones_like(y))


def sign_switch_exact(t):
    return torch.where(t < 1, t, 2 - t)


class Recorder:
    """Wraps dynamics and records every time they are evaluated at (as Python floats)."""

    def __init__(self, f):
        self.f, self.times = f, []

    def __call__(self, t, y):
        self.times.append(t.item())
        return self.f(t, y)


# ---------------------------------------------------------------------------
# jump_t
# ---------------------------------------------------------------------------

T_OUT = torch.tensor([0.0, 0.5, 1.0, 1.7, 2.5], dtype=F64)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3", "adaptive_heun"])
def test_jump_t_solves_a_discontinuous_rhs_exactly_with_fewer_rejections(method):
    y0 = torch.zeros(1, dtype=F64)
    exact = sign_switch_exact(T_OUT).unsqueeze(1)
    results = {}
    for opts in (None, {"jump_t": torch.tensor([1.0], dtype=F64)}):
        with track_stats() as stats:
            ys = odeint(sign_switch, y0, T_OUT, method=method, rtol=1e-6, atol=1e-8, options=opts)
        results[opts is not None] = ((ys - exact).abs().max().item(), stats)
    (err_plain, plain), (err_jump, jump) = results[False], results[True]
    # Piecewise-constant derivative: each side is integrated exactly (to round-off).
    assert err_jump < 1e-12, err_jump
    assert jump.steps_rejected < plain.steps_rejected, (jump.steps_rejected, plain.steps_rejected)
    assert jump.nfe_forward < plain.nfe_forward
    print(
        f"{method}: without jump_t err {err_plain:.1e}, {plain.steps_rejected} rejected, {plain.nfe_forward} NFE; "
        f"with jump_t err {err_jump:.1e}, {jump.steps_rejected} rejected, {jump.nfe_forward} NFE"
    )


def test_jump_t_evaluates_each_side_of_the_jump_and_restarts_after_it():
    f = Recorder(sign_switch)
    t = torch.tensor([0.0, 2.5], dtype=F64)
    with track_stats() as stats:
        odeint(f, torch.zeros(1, dtype=F64), t, method="dopri5", options={"jump_t": [1.0]})
    before, after = math.nextafter(1.0, 0.0), math.nextafter(1.0, 2.0)
    # The step ending on the jump evaluates its c = 1 stages just before it; the step after it
    # re-evaluates f just after it (no FSAL reuse across the jump); f is never called at 1.0.
    assert before in f.times and after in f.times and 1.0 not in f.times
    assert f.times.index(after) > max(i for i, x in enumerate(f.times) if x == before)
    # dopri5 without restarts: 6 evaluations per step + k1 + initial-step probe; the restart adds 1.
    steps = stats.steps_accepted + stats.steps_rejected
    assert stats.nfe_forward == 6 * steps + 2 + 1


def test_jump_t_in_float32_uses_the_state_dtype_for_the_sides():
    # In float32, t = 1 - 1e-16 would round to 1.0: the sides are float32 neighbours of 1.
    f = Recorder(sign_switch)
    ys = odeint(f, torch.zeros(1), T_OUT.float(), rtol=1e-5, atol=1e-6, options={"jump_t": [1.0]})
    torch.testing.assert_close(ys[:, 0], sign_switch_exact(T_OUT).float(), rtol=0, atol=1e-6)
    one = torch.tensor(1.0)
    assert torch.nextafter(one, torch.tensor(0.0)).item() in f.times
    assert torch.nextafter(one, torch.tensor(2.0)).item() in f.times and 1.0 not in f.times


def test_jump_t_with_decreasing_time():
    t = T_OUT.flip(0)  # 2.5 -> 0
    y0 = sign_switch_exact(t[:1])
    with track_stats() as stats:
        ys = odeint(sign_switch, y0, t, rtol=1e-6, atol=1e-8, options={"jump_t": torch.tensor([1.0])})
    torch.testing.assert_close(ys[:, 0], sign_switch_exact(t), rtol=0, atol=1e-12)
    assert stats.steps_rejected == 0


class Switched(nn.Module):
    """y' = a y for t < 1, b y after: y(T) = y0 exp(a + b (T - 1))."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7, dtype=F64))
        self.b = nn.Parameter(torch.tensor(-0.4, dtype=F64))

    def forward(self, t, y):
        return torch.where(t < 1, self.a, self.b) * y


@pytest.mark.parametrize("solve", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_jump_t_gradients_through_the_jump(solve):
    func = Switched()
    y0 = torch.tensor([1.3], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 2.0], dtype=F64)
    ys = solve(func, y0, t, rtol=1e-10, atol=1e-12, options={"jump_t": [1.0]})
    ga, gb, gy0 = torch.autograd.grad(ys[-1].sum(), (func.a, func.b, y0))
    yT = 1.3 * math.exp(0.7 - 0.4)
    assert abs(ys[-1].item() - yT) < 1e-9
    assert abs(ga.item() - yT) < 1e-7 and abs(gb.item() - yT) < 1e-7 and abs(gy0.item() - yT / 1.3) < 1e-7


def test_a_jump_at_an_output_time_and_the_adjoints_backward_intervals():
    # The backward solve of [0, 1] starts at t = 1, on the jump: it starts on the jump's far
    # side (f just before 1), where f(1) itself is the derivative of the other side.
    func = Switched()
    y0 = torch.tensor([1.3], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    with track_stats() as stats:
        ys = odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-12, options={"jump_t": [1.0]})
        ga, gb, gy0 = torch.autograd.grad(ys[1:].sum(), (func.a, func.b, y0))
    y1, y2 = 1.3 * math.exp(0.7), 1.3 * math.exp(0.7 - 0.4)
    torch.testing.assert_close(ys[1:, 0], torch.tensor([y1, y2], dtype=F64), rtol=1e-9, atol=0)
    for got, want in ((ga, y1 + y2), (gb, y2), (gy0, (y1 + y2) / 1.3)):
        assert abs(got.item() - want) < 1e-9 * want
    assert stats.backward_steps_rejected < 10  # 22 when the backward solve starts with f(1)


# ---------------------------------------------------------------------------
# step_t
# ---------------------------------------------------------------------------


def test_step_t_lands_on_every_time_and_keeps_fsal():
    f = Recorder(lambda t, y: torch.cos(3 * t) * y)
    step_t = [0.3, 0.77, 1.41]
    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.ones(1, dtype=F64)
    with track_stats() as stats:
        opts = {"step_t": torch.tensor(step_t, dtype=F64)}
        ys = odeint(f, y0, t, method="dopri5", rtol=1e-8, atol=1e-10, options=opts)
    # dopri5's last stage is at the end of the step: each step_t time is a step end exactly.
    for x in step_t:
        assert x in f.times, x
    # No restart: FSAL continues, 6 evaluations per step plus k1 and the initial-step probe.
    assert stats.nfe_forward == 6 * (stats.steps_accepted + stats.steps_rejected) + 2
    assert abs(ys[-1].item() - math.exp(math.sin(6.0) / 3)) < 1e-8


@pytest.mark.parametrize("name", ["step_t", "jump_t"])
def test_times_outside_the_interval_are_ignored(name):
    # torchdiffeq drops times before t[0] (and at t[0]) and never reaches those after t[-1].
    f = lambda t, y: -y  # noqa: E731
    y0, t = torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    with track_stats() as plain:
        ref = odeint(f, y0, t)
    with track_stats() as ignored:
        ys = odeint(f, y0, t, options={name: [-1.0, 0.0, 2.0, 3.5]})
    assert torch.equal(ys, ref) and ignored.nfe_forward == plain.nfe_forward


def test_step_t_and_jump_t_match_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    # With the same discontinuity handling both solve the piecewise problem to round-off.
    kw = dict(rtol=1e-6, atol=1e-8, method="dopri5")
    opts = {"jump_t": torch.tensor([1.0], dtype=F64), "step_t": torch.tensor([0.25, 2.0], dtype=F64)}
    y0 = torch.zeros(1, dtype=F64)
    ref = torchdiffeq.odeint(sign_switch, y0, T_OUT, options=dict(opts), **kw)
    ours = odeint(sign_switch, y0, T_OUT, options=dict(opts), **kw)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"jump_t": torch.ones(2, 2)}, r"option 'jump_t' must be a 1-D tensor of times, got shape \(2, 2\)"),
        ({"step_t": torch.tensor(1.0)}, r"option 'step_t' must be a 1-D tensor of times, got shape \(\)"),
        ({"step_t": [0.5, float("nan")]}, "option 'step_t' must contain only finite times"),
        ({"jump_t": [0.5, float("inf")]}, "option 'jump_t' must contain only finite times"),
        ({"jump_t": "soon"}, "option 'jump_t' must be a 1-D tensor of times"),
        ({"step_t": [0.5], "jump_t": [0.2, 0.5]}, "must not repeat a time, got 0.5 twice"),
        ({"step_t": [0.3, 0.3]}, "must not repeat a time, got 0.3 twice"),
        ({"jump_t": [0.5], "step_size": 0.1}, r"options \['jump_t'\] have no effect with a fixed 'step_size'"),
    ],
)
def test_step_t_jump_t_validation(options, message):
    with pytest.raises(ValueError, match=message):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), options=options)


def test_step_t_is_an_adaptive_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'jump_t' for method 'rk4'; valid options: step_size"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4", options={"jump_t": [0.5]})


# ---------------------------------------------------------------------------
# Fixed grids: grid_constructor
# ---------------------------------------------------------------------------


def cos_dynamics(t, y):
    return torch.cos(t) * y  # y = y0 exp(sin t)


def squared_grid(n):
    """A non-uniform grid: fine near t[0], coarse near t[-1]; works in either direction."""

    def construct(func, y0, t):
        s = torch.linspace(0.0, 1.0, n, dtype=t.dtype, device=t.device) ** 2
        grid = t[0] + (t[-1] - t[0]) * s
        grid[-1] = t[-1]
        return grid

    return construct


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3"])
@pytest.mark.parametrize("decreasing", [False, True])
def test_grid_constructor_equals_torchdiffeq_where_outputs_are_grid_points(method, decreasing):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    construct = squared_grid(21)
    t_span = torch.tensor([0.0, 2.0], dtype=F64)
    if decreasing:
        t_span = t_span.flip(0)
    grid = construct(None, None, t_span)
    t = grid[[0, 3, 8, 15, 20]]  # output times: a subset of the grid points
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    opts = {"grid_constructor": lambda f, y, tt: construct(f, y, tt)}
    ref = torchdiffeq.odeint(cos_dynamics, y0, t, method=method, options=dict(opts))
    with track_stats() as stats:
        ours = odeint(cos_dynamics, y0, t, method=method, options=dict(opts))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13)
    assert stats.steps_accepted == 20  # one step per grid interval, none added


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_output_times_between_grid_points_are_stepped_onto(method):
    construct = squared_grid(9)
    t = torch.tensor([0.0, 0.3, 0.77, 1.1, 1.55, 2.0], dtype=F64)  # only t[0], t[-1] on the grid
    y0 = torch.tensor([1.0], dtype=F64)
    ours = odeint(cos_dynamics, y0, t, method=method, options={"grid_constructor": construct})
    # ... which is what stepping along the grid with the output times added to it gives
    merged = lambda f, y, tt: torch.unique(torch.cat([construct(f, y, tt), tt]))  # noqa: E731
    with track_stats() as stats:
        stepped = odeint(cos_dynamics, y0, t, method=method, options={"grid_constructor": merged})
    assert torch.equal(ours, stepped) and stats.steps_accepted == 8 + 4


@pytest.mark.parametrize("n", [9, 17, 33])
def test_stepping_onto_outputs_is_more_accurate_than_torchdiffeqs_interpolation(n):
    # rk4's interpolation error (O(h^2) linear, O(h^4) cubic, on the coarse grid's h) dominates
    # its O(h^4) global error; stepping onto the output time has no interpolation error.  (For
    # euler and midpoint the global error dominates and the two are alike, in either order.)
    torchdiffeq = pytest.importorskip("torchdiffeq")
    construct = squared_grid(n)
    t = torch.tensor([0.0, 0.3, 0.77, 1.1, 1.55, 2.0], dtype=F64)
    y0 = torch.tensor([1.0], dtype=F64)
    exact = torch.exp(torch.sin(t)).unsqueeze(1)
    err_ours = (odeint(cos_dynamics, y0, t, method="rk4", options={"grid_constructor": construct}) - exact)
    err_ours = err_ours[1:-1].abs().max().item()  # the output times between grid points
    for interp, factor in (("linear", 100), ("cubic", 1.5)):
        opts = {"grid_constructor": construct, "interp": interp}
        err_theirs = (torchdiffeq.odeint(cos_dynamics, y0, t, method="rk4", options=opts) - exact)[1:-1]
        err_theirs = err_theirs.abs().max().item()
        assert factor * err_ours < err_theirs, (interp, err_ours, err_theirs)
        print(f"grid of {n}, interp={interp}: max error between grid points ours {err_ours:.2e}, "
              f"torchdiffeq {err_theirs:.2e}")


def test_interp_is_accepted_and_has_no_effect():
    construct = squared_grid(9)
    t = torch.tensor([0.0, 0.3, 2.0], dtype=F64)
    y0 = torch.ones(1, dtype=F64)
    results = [
        odeint(cos_dynamics, y0, t, method="rk4", options={"grid_constructor": construct, "interp": interp})
        for interp in (None, "linear", "cubic")
    ]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    with pytest.raises(ValueError, match="option 'interp' must be 'linear' or 'cubic', got 'spline'.*no effect"):
        odeint(cos_dynamics, y0, t, method="rk4", options={"interp": "spline"})


@pytest.mark.parametrize(
    "construct, message",
    [
        (lambda f, y, t: torch.linspace(0.0, 1.9, 5, dtype=F64), r"must start at t\[0\]=0.0 and end at t\[-1\]=2.0"),
        (lambda f, y, t: torch.tensor([0.0, 1.5, 1.0, 2.0], dtype=F64), "strictly monotone"),
        (lambda f, y, t: torch.zeros(2, 2), "must return a 1-D tensor of times"),
        (lambda f, y, t: torch.tensor([0.0, float("nan"), 2.0], dtype=F64), "at least 2 finite times"),
    ],
)
def test_grid_constructor_validation(construct, message):
    with pytest.raises(ValueError, match=message):
        t = torch.tensor([0.0, 2.0])
        odeint(cos_dynamics, torch.ones(1), t, method="euler", options={"grid_constructor": construct})


def test_grid_constructor_option_errors():
    y0, t = torch.ones(1), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="'step_size' and 'grid_constructor' are mutually exclusive"):
        odeint(cos_dynamics, y0, t, method="rk4", options={"step_size": 0.1, "grid_constructor": squared_grid(3)})
    with pytest.raises(ValueError, match="option 'grid_constructor' must be a callable"):
        odeint(cos_dynamics, y0, t, method="rk4", options={"grid_constructor": [0.0, 1.0]})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'grid_constructor' for method 'dopri5'"):
        odeint(cos_dynamics, y0, t, options={"grid_constructor": squared_grid(3)})


def test_grid_constructor_gets_flat_func_y0_and_float64_times():
    seen = {}

    def construct(func, y0, t):
        seen.update(y0_shape=tuple(y0.shape), t=t, f0=func(t[0], y0))
        return torch.linspace(float(t[0]), float(t[-1]), 5, dtype=F64)

    y0 = torch.ones(2, 3)
    odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), method="euler", options={"grid_constructor": construct})
    assert seen["y0_shape"] == (6,) and seen["t"].dtype == F64 and torch.equal(seen["f0"], -torch.ones(6))


# ---------------------------------------------------------------------------
# perturb
# ---------------------------------------------------------------------------


def sign_switch_closed(t, y):
    """Like sign_switch, but the value at t = 1 itself belongs to the left branch."""
    return torch.where(t <= 1, torch.ones_like(y), -torch.ones_like(y))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_perturb_evaluates_each_step_on_its_side_of_a_grid_point(method):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.5], dtype=F64)  # 1.0 is a grid point (output time)
    y0 = torch.zeros(1, dtype=F64)
    exact = sign_switch_exact(t).unsqueeze(1)
    opts = {"step_size": 0.25}
    worst_without = 0.0
    # Whichever branch f(1) takes, perturb evaluates each step on its own side of t = 1.
    for f in (sign_switch, sign_switch_closed):
        right = odeint(f, y0, t, method=method, options={**opts, "perturb": True})
        torch.testing.assert_close(right, exact, rtol=0, atol=1e-13)
        worst_without = max(worst_without, (odeint(f, y0, t, method=method, options=opts) - exact).abs().max())
        if method != "rk4":  # same tableau and grid as torchdiffeq's (rk4: the 3/8 rule there)
            ref = torchdiffeq.odeint(f, y0, t, method=method, options={**opts, "perturb": True})
            torch.testing.assert_close(right, ref, rtol=0, atol=1e-13)
    if method != "midpoint":  # midpoint's stage at t = 1 only feeds a state this f ignores
        assert worst_without > 0.05  # a stage at t = 1 itself takes the wrong branch for one of them


def test_perturb_with_a_grid_constructor_and_float32():
    construct = lambda f, y, t: torch.tensor([0.0, 0.3, 1.0, 1.6, 2.5], dtype=F64)  # noqa: E731
    f = Recorder(sign_switch)
    opts = {"grid_constructor": construct, "perturb": True}
    ys = odeint(f, torch.zeros(1), T_OUT.float(), method="rk4", options=opts)
    torch.testing.assert_close(ys[:, 0], sign_switch_exact(T_OUT).float(), rtol=0, atol=1e-6)
    assert 1.0 not in f.times


def test_perturb_must_be_a_bool():
    with pytest.raises(ValueError, match="option 'perturb' must be True or False, got 'yes'"):
        odeint(sign_switch, torch.ones(1), torch.tensor([0.0, 1.0]), method="euler", options={"perturb": "yes"})


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------


def test_dtype_float64_is_accepted_and_others_refused():
    y0, t = torch.ones(1), torch.tensor([0.0, 1.0])
    assert torch.equal(odeint(lambda t, y: -y, y0, t, options={"dtype": torch.float64}), odeint(lambda t, y: -y, y0, t))
    with pytest.raises(ValueError, match="option 'dtype' must be torch.float64 .*float64.*got torch.float32"):
        odeint(lambda t, y: -y, y0, t, options={"dtype": torch.float32})
