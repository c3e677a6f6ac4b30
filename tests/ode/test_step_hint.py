"""The adjoint's backward solve starts from the forward solve's last proposed step."""

import pytest
import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint, track_stats

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest)


class Dynamics(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()

    def forward(self, t, y):
        return self.net(y) * (1 + t)


def _run(func, y0, t, **kw):
    func.zero_grad()
    with track_stats() as stats:
        ys = odeint_adjoint(func, y0, t, **kw)
        (ys**2).sum().backward()
    return torch.cat([p.grad.flatten() for p in func.parameters()]), stats


@pytest.mark.parametrize("times", [[0.0, 2.0], [0.0, 0.5, 1.0, 1.5, 2.0]], ids=["one interval", "four intervals"])
def test_reusing_the_forward_step_saves_backward_evaluations_not_accuracy(times):
    func = Dynamics()
    y0 = torch.randn(8, 3, dtype=F64)
    t = torch.tensor(times, dtype=F64)
    reference = torch.autograd.grad((odeint(func, y0, t, rtol=1e-12, atol=1e-12) ** 2).sum(), tuple(func.parameters()))
    reference = torch.cat([g.flatten() for g in reference])
    results = {}
    for reuse in (False, True):
        results[reuse] = _run(func, y0, t, rtol=1e-6, atol=1e-6, adjoint_options={"reuse_forward_step": reuse})
    (g_select, s_select), (g_reuse, s_reuse) = results[False], results[True]
    # every backward interval skips the initial-step selection's evaluation, at least
    assert s_reuse.nfe_backward <= s_select.nfe_backward - (len(times) - 1)
    assert s_reuse.nfe_forward == s_select.nfe_forward
    err_select = ((g_select - reference).norm() / reference.norm()).item()
    err_reuse = ((g_reuse - reference).norm() / reference.norm()).item()
    assert err_reuse < 1e-4 and err_reuse < 3 * err_select + 1e-9


def test_a_second_backward_pass_starts_from_the_same_step():
    func = Dynamics()
    y0 = torch.randn(8, 3, dtype=F64)
    loss = (odeint_adjoint(func, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), rtol=1e-5, atol=1e-5) ** 2).sum()
    params = tuple(func.parameters())
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_an_explicit_adjoint_first_step_takes_precedence():
    func = Dynamics()
    y0 = torch.randn(8, 3, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    _, default = _run(func, y0, t, rtol=1e-6, atol=1e-6)
    _, tiny = _run(func, y0, t, rtol=1e-6, atol=1e-6, adjoint_options={"first_step": 1e-6})
    assert tiny.nfe_backward > default.nfe_backward


def test_reuse_is_the_default_and_an_adjoint_option_not_a_module_switch():
    func = Dynamics()
    y0 = torch.randn(8, 3, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    _, default = _run(func, y0, t, rtol=1e-6, atol=1e-6)
    _, reuse = _run(func, y0, t, rtol=1e-6, atol=1e-6, adjoint_options={"reuse_forward_step": True})
    _, select = _run(func, y0, t, rtol=1e-6, atol=1e-6, adjoint_options={"reuse_forward_step": False})
    assert default.nfe_backward == reuse.nfe_backward < select.nfe_backward
    import noderun.ode.adjoint as adjoint_module

    assert not hasattr(adjoint_module, "REUSE_FORWARD_STEP")


@pytest.mark.parametrize("options", [{"reuse_forward_step": "no"}, {"reuse_forward_step": 0}])
def test_reuse_forward_step_takes_a_bool(options):
    with pytest.raises(ValueError, match="'reuse_forward_step' must be True or False"):
        _run(Dynamics(), torch.randn(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), adjoint_options=options)


@pytest.mark.parametrize("options", [{"norm": "seminorm"}, {"reuse_forward_step": False}])
@pytest.mark.parametrize("method, forward", [("rk4", {"step_size": 0.1}), ("dopri5", {"step_size": 0.1})])
def test_step_control_options_are_refused_for_a_fixed_step_backward_solve(options, method, forward):
    with pytest.raises(ValueError, match=r"acts on adaptive step-size control.*fixed steps"):
        _run(Dynamics(), torch.randn(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method=method,
             options=forward, adjoint_options={**forward, **options})
