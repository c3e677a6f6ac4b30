"""Table 1 architectures: parameter counts, shapes, the exact time-channel convolution."""

from __future__ import annotations

import pytest
import torch

from noderun.models.mlp import build_mlp
from noderun.models.odenet import ConvODEFunc, TimeConv2d, build_odenet
from noderun.models.resnet import build_resnet


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "build, expected",
    [(build_mlp, 238_510), (build_resnet, 576_778), (build_odenet, 208_266)],
    ids=["mlp", "resnet", "odenet"],
)
def test_parameter_counts_match_the_paper_architectures(build, expected):
    assert count(build()) == expected


def test_resnet_depth_scales_parameters_by_one_block():
    per_block = count(build_resnet(n_blocks=2)) - count(build_resnet(n_blocks=1))
    assert per_block == 73_984  # two 3x3 64->64 bias-free convs and two GroupNorms
    assert count(build_resnet(n_blocks=0)) + 6 * per_block == 576_778


@pytest.mark.parametrize("build", [build_mlp, build_resnet], ids=["mlp", "resnet"])
def test_classifier_output_shape(build):
    assert build()(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_time_channel_identity_matches_concatenation():
    """conv(cat(t*1, h)) == conv_h(h) + t * conv_1(1), borders included."""
    torch.manual_seed(0)
    conv = TimeConv2d(8).double()
    h = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    for t in (0.0, 0.37, 1.0, -2.5):
        t = torch.tensor(t, dtype=torch.float64)
        torch.testing.assert_close(conv(t, h), conv.forward_concat(t, h), rtol=1e-12, atol=1e-12)
    # The border of conv_1(1) differs from its interior because of the zero padding.
    time_map = conv.time_map(6, 6)
    assert not torch.allclose(time_map[:, 0, 0], time_map[:, 3, 3])


def test_time_channel_gradients_match_concatenation():
    torch.manual_seed(1)
    conv = TimeConv2d(4).double()
    h = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    grads_fast = torch.autograd.grad(conv(t, h).square().sum(), (h, t, conv.weight, conv.bias))
    grads_ref = torch.autograd.grad(conv.forward_concat(t, h).square().sum(), (h, t, conv.weight, conv.bias))
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref)


def test_time_conv_has_the_parameters_of_a_conv_over_c_plus_one_channels():
    conv = TimeConv2d(64)
    reference = torch.nn.Conv2d(65, 64, 3, padding=1)
    assert conv.weight.shape == reference.weight.shape and conv.bias.shape == reference.bias.shape


def test_ode_dynamics_preserve_shape():
    func = ConvODEFunc(64)
    h = torch.randn(2, 64, 6, 6)
    assert func(torch.tensor(0.5), h).shape == h.shape


def solve_a_small_field(compose_config, overrides):
    """(spec, forward evaluations, backward evaluations, gradient of y0) of one adjoint solve of a small
    tanh field over [0, 1] with the solver of `overrides` (ODE-Net, smoke profile)."""
    from torch import nn

    from noderun.models.solver import SolverSpec

    cfg = compose_config(["model=odenet", "profile=smoke", *overrides])
    spec = SolverSpec.from_config(cfg.solver, default_adjoint=True)
    torch.manual_seed(0)
    field = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))
    calls = []
    field.register_forward_hook(lambda *_: calls.append(1))
    y0 = torch.randn(4, 3, requires_grad=True)
    y = spec.solve(lambda t, y: field(y), y0, torch.tensor([0.0, 1.0]), adjoint_params=tuple(field.parameters()))
    forward = len(calls)
    y[-1].square().sum().backward()
    return spec, forward, len(calls) - forward, y0.grad


def test_solver_reuse_forward_step_false_selects_the_backward_first_step_afresh(compose_config):
    """The option reaches the adjoint: the backward solve of the same problem spends other evaluations."""
    def backward_nfe(overrides):
        spec, _, backward, _ = solve_a_small_field(compose_config, ["solver.rtol=1e-5", "solver.atol=1e-5", *overrides])
        return spec, backward

    reused, fresh = backward_nfe([]), backward_nfe(["solver.reuse_forward_step=false"])
    assert reused[0].adjoint_options.get("reuse_forward_step", True) is True
    assert fresh[0].adjoint_options["reuse_forward_step"] is False
    assert fresh[1] != reused[1]


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_solver_first_step_sets_the_forward_solves_first_step_only(compose_config, backend):
    """A large first step changes the forward evaluations; the backward solve keeps its own rule."""
    def run(overrides):
        spec, forward, _, gradient = solve_a_small_field(compose_config, [f"solver.backend={backend}", *overrides])
        return spec, forward, gradient

    default, chosen = run([]), run(["solver.first_step=1.0"])
    assert chosen[0].odeint_kwargs["options"]["first_step"] == 1.0
    assert "first_step" not in chosen[0].adjoint_options and "first_step" not in default[0].options
    assert chosen[1] != default[1]  # the heuristic's first step on this field is far below 1
    torch.testing.assert_close(chosen[2], default[2], rtol=1e-2, atol=1e-3)  # same gradient within tolerance
