"""Planar NF and planar CNF: log-determinants, traces, normalisation, runs, tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from noderun.data.densities import ENERGIES, energy, log_normalizer, sample_toy
from noderun.errors import ConfigError
from noderun.models.flows import PlanarCNF, PlanarNF, standard_normal_logprob
from noderun.results import read_results
from noderun.models.solver import SolverSpec
from noderun.report.flows import figures, render
from noderun.runner import train, validate


def _nf(layers=4, seed=0):
    torch.manual_seed(seed)
    flow = PlanarNF(layers).double()
    with torch.no_grad():  # large parameters, so the constraint on u matters
        flow.w.normal_(0, 1.5)
        flow.u.normal_(0, 1.5)
        flow.b.normal_(0, 0.5)
    return flow


def test_nf_constraint_keeps_every_layer_invertible():
    flow = _nf(16)
    assert ((flow.w * flow.u_hat()).sum(-1) > -1).all()


def test_nf_logdet_matches_autograd_determinant():
    flow = _nf(4)
    z = torch.randn(6, 2, dtype=torch.float64)
    _, logdet = flow(z)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda x: flow(x[None])[0][0], z[i])
        assert logdet[i].item() == pytest.approx(torch.linalg.det(jac).abs().log().item(), abs=1e-8)


def test_nf_inverse_inverts():
    flow = _nf(8)
    z = torch.randn(50, 2, dtype=torch.float64)
    assert torch.allclose(flow.inverse(flow(z)[0]), z, atol=1e-8)


def _cnf(width=5, trace="exact", seed=0, scale=0.7):
    torch.manual_seed(seed)
    cnf = PlanarCNF(width, trace=trace, solver=SolverSpec(rtol=1e-6, atol=1e-6)).double()
    with torch.no_grad():
        for p in cnf.parameters():
            p.normal_(0, scale)
    return cnf


def test_cnf_exact_trace_matches_full_jacobian():
    dyn = _cnf().dynamics
    t = torch.tensor(0.3, dtype=torch.float64)
    z = torch.randn(5, 2, dtype=torch.float64)
    _, trace = dyn.velocity_and_trace(t, z)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda x: dyn.velocity(t, x[None])[0], z[i])
        # float64, traces up to ~3: differences measured at most 1.4e-15 over 50 seeds; 1e-12 leaves ~1000x room
        assert trace[i].item() == pytest.approx(torch.trace(jac).item(), rel=1e-12, abs=1e-12)


def test_hutchinson_estimator_is_unbiased():
    dyn = _cnf(width=8).dynamics
    t = torch.tensor(0.7, dtype=torch.float64)
    z = torch.randn(1, 2, dtype=torch.float64)
    exact = dyn.velocity_and_trace(t, z)[1].item()
    probes = 20_000
    noise = torch.randint(0, 2, (probes, 2), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    estimates = dyn.velocity_and_trace(t, z.expand(probes, 2), noise)[1]
    standard_error = estimates.std().item() / math.sqrt(probes)
    assert abs(estimates.mean().item() - exact) < 4 * standard_error + 1e-12
    assert estimates.std().item() > 0  # it is an estimator, not the trace itself


def _grid(limit=7.0, points=201):
    axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
    z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([z1, z2], -1).reshape(-1, 2), (axis[1] - axis[0]).item() ** 2


def test_cnf_density_integrates_to_one():
    cnf = _cnf(width=4, scale=0.3)
    cnf.solver = cnf.solver.replace(rtol=1e-5, atol=1e-5)
    x, cell = _grid(limit=6.0, points=81)
    with torch.no_grad():
        mass = cnf.log_prob(x).exp().sum().item() * cell
    assert mass == pytest.approx(1.0, abs=0.02)


def test_nf_density_integrates_to_one():
    flow = _nf(6)
    x, cell = _grid()
    with torch.no_grad():
        z, logdet = flow(x)
        mass = (standard_normal_logprob(z) + logdet).exp().sum().item() * cell
    assert mass == pytest.approx(1.0, abs=0.02)


def test_cnf_forward_and_log_prob_agree():
    """log q of pushed samples equals log p of the same points solved backwards."""
    cnf = _cnf(width=3)
    z0 = torch.randn(20, 2, dtype=torch.float64)
    with torch.no_grad():
        x, logq = cnf(z0)
        assert torch.allclose(cnf.log_prob(x), logq, atol=1e-4)


def test_energies_and_toy_data():
    for name in ENERGIES:
        assert math.isfinite(log_normalizer(name))
        assert torch.isfinite(energy(name, torch.randn(10, 2))).all()
    a = sample_toy("two_moons", 100, torch.Generator().manual_seed(1))
    b = sample_toy("two_moons", 100, torch.Generator().manual_seed(1))
    assert a.shape == (100, 2) and torch.equal(a, b)
    radii = sample_toy("two_circles", 2000, torch.Generator().manual_seed(0), noise=0.0).norm(dim=-1)
    assert torch.allclose(radii.sort().values[[0, -1]], torch.tensor([1.5, 3.0]), atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=density_nf", "dataset.target=u2"],
        ["experiment=density_cnf", "model.width=2", "model.trace=hutchinson"],
        ["experiment=mle_nf", "dataset=two_moons"],
        ["experiment=mle_cnf", "dataset=two_moons", "model.width=4", "solver.rtol=1e-3", "solver.atol=1e-3"],
    ],
)
def test_smoke_runs_write_rows(compose_config, tmp_path, overrides):
    cfg = compose_config([*overrides, "profile=smoke", "model.eval_samples=500", f"results_dir={tmp_path}"])
    row = train(cfg, log=lambda *_: None)
    frame = read_results(tmp_path)
    assert len(frame) == 1 and frame["task"].iloc[0] == "flows"
    assert math.isfinite(row["kl"] if row["kind"] == "density" else row["test_nll"])
    assert list((tmp_path / "flows" / "smoke").glob("*.npz"))
    if "experiment=mle_nf" in overrides:
        assert figures(tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset.target=u9", "dataset.target"),
        ("model.width=0", "model.width"),
        ("model.trace=exactly", "model.trace"),
        ("model.iterations.smoke=0", "model.iterations.smoke"),
        ("~model.iterations.smoke", "model.iterations"),
    ],
)
def test_invalid_values_are_rejected(compose_config, override, message):
    cfg = compose_config(["experiment=density_cnf", "profile=smoke", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_tables_render_with_missing_cells():
    def row(model, target, width, loss, kind="density", nll=None):
        return {"task": "flows", "status": "ok", "kind": kind, "model": model, "target": target, "width": width,
                "loss": loss, "test_nll": nll}

    rows = pd.DataFrame([row("planar_nf", "u1", 2, 1.0), row("planar_cnf", "u1", 2, 0.5),
                         row("planar_nf", "u2", 8, 1.0), row("planar_cnf", "u2", 8, 2.0),
                         row("planar_cnf", "u3", 32, 0.1),
                         row("planar_cnf", "two_moons", 64, 1.0, "mle", 1.2)])
    sections = dict(render(rows, "quick"))
    density = sections["Figure 4: density matching (planar NF vs planar CNF)"]
    assert "CNF mean < NF mean at equal K = M in 1 of 2 cells" in density
    assert density.count(" - ") >= 10
    mle = sections["Figure 5: maximum likelihood (planar NF vs planar CNF)"]
    assert "Two Circles" in mle and "1.200" in mle


@pytest.mark.parametrize("overrides, expected", [
    (["profile=quick"], (1e-4, 1e-4)),
    (["profile=paper"], (1e-5, 1e-5)),
    (["profile=smoke"], (1e-3, 1e-3)),
    (["profile=quick", "solver.rtol=1e-3"], (1e-3, 1e-4)),  # the command line wins over the profile default
    (["profile=smoke", "solver.rtol=1e-6", "solver.atol=1e-7"], (1e-6, 1e-7)),
])
def test_density_cnf_tolerance_defaults_by_profile_and_yields_to_the_command_line(compose_config, overrides,
                                                                                   expected):
    solver = SolverSpec.from_config(compose_config(["experiment=density_cnf", *overrides]).solver, True)
    assert (solver.rtol, solver.atol) == pytest.approx(expected)


@pytest.mark.parametrize("profile, expected", [("smoke", 1e-3), ("quick", 1e-4), ("paper", 1e-5)])
def test_mle_cnf_tolerance_by_profile(compose_config, profile, expected):
    solver = SolverSpec.from_config(compose_config(["experiment=mle_cnf", f"profile={profile}"]).solver, True)
    assert (solver.rtol, solver.atol) == pytest.approx((expected, expected))


def test_a_rerun_replaces_the_earlier_row_and_a_failed_cell_says_failed():
    def row(model, width, loss, timestamp, status="ok", seed=0):
        return {"task": "flows", "status": status, "kind": "density", "model": model, "target": "u1",
                "width": width, "loss": loss, "test_nll": None, "seed": seed, "profile": "quick",
                "experiment": "flows_density", "timestamp": timestamp}

    rows = pd.DataFrame([row("planar_nf", 2, 9.0, "2026-01-01T00:00:00"),  # an older budget's run of the cell
                         row("planar_nf", 2, 1.0, "2026-02-01T00:00:00"),
                         row("planar_cnf", 2, 0.5, "2026-02-01T00:00:00"),
                         row("planar_cnf", 8, None, "2026-02-01T00:00:00", status="failed: loss became nan")])
    density = dict(render(rows, "quick"))["Figure 4: density matching (planar NF vs planar CNF)"]
    first = next(line for line in density.splitlines() if line.startswith("| U1"))
    cells = [c.strip() for c in first.strip("|").split("|")]
    assert cells[1] == "1.000" and cells[4] == "0.500" and cells[5] == "failed"


@pytest.mark.parametrize("name", ["two_circles", "two_moons"])
def test_the_toy_datas_own_density_integrates_to_one_and_is_the_nll_floor(name):
    from noderun.data.densities import sample_toy, toy_log_prob

    axis = torch.linspace(-8, 8, 321, dtype=torch.float64)
    z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([z1, z2], -1).reshape(-1, 2)
    mass = float(toy_log_prob(name, grid, points=512).exp().sum() * (axis[1] - axis[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=1e-6)
    # the NLL of its own samples is (about) the density's entropy: lower than any other density's, e.g. a
    # Gaussian with the sample's mean and covariance
    x = sample_toy(name, 4000, torch.Generator().manual_seed(0)).double()
    nll = float(-toy_log_prob(name, x).mean())
    gaussian = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T))
    assert nll < float(-gaussian.log_prob(x).mean()) - 0.3
    # a finer quadrature changes nothing that matters
    assert float(-toy_log_prob(name, x[:500], points=16384).mean()) == pytest.approx(
        float(-toy_log_prob(name, x[:500]).mean()), abs=1e-6)


def test_density_table_gives_mean_std_kl_and_flags_a_cnf_that_worsens_with_width():
    def row(model, width, loss, seed, target="u1"):
        return {"task": "flows", "status": "ok", "kind": "density", "model": model, "target": target,
                "width": width, "loss": loss, "kl": loss + 3.0, "seed": seed, "profile": "quick",
                "experiment": "flows_density", "timestamp": f"2026-01-01T00:00:{seed:02d}"}

    rows = [row("planar_cnf", 2, -1.6, s) for s in (0, 1)] + [row("planar_cnf", 8, -1.9 + 0.1 * s, s) for s in (0, 1)]
    rows += [row("planar_cnf", 32, -1.5, s) for s in (0, 1)] + [row("planar_nf", 8, -1.0, s) for s in (0, 1)]
    density = dict(render(pd.DataFrame(rows), "quick"))["Figure 4: density matching (planar NF vs planar CNF)"]
    assert "-1.850 ± 0.071" in density and "1.150 ± 0.071" in density  # the loss, then the KL = loss + log Z
    assert "in 1 of 1 cells" in density and "grows with its width by more than one std on: U1 (ring)" in density


def test_mle_table_shows_the_excess_over_the_datas_own_nll():
    def row(model, nll, seed):
        return {"task": "flows", "status": "ok", "kind": "mle", "model": model, "target": "two_moons", "width": 64,
                "loss": nll, "test_nll": nll, "true_nll": 2.4, "excess_nll": nll - 2.4, "seed": seed,
                "profile": "quick", "experiment": "flows_mle", "timestamp": f"2026-01-01T00:00:{seed:02d}"}

    rows = pd.DataFrame([row("planar_nf", 2.44, 0), row("planar_nf", 2.46, 1), row("planar_cnf", 2.42, 0),
                         row("planar_cnf", 2.42, 1)])
    mle = dict(render(rows, "quick"))["Figure 5: maximum likelihood (planar NF vs planar CNF)"]
    line = next(l for l in mle.splitlines() if l.startswith("| Two Moons"))
    assert "| 2.400 " in line and "0.050 ± 0.014" in line and "0.020 ± 0.000" in line and "| 0.40 " in line


def test_a_run_under_another_experiment_name_keeps_its_arrays_apart_from_the_figures(compose_config, tmp_path):
    base = ["experiment=density_cnf", "profile=smoke", "model.width=2", "model.eval_samples=500",
            f"results_dir={tmp_path}"]
    train(compose_config(base), log=lambda *_: None)
    figure_file = tmp_path / "flows" / "smoke" / "density_u1_planar_cnf_w2_s0.npz"
    before = figure_file.read_bytes()
    train(compose_config([*base, "experiment_name=density_tight", "model.tolerance.smoke=1e-4"]), log=lambda *_: None)
    assert figure_file.read_bytes() == before  # Figure 4's array is the first run's still
    assert (tmp_path / "flows" / "smoke" / "density_tight" / figure_file.name).exists()
