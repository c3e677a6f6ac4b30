"""A channels_last state is solved in its memory order: no per-step copies, same numbers as NCHW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noderun.ode import odeint, odeint_adjoint
from noderun.ode.inputs import FlatState

CL = torch.channels_last


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest)


class ConvDynamics(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.seen_channels_last = []

    def forward(self, t, h):
        self.seen_channels_last.append(h.is_contiguous(memory_format=CL))
        return torch.tanh(self.conv(h)) * (1 + t)


def test_flat_state_of_a_channels_last_tensor_is_a_view_in_memory_order():
    y = torch.randn(2, 3, 4, 5).contiguous(memory_format=CL)
    state = FlatState(y)
    flat = state.flatten(y)
    assert flat.data_ptr() == y.data_ptr() and flat.is_contiguous()
    back = state.unflatten(flat)
    assert back.data_ptr() == y.data_ptr() and back.is_contiguous(memory_format=CL) and torch.equal(back, y)
    ys = state.unflatten_solution(torch.stack([flat, 2 * flat]))
    assert ys.shape == (2, 2, 3, 4, 5) and ys[1].is_contiguous(memory_format=CL) and torch.equal(ys[1], 2 * y)
    # NCHW states, and ones that are both (one channel), keep the plain layout
    assert not FlatState(torch.randn(2, 3, 4, 5)).channels_last
    assert not FlatState(torch.randn(2, 1, 4, 5).contiguous(memory_format=CL)).channels_last


@pytest.mark.parametrize("solve", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
@pytest.mark.parametrize(
    "method, options", [("rk4", {"step_size": 0.125}), ("dopri5", None)], ids=["rk4", "dopri5"]
)
def test_channels_last_solve_equals_the_contiguous_one(solve, method, options):
    torch.manual_seed(0)
    func = ConvDynamics().double()
    h0 = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    results = []
    for layout in (torch.contiguous_format, CL):
        func.zero_grad()
        func.seen_channels_last.clear()
        x = h0.contiguous(memory_format=layout).detach().requires_grad_(True)
        ys = solve(func, x, t, method=method, rtol=1e-6, atol=1e-6, options=options)
        (ys[1:] ** 2).sum().backward()
        assert ys[-1].is_contiguous(memory_format=layout)
        assert all(seen == (layout is CL) for seen in func.seen_channels_last)
        results.append((ys.detach(), x.grad, [p.grad.clone() for p in func.parameters()]))
    (ys_a, gx_a, gp_a), (ys_b, gx_b, gp_b) = results
    assert torch.allclose(ys_a, ys_b, rtol=0, atol=1e-12)
    assert torch.allclose(gx_a, gx_b, rtol=1e-9, atol=1e-12)
    for a, b in zip(gp_a, gp_b):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
