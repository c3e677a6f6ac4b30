"""RNODE regularisation: the integrated terms against closed forms, gradients by the adjoint against
backpropagation against finite differences, and the regularizer config group in runs of every ODE model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noderun.models import regularization
from noderun.models.regularization import Regularizer, collect
from noderun.models.solver import SolverSpec

F64 = torch.float64


class Linear(nn.Module):
    """dz/dt = z Aᵀ: ∂f/∂z = A for every sample."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z):
        return z @ self.a.T


def solve_with(regularizer, func, z0, t, adjoint, method="dopri5"):
    spec = SolverSpec(method=method, rtol=1e-10, atol=1e-10, adjoint=adjoint,
                      options={"max_num_steps": 100_000} if method == "dopri5" else {"step_size": 1e-3})
    with collect(regularizer) as collection:
        z = spec.solve(func, z0, t)
    return z, collection


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_the_kinetic_energy_of_exponential_decay_is_its_closed_form(adjoint):
    # z' = -a z: ∫₀ᵀ |a z0 e^{-at}|² dt = a z0² (1 - e^{-2aT}) / 2, per sample; the batch mean
    a, T = 0.7, 1.5
    z0 = torch.tensor([[1.0], [2.0], [-3.0]], dtype=F64)
    z, collection = solve_with(Regularizer(kinetic=1.0), Linear(torch.tensor([[-a]], dtype=F64)), z0,
                               torch.tensor([0.0, T], dtype=F64), adjoint)
    exact = (a * z0.pow(2) * (1 - math.exp(-2 * a * T)) / 2).mean()
    assert collection.kinetic == pytest.approx(float(exact), rel=1e-8)
    assert torch.allclose(z[-1], z0 * math.exp(-a * T), rtol=1e-8)
    assert collection.jacobian == 0 and collection.solves == 1
    assert float(collection.penalty.detach()) == pytest.approx(collection.kinetic)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_the_jacobian_term_of_a_linear_field_is_the_probes_quadratic_form(probe, monkeypatch):
    # ∂f/∂z = A: the term is ‖εᵀA‖² T per sample, whose mean over probes is ‖A‖²_F T
    torch.manual_seed(0)
    a = torch.randn(3, 3, dtype=F64)
    z0 = torch.randn(4000, 3, dtype=F64)
    probes = []
    real = regularization.draw_probe
    monkeypatch.setattr(regularization, "draw_probe", lambda z, kind: probes.append(real(z, kind)) or probes[-1])
    _, collection = solve_with(Regularizer(jacobian=2.0, probe=probe), Linear(0.1 * a), z0,
                               torch.tensor([0.0, 2.0], dtype=F64), adjoint=False)
    (eps,) = probes
    exact = 2.0 * (eps @ (0.1 * a)).pow(2).sum(1).mean()
    assert collection.jacobian == pytest.approx(float(exact), rel=1e-8)
    assert collection.jacobian == pytest.approx(2.0 * float((0.1 * a).pow(2).sum()), rel=0.05)
    if probe == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    assert float(collection.penalty.detach()) == pytest.approx(2.0 * collection.jacobian)


def test_a_solve_backwards_in_time_integrates_positive_terms():
    z0 = torch.tensor([[1.0]], dtype=F64)
    _, forward = solve_with(Regularizer(kinetic=1.0), Linear(torch.tensor([[0.5]], dtype=F64)), z0,
                            torch.tensor([0.0, 1.0], dtype=F64), adjoint=False)
    # the same trajectory z = e^{t/2}, solved from t = 1 back to 0
    _, backward = solve_with(Regularizer(kinetic=1.0), Linear(torch.tensor([[0.5]], dtype=F64)), z0 * math.exp(0.5),
                             torch.tensor([1.0, 0.0], dtype=F64), adjoint=False)
    assert backward.kinetic == pytest.approx(forward.kinetic, rel=1e-8) and forward.kinetic > 0


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    def forward(self, t, z):
        return self.net(z)


def penalty_gradient(func, z0, adjoint, probe):
    func.zero_grad()
    z = z0.clone().requires_grad_(True)
    spec = SolverSpec(rtol=1e-10, atol=1e-10, adjoint=adjoint, options={"max_num_steps": 100_000})
    regularizer = Regularizer(kinetic=0.5, jacobian=0.25)
    with torch.random.fork_rng():
        torch.manual_seed(probe)
        with collect(regularizer) as collection:
            out = spec.solve(func, z, torch.tensor([0.0, 1.0], dtype=F64))
    (collection.penalty + out[-1].sum()).backward()
    return (torch.cat([p.grad.flatten() for p in func.parameters()] + [z.grad.flatten()]),
            float(collection.penalty.detach()))


def test_the_penalty_gradient_is_the_same_by_the_adjoint_by_backprop_and_by_finite_differences():
    func, z0 = Tanh(), torch.randn(5, 2, dtype=F64)
    backprop, value = penalty_gradient(func, z0, adjoint=False, probe=3)
    adjoint, _ = penalty_gradient(func, z0, adjoint=True, probe=3)
    assert torch.allclose(adjoint, backprop, rtol=1e-6, atol=1e-9)
    # central finite difference of penalty + output in one weight (the same probe)
    weight, eps = func.net[0].weight, 1e-6
    solve_only = SolverSpec(rtol=1e-10, atol=1e-10, adjoint=False)

    def objective(shift: float) -> float:
        with torch.no_grad():
            weight[0, 0] += shift
        _, penalty = penalty_gradient(func, z0, adjoint=False, probe=3)
        with torch.no_grad():
            out = float(solve_only.solve(func, z0, torch.tensor([0.0, 1.0], dtype=F64))[-1].sum())
            weight[0, 0] -= shift
        return penalty + out

    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    assert backprop[0].item() == pytest.approx(numeric, rel=1e-5)
    assert value > 0

def test_outside_a_regularised_step_or_without_gradients_a_solve_is_plain(monkeypatch):
    called = []
    monkeypatch.setattr(regularization, "solve_regularized", lambda *a, **k: called.append(1))
    func, z0, t = Tanh(), torch.randn(3, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    spec = SolverSpec(adjoint=False)
    spec.solve(func, z0, t)
    with collect(Regularizer(kinetic=1.0)):
        with torch.no_grad():
            spec.solve(func, z0, t)
    with collect(Regularizer()):  # no weight: inactive
        spec.solve(func, z0, t)
    assert called == []


def test_tuple_states_regularise_their_first_component_only():
    def func(t, state):
        z, logp = state
        return -z, torch.full_like(logp, 100.0)

    z0 = torch.tensor([[2.0]], dtype=F64)
    _, collection = solve_with(Regularizer(kinetic=1.0), func, (z0, torch.zeros(1, dtype=F64)),
                               torch.tensor([0.0, 1.0], dtype=F64), adjoint=False)
    assert collection.kinetic == pytest.approx(4 * (1 - math.exp(-2)) / 2, rel=1e-8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kinetic=-1.0), "must be >= 0"), (dict(probe="sobol"), "valid probes"),
])
def test_invalid_regularizers_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Regularizer(**kwargs)


# ------------------------------------------------------------------ runs


SMOKE = ["profile=smoke", "profile.progress=false", "seed=0"]
LOOSE = ["solver.rtol=0.1", "solver.atol=0.1"]  # the regularised adjoint of an untrained net is stiff: loose is fast
RUNS = [
    (["model=odenet", "model.channels=8", "profile.train_size=64", "profile.test_size=64", *LOOSE], "table1"),
    (["model=anode", "model.channels=8", "profile.train_size=64", "profile.test_size=64", *LOOSE], "table1"),
    (["experiment=latent_ode_elbo", "dataset.n_spirals=40", "dataset.n_train=30", "dataset.n_val=6",
      "dataset.n_obs=30"], "table2"),
    (["experiment=density_cnf", "dataset.target=u2", "model.width=2", "model.eval_samples=200"], "flows_density"),
    (["experiment=crossing", "model=crossing_anode"], "crossing"),
]


@pytest.mark.parametrize("overrides, csv", RUNS, ids=[r[0][0] for r in RUNS])
def test_every_ode_model_trains_with_rnode_and_records_its_terms(compose_config, mnist_dir, tmp_path, overrides,
                                                                 csv):
    import pandas as pd

    from noderun.runner import train

    base = [*SMOKE, *overrides, f"data_dir={mnist_dir}", f"results_dir={tmp_path}"]
    plain = train(compose_config(base), log=lambda *_: None)
    regularized = train(compose_config([*base, "regularizer=rnode", "regularizer.kinetic=0.1",
                                        "regularizer.jacobian=0.2"]), log=lambda *_: None)
    assert plain["regularizer"] == "none" and plain["reg_kinetic"] is None and plain["reg_jacobian"] is None
    assert regularized["regularizer"] == "rnode(kinetic=0.1, jacobian=0.2, probe=rademacher)"
    assert regularized["reg_kinetic"] > 0 and regularized["reg_jacobian"] > 0
    frame = pd.read_csv(tmp_path / f"{csv}.csv")
    assert list(frame["regularizer"]) == ["none", "rnode(kinetic=0.1, jacobian=0.2, probe=rademacher)"]
    # the files saved beside the rows are the two runs' own: the figures keep drawing the unregularised one
    saved = [p.name for p in tmp_path.rglob("*") if p.suffix in (".npz", ".pt") and "runs" not in p.parts]
    assert sum("_rnode_k0.1_j0.2_rademacher" in name for name in saved) == 1
    assert sum("_rnode" not in name for name in saved) == 1
    # the paper's tables take the unregularised run; the regularised one is in its own section beside it
    from noderun.report import render_all
    from noderun.results import read_results

    paper, regularisation = render_all(read_results(tmp_path)).split("## Regularisation")
    assert "rnode(kinetic=0.1" not in paper
    lines = [line for line in regularisation.splitlines() if line.startswith("| ") and "NFE" not in line]
    assert [line.split("|")[2].strip() for line in lines] == ["none", "rnode(kinetic=0.1, jacobian=0.2, probe=rademacher)"]


def test_the_penalty_is_added_to_the_loss_that_is_minimised(compose_config, tmp_path, monkeypatch):
    from noderun import runner

    from noderun.models import regularization as module

    seen = []

    original = module.collect

    def spy(regularizer):
        manager = original(regularizer)
        collection = manager.__enter__()
        seen.append(collection)

        class Wrapper:
            def __enter__(self):
                return collection

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Wrapper()

    monkeypatch.setattr(module, "collect", spy)
    cfg = compose_config([*SMOKE, "experiment=crossing", "model=crossing_ode", "regularizer=rnode",
                          "regularizer.jacobian=0", f"results_dir={tmp_path}"])
    row = runner.train(cfg, log=lambda *_: None)
    assert len(seen) == 5 and all(c.solves == 1 and c.penalty is not None and c.jacobian == 0 for c in seen)
    assert row["reg_jacobian"] == 0
    # the last step's kinetic term is the row's (the window of the last 10 % is that one step)
    assert row["reg_kinetic"] == pytest.approx(seen[-1].kinetic, abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["model=mlp", "regularizer=rnode"], "trains none"),
    (["model=resnet", "regularizer=rnode"], "trains none"),
    (["experiment=rnn_spirals", "regularizer=rnode"], "trains none"),
    (["experiment=density_nf", "regularizer=rnode"], "trains none"),
    (["experiment=figure3", "regularizer=rnode"], "trains none"),
    (["model=odenet", "regularizer=rnode", "regularizer.kinetic=0", "regularizer.jacobian=0"], "has no effect"),
    (["model=odenet", "regularizer.kinetic=0.5"], "no effect with regularizer=none"),
    (["model=odenet", "regularizer=rnode", "regularizer.kinetic=-1"], "finite number >= 0"),
    (["model=odenet", "regularizer=rnode", "regularizer.probe=sobol"], "valid probes"),
    (["model=odenet", "regularizer=rnode", "regularizer.jacobian=0", "regularizer.probe=gaussian"],
     "no effect with regularizer.jacobian=0"),
])
def test_a_regularizer_that_would_not_act_is_refused_in_one_line(compose_config, overrides, message):
    from noderun.errors import ConfigError
    from noderun.runner import validate

    with pytest.raises(ConfigError, match=message) as info:
        validate(compose_config(overrides))
    assert "\n" not in str(info.value)


class GrowingTanh(nn.Module):
    """dz/dt = 3 tanh(z Aᵀ) (1 + t): a field whose terms vary along the solve."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z):
        return 3 * torch.tanh(z @ self.a.T) * (1 + t)


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 0.0)], ids=["both", "kinetic"])
def test_the_terms_do_not_change_the_steps_of_the_solve(backend, adjoint, weights):
    # K and J are integrals nothing in the solve depends on: step-size control measures the state's error only,
    # so a regularised solve takes the unregularised solve's steps and returns the same state.
    from noderun.ode.stats import track_stats

    generator = torch.Generator().manual_seed(0)
    func = GrowingTanh(torch.randn(6, 6, generator=generator, dtype=F64))
    z0 = torch.randn(16, 6, generator=generator, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    spec = SolverSpec(method="dopri5", rtol=1e-3, atol=1e-3, adjoint=adjoint, backend=backend)
    with track_stats() as plain_stats:
        plain = spec.solve(func, z0, t)
    with track_stats() as stats, collect(Regularizer(*weights)) as collection:
        regularised = spec.solve(func, z0, t)
    assert collection.kinetic > 1
    assert stats.nfe_forward == plain_stats.nfe_forward
    assert torch.allclose(regularised, plain, rtol=1e-12, atol=1e-12)
