"""The ODE block's solver backends (noderun.ode, torchdiffeq) and network options (time channel, memory format)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from noderun.errors import ConfigError
from noderun.models import build_model
from noderun.models.odenet import build_odenet
from noderun.models.solver import SolverSpec
from noderun.ode import track_stats
from noderun.runner import train

pytest.importorskip("torchdiffeq")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest)

VARIANTS = [
    {"backend": "native", "time_channel": "exact", "channels_last": False},
    {"backend": "native", "time_channel": "exact", "channels_last": True},
    {"backend": "native", "time_channel": "concat", "channels_last": False},
    {"backend": "torchdiffeq", "time_channel": "concat", "channels_last": False},  # the reference as published
    {"backend": "torchdiffeq", "time_channel": "exact", "channels_last": True},
]


def _outputs_and_grads(solver: dict, variants, adjoint: bool = True):
    """Each variant with the same weights on the same float64 batch: (logits, flat gradient, stats)."""
    torch.manual_seed(0)
    weights = build_odenet(channels=8).double().state_dict()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    results = []
    for variant in variants:
        variant = dict(variant)
        spec = SolverSpec(**solver, adjoint=adjoint, backend=variant.pop("backend", "native"))
        model = build_odenet(channels=8, solver=spec, **variant).double()
        model.load_state_dict(weights)
        with track_stats() as stats:
            logits = model(x)
            F.cross_entropy(logits, y).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logits.detach(), grad, stats))
    return results


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("method", ["midpoint"])
def test_backends_and_network_variants_agree_to_round_off(method, adjoint):
    """Fixed steps: both libraries do the same arithmetic, so every variant agrees to ~1e-13."""
    solver = {"method": method, "options": {"step_size": 0.25}}
    (ref_logits, ref_grad, _), *others = _outputs_and_grads(solver, VARIANTS, adjoint=adjoint)
    for variant, (logits, grad, _) in zip(VARIANTS[1:], others):
        assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-12), variant
        assert (grad - ref_grad).norm() <= 1e-10 * ref_grad.norm(), variant


@pytest.mark.parametrize(
    "tol, logits_bound, grad_bound",
    [(1e-5, 2e-4, 0.15), pytest.param(1e-7, 2e-5, 3e-2, marks=pytest.mark.slow)],
    ids=["1e-5", "1e-7"],
)
def test_backends_agree_with_dopri5(tol, logits_bound, grad_bound):
    """Adaptive: the step sequences differ, both converge to the same solution and gradient.

    Measured (logits max difference, gradient relative difference): 3e-5 and 5e-2 at 1e-5,
    3e-6 and 6e-3 at 1e-7, 7e-7 and 1.6e-3 at 1e-8. The freshly initialised dynamics are
    stiff (GroupNorm over single-channel groups of 6x6 maps), so the adjoint gradients
    converge slowly in the tolerance. The NFE show both solves ran at the given tolerance.
    """
    solver = {"method": "dopri5", "rtol": tol, "atol": tol}
    (ours, our_grad, our_stats), (theirs, their_grad, their_stats) = _outputs_and_grads(
        solver, [VARIANTS[0], VARIANTS[3]])
    assert torch.allclose(ours, theirs, rtol=0, atol=logits_bound)
    assert (our_grad - their_grad).norm() <= grad_bound * our_grad.norm()
    for phase in ("nfe_forward", "nfe_backward"):
        ratio = getattr(their_stats, phase) / getattr(our_stats, phase)
        assert 0.5 < ratio < 2, (phase, ratio)


def test_torchdiffeq_nfe_is_counted_by_phase_into_track_stats():
    """rk4 with step 0.25 over [0, 1]: 4 steps x 4 stages forward, and as many in the adjoint backward."""
    solver = {"method": "rk4", "options": {"step_size": 0.25}}
    variants = [{"backend": "native"}, {"backend": "torchdiffeq"}]
    for adjoint, expected in ((True, (16, 16)), (False, (16, 0))):
        for _ in range(2):  # never carried over between blocks
            for (_, _, stats) in _outputs_and_grads(solver, variants, adjoint=adjoint):
                assert (stats.nfe_forward, stats.nfe_backward, stats.num_solves) == (*expected, 1)


def test_torchdiffeq_seminorm_maps_to_its_adjoint_option(monkeypatch):
    import torchdiffeq

    seen = {}
    original = torchdiffeq.odeint_adjoint

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint_adjoint", spy)
    model = build_odenet(channels=8, solver=SolverSpec(backend="torchdiffeq", seminorm=True))
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert seen["adjoint_options"] == {"norm": "seminorm"} and seen["method"] == "dopri5"
    assert seen["adjoint_params"] == tuple(model[1].func.parameters())


def test_channels_last_block_keeps_parameter_names_and_returns_contiguous():
    plain, fast = build_odenet(channels=8), build_odenet(channels=8, channels_last=True, time_channel="concat")
    assert list(plain.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(plain.state_dict())
    assert fast[1].func.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = fast[1](torch.rand(2, 8, 6, 6))
    assert out.is_contiguous()


def test_invalid_backend_is_a_one_line_config_error(compose_config):
    cfg = compose_config(["model=odenet", "solver.backend=jax"])
    with pytest.raises(ConfigError) as info:
        SolverSpec.from_config(cfg.solver, default_adjoint=True)
    message = str(info.value)
    assert "\n" not in message and "'jax'" in message and "['native', 'torchdiffeq']" in message


def test_torchdiffeq_backend_rejects_a_method_it_lacks(compose_config):
    cfg = compose_config(["model=odenet", "solver=tsit5", "solver.backend=torchdiffeq"])
    with pytest.raises(ConfigError, match="tsit5.*solver.backend=native"):
        SolverSpec.from_config(cfg.solver, default_adjoint=True)


def test_missing_torchdiffeq_says_how_to_install_it(monkeypatch, compose_config):
    cfg = compose_config(["model=odenet", "solver.backend=torchdiffeq"])
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # import torchdiffeq -> ImportError
    with pytest.raises(ConfigError, match=r"pip install noderun\[torchdiffeq\]"):
        SolverSpec.from_config(cfg.solver, default_adjoint=True)


def test_invalid_time_channel_is_a_config_error(compose_config):
    cfg = compose_config(["model=odenet", "model.time_channel=stack"])
    with pytest.raises(ConfigError, match=r"model.time_channel='stack'.*\['concat', 'exact'\]"):
        build_model(cfg.model, SolverSpec())


def test_configs_saved_before_the_options_existed_still_build(compose_config):
    """Checkpoints hold their model config: one without time_channel/channels_last builds the default net."""
    from omegaconf import OmegaConf

    old = OmegaConf.create({"name": "odenet", "channels": 8, "adjoint": True, "augment": True})
    old_solver = OmegaConf.create({k: v for k, v in OmegaConf.to_container(compose_config().solver).items()
                                   if k != "backend"})
    block = build_model(old, SolverSpec.from_config(old_solver, default_adjoint=True))[1]
    assert block.solver.backend == "native" and block.func.time_channel == "exact"


def test_training_with_the_torchdiffeq_backend_records_honest_nfe(compose_config, mnist_dir, tmp_path):
    """The reference configuration trains, and its rows count NFE like the native backend's."""
    cfg = compose_config(["model=odenet", "solver=rk4", "solver.step_size=0.5", "solver.backend=torchdiffeq",
                          "model.time_channel=concat", "model.channels_last=false", "profile=smoke",
                          f"data_dir={mnist_dir}", f"results_dir={tmp_path}", "profile.train_size=192"])
    row = train(cfg, log=lambda *_: None)
    assert (row["nfe_forward"], row["nfe_backward"]) == (8, 8)  # 2 steps x 4 stages, every iteration


def test_nnpack_convolutions_give_the_network_of_torch_convolutions():
    """float32 (NNPACK's domain): the same network up to NNPACK's larger round-off.

    Measured against float64: logits 6e-7 (torch 3e-7), gradients 4e-4 (torch 2e-6): the
    adjoint's backward reconstruction of h(t) amplifies the convolutions' round-off. The
    adjoint gradient's own error at the training tolerance (1e-3) is ~5%, 100x larger.
    """
    from noderun.models.conv import nnpack_available

    if not nnpack_available():
        pytest.skip("this PyTorch has no NNPACK")
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    results = []
    for conv_impl in ("torch", "nnpack"):
        torch.manual_seed(0)
        model = build_odenet(channels=16, solver=SolverSpec(method="rk4", options={"step_size": 0.25}),
                             conv_impl=conv_impl)
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (ref, ref_grad), (out, grad) = results
    assert torch.allclose(out, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    assert (grad - ref_grad).norm() <= 2e-3 * ref_grad.norm()


def test_seminorm_keeps_the_forward_options_for_the_backward_solve(monkeypatch):
    import noderun.ode
    from omegaconf import OmegaConf

    from noderun.config import SolverConfig

    seen = {}
    real = noderun.ode.odeint_adjoint

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(noderun.ode, "odeint_adjoint", spy)
    cfg = OmegaConf.merge(OmegaConf.structured(SolverConfig), {"seminorm": True, "max_num_steps": 77})
    spec = SolverSpec.from_config(cfg, default_adjoint=True)
    model = build_odenet(channels=8, solver=spec)
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    assert seen["options"] == {"max_num_steps": 77}
    assert seen["adjoint_options"] == {"max_num_steps": 77, "norm": "seminorm"}

