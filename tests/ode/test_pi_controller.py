"""The PI step-size controller (options={'controller': 'pi', 'pcoeff': ..., 'icoeff': ...})."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint, track_stats
from noderun.ode.step_control import PIController, StepController, make_controller

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see tests/conftest.py)


def test_pi_with_pcoeff_0_and_icoeff_1_is_the_integral_controller():
    rng = random.Random(0)
    integral = StepController(4)
    pi = PIController(4, pcoeff=0.0, icoeff=1.0)
    h = 0.1
    for _ in range(200):
        ratio = rng.choice([0.0, math.inf, 10 ** rng.uniform(-6, 2)])
        accepted = ratio <= 1.0
        a, b = integral.next_step(h, ratio, accepted), pi.next_step(h, ratio, accepted)
        assert a == pytest.approx(b, rel=1e-12)  # Python floats (float64) on both sides
        h = a


def test_pi_formula_memory_and_rejections():
    pi = PIController(4, safety=0.9, ifactor=10.0, dfactor=0.2, pcoeff=0.3, icoeff=0.4)
    k = 5
    # first accepted step: no previous ratio yet
    assert pi.next_step(1.0, 0.1, True) == pytest.approx(0.9 * 0.1 ** (-0.7 / k))
    # second: the previous accepted step's ratio enters with exponent +pcoeff / k
    assert pi.next_step(1.0, 0.05, True) == pytest.approx(0.9 * 0.05 ** (-0.7 / k) * 0.1 ** (0.3 / k))
    # a rejection shrinks as the integral controller does and leaves the memory alone
    assert pi.next_step(1.0, 4.0, False) == pytest.approx(0.9 * 4.0 ** (-1 / k))
    assert pi.next_step(1.0, 0.01, True) == pytest.approx(0.9 * 0.01 ** (-0.7 / k) * 0.05 ** (0.3 / k))
    # a zero error grows by ifactor and forgets (no scale to remember)
    assert pi.next_step(1.0, 0.0, True) == 10.0
    assert pi.next_step(1.0, 0.1, True) == pytest.approx(0.9 * 0.1 ** (-0.7 / k))
    # clipping, and never shrink after an acceptance / grow after a rejection
    assert pi.next_step(1.0, 1e-30, True) == 10.0
    assert pi.next_step(1.0, 1e30, False) == 0.2
    assert pi.next_step(1.0, 0.999, True) == 1.0
    assert pi.next_step(1.0, math.nan, False) == 0.2


def test_make_controller():
    assert isinstance(make_controller("integral", 4, 0.9, 10.0, 0.2, 0.3, 0.4), StepController)
    pi = make_controller("pi", 4, 0.8, 5.0, 0.1, 0.2, 0.5)
    assert isinstance(pi, PIController) and (pi.safety, pi.ifactor, pi.dfactor, pi.pcoeff, pi.icoeff) == (
        0.8, 5.0, 0.1, 0.2, 0.5,
    )  # fmt: skip


# Skew-symmetric A (as in test_solve): y(t) = expm(A t) y0.
A = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [0.0, -2.0, 0.0]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)
TOL_FACTOR = {"bosh3": 20, "dopri5": 10, "tsit5": 10, "dopri8": 10}


@pytest.mark.parametrize("method", list(TOL_FACTOR))
def test_pi_controller_meets_the_tolerance(method):
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    exact = torch.stack([torch.linalg.matrix_exp(A * ti) @ Y0 for ti in t])
    for rtol in (1e-3, 1e-5, 1e-7, 1e-10):
        ys = odeint(lambda t, y: y @ A.T, Y0, t, method=method, rtol=rtol, atol=rtol, options={"controller": "pi"})
        err = (ys - exact).abs().max().item()
        assert err <= TOL_FACTOR[method] * rtol * 2.5, (rtol, err)


def vdp(t, y, mu=2.0):
    x, v = y[:, 0], y[:, 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=1)


def test_pi_controller_rejects_fewer_steps_on_van_der_pol():
    # bench_controller.py's first problem: 256 oscillators, 200 outputs.  At loose tolerances
    # the integral controller's step sequence oscillates (accept, grow, reject) where the PI
    # controller's is smooth.
    torch.manual_seed(0)
    y0 = (torch.randn(256, 2) + torch.tensor([2.0, 0.0])).to(F64)
    t = torch.linspace(0.0, 7.63, 200, dtype=F64)
    ref = odeint(vdp, y0, t, method="dopri8", rtol=1e-12, atol=1e-12)
    for tol in (1e-3, 1e-4, 1e-5):
        stats = {}
        for name, opts in (("integral", None), ("pi", {"controller": "pi"})):
            with track_stats() as s:
                ys = odeint(vdp, y0, t, rtol=tol, atol=tol, options=opts)
            stats[name] = (s.nfe_forward, s.steps_rejected, (ys - ref).abs().max().item())
        print(f"rtol=atol={tol}: integral NFE/rejected/error {stats['integral']}, pi {stats['pi']}")
        assert stats["pi"][1] < stats["integral"][1] / 2
        assert stats["pi"][0] < 0.95 * stats["integral"][0]
        assert stats["pi"][2] < 1.5 * stats["integral"][2]


def test_integral_stays_the_default():
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    f = lambda t, y: y @ A.T  # noqa: E731
    assert torch.equal(odeint(f, Y0, t), odeint(f, Y0, t, options={"controller": "integral"}))
    assert not torch.equal(odeint(f, Y0, t), odeint(f, Y0, t, options={"controller": "pi"}))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    def forward(self, t, y):
        return self.net(y)


def test_pi_controller_in_the_adjoint():
    func = MLP()
    y0 = torch.randn(4, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    params = tuple(func.parameters())
    ref = torch.autograd.grad(odeint(func, y0, t, rtol=1e-12, atol=1e-12).pow(2).sum(), params)
    opts = {"controller": "pi", "pcoeff": 0.2, "icoeff": 0.5}
    got = torch.autograd.grad(odeint_adjoint(func, y0, t, rtol=1e-9, atol=1e-9, options=opts).pow(2).sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"controller": "pid"}, "option 'controller' must be one of 'integral', 'pi', got 'pid'"),
        ({"pcoeff": 0.3}, "option 'pcoeff' needs controller='pi'"),
        ({"controller": "integral", "icoeff": 0.4}, "option 'icoeff' needs controller='pi'"),
        ({"controller": "pi", "icoeff": 0.0}, "option 'icoeff' must be > 0, got 0.0"),
        ({"controller": "pi", "pcoeff": -0.1}, r"option 'pcoeff' must be >= 0, got -0.1"),
        ({"controller": "pi", "pcoeff": math.inf}, "option 'pcoeff' must be finite"),
        ({"controller": "pi", "step_size": 0.1}, r"options \['controller'\] have no effect with a fixed 'step_size'"),
    ],
)
def test_controller_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), options=options)


def test_controller_is_an_adaptive_option():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'controller' for method 'rk4'"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4", options={"controller": "pi"})
