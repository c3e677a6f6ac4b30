"""The crossing experiment (beyond the paper): ODE against augmented ODE on maps a flow cannot represent."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from noderun.checkpoint import RunInterrupted
from noderun.config import CONF_DIR
from noderun.data.crossing import sample, sample_1d, sample_2d
from noderun.errors import ConfigError
from noderun.models.crossing import CrossingODE
from noderun.models.solver import SolverSpec
from noderun.report import crossing as report
from noderun.report import render_all
from noderun.results import read_results
from noderun.runner import train, validate
from noderun.tasks.crossing import CrossingTask, artifact_path

QUIET = lambda *_: None  # noqa: E731
EXACT = SolverSpec(rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------------------- data


def test_1d_data_are_intervals_around_plus_and_minus_one_with_flipped_targets():
    x, y = sample_1d(100, 0.25, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (100, 1)
    assert torch.equal(y, -torch.sign(x)) and (y == 1).sum() == 50
    assert ((x.abs() - 1).abs() <= 0.25).all() and (x.abs() - 1).abs().max() > 0.2
    points, targets = sample_1d(4, 0.0, torch.Generator().manual_seed(0))  # Dupont et al.'s g_1d
    assert points[:, 0].tolist() == [-1, -1, 1, 1] and targets[:, 0].tolist() == [1, 1, -1, -1]


def test_2d_data_are_a_disc_inside_a_ring():
    x, y = sample_2d(2000, 0.5, 1.0, 1.5, 0.25, torch.Generator().manual_seed(0))
    r = x.norm(dim=1)
    assert x.shape == (2000, 2) and y.shape == (2000, 1) and (y == -1).sum() == 500
    assert (r[y[:, 0] < 0] < 0.5).all() and ((r[y[:, 0] > 0] >= 1.0) & (r[y[:, 0] > 0] < 1.5)).all()
    # uniform by area: a quarter of the disc's points lie within half its radius
    assert abs((r[y[:, 0] < 0] < 0.25).float().mean().item() - 0.25) < 0.05
    again, _ = sample_2d(2000, 0.5, 1.0, 1.5, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


# --------------------------------------------------------------------------- model


def test_the_state_is_zero_padded_and_read_out_as_configured():
    torch.manual_seed(0)
    anode = CrossingODE(2, 3, hidden=8, readout="linear", solver=SolverSpec())
    x = torch.rand(5, 2)
    assert torch.equal(anode.initial_state(x), torch.cat([x, torch.zeros(5, 3)], 1))
    assert anode(x).shape == (5, 1) and anode.flow(x).shape == (5, 5)
    times = torch.linspace(0, 1, 7)
    path = anode.trajectory(x, times)
    assert path.shape == (7, 5, 5) and torch.equal(path[0], anode.initial_state(x))
    assert torch.allclose(path[-1], anode.flow(x, adjoint=False), atol=1e-5)
    state = CrossingODE(1, 1, hidden=8, readout="state")
    assert torch.equal(state.readout(torch.tensor([[0.3, -2.0]])), torch.tensor([[0.3]]))  # a dropped
    with pytest.raises(ValueError, match="data_dim = 1"):
        CrossingODE(2, 0, readout="state")


def _train(model, x, y, steps: int, lr: float):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.smooth_l1_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_a_trained_ode_keeps_the_order_of_the_points_and_an_augmented_one_swaps_them(one_thread):
    """g(-1) = 1, g(1) = -1: an ODE flow on the line keeps x(1) increasing in x(0) whatever its training;
    one augmented dimension lets the flow go around, and a few steps of training swap the two points."""
    x, y = sample_1d(64, 0.0, torch.Generator().manual_seed(0))
    grid = torch.linspace(-1.5, 1.5, 31).unsqueeze(1)
    results = {}
    for augment in (0, 1):
        torch.manual_seed(0)
        model = CrossingODE(1, augment, hidden=16, readout="state", solver=SolverSpec())
        results[augment] = _train(model, x, y, steps=40, lr=1e-2)
        model.solver = EXACT
        with torch.no_grad():
            ends = model(grid)[:, 0]
            pair = model(torch.tensor([[-1.0], [1.0]]))[:, 0]
        if augment == 0:
            assert (ends.diff() > 0).all(), ends  # order kept: trajectories never cross
            assert pair[0] < pair[1] and results[0] > 0.49  # so the loss cannot fall below 0.5
        else:
            assert pair[0] > 0.5 and pair[1] < -0.5, pair  # swapped: 1 -> -1, -1 -> 1
            assert results[1] < 0.1


def test_one_augmented_dimension_represents_g_exactly():
    """A half turn in the (x, a) plane, written into the MLP's weights, maps 1 to -1 and -1 to 1."""
    model = CrossingODE(1, 1, hidden=8, readout="state", solver=EXACT).double()
    f = model.func
    with torch.no_grad():
        for layer in (f.fc1, f.fc2, f.fc3):
            layer.weight.zero_()
            layer.bias.zero_()
        # fc1 (inputs t, x, a) -> relu(x), relu(-x), relu(a), relu(-a); fc2 passes them on
        f.fc1.weight[:4, 1:] = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
        f.fc2.weight[:4, :4] = torch.eye(4)
        # dx/dt = -pi a, da/dt = pi x: a rotation by pi over t in [0, 1]
        f.fc3.weight[:, :4] = math.pi * torch.tensor([[0.0, 0, -1, 1], [1, -1, 0, 0]])
        out = model(torch.tensor([[1.0], [-1.0], [0.5]], dtype=torch.float64))[:, 0]
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, -0.5], dtype=torch.float64), atol=1e-5)


# ------------------------------------------------------------------------- configs


def _cfg(compose_config, tmp_path, *overrides):
    return compose_config(["experiment=crossing", "profile=smoke", "device=cpu", f"results_dir={tmp_path}",
                           *overrides])


def test_the_sweep_runs_the_whole_table_and_anode_takes_the_datasets_augmentation(compose_config, tmp_path):
    spec = yaml.safe_load((CONF_DIR / "experiment" / "crossing.yaml").read_text())
    swept = spec["hydra"]["sweeper"]["params"]
    assert swept == {"dataset": "crossing_1d,crossing_2d", "model": "crossing_ode,crossing_anode"}
    expected = {("crossing_ode", "crossing_1d"): 0, ("crossing_ode", "crossing_2d"): 0,
                ("crossing_anode", "crossing_1d"): 1, ("crossing_anode", "crossing_2d"): 5}
    for (model, dataset), augment in expected.items():
        cfg = _cfg(compose_config, tmp_path, f"model={model}", f"dataset={dataset}")
        assert cfg.model.augment_dim == augment and cfg.task == "crossing" and cfg.experiment_name == "crossing"
        assert validate(cfg) is CrossingTask
        assert CrossingTask.describe(cfg)["model"] == ("anode" if augment else "ode")
    cfg = _cfg(compose_config, tmp_path, "model=crossing_anode", "dataset=crossing_2d", "model.augment_dim=2")
    assert cfg.model.augment_dim == 2  # the command line wins
    assert [int(_cfg(compose_config, tmp_path, f"profile={p}").model.iterations[p]) for p in ("quick", "paper")] == \
        [600, 960]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.augment_dim=-1"], "model.augment_dim"),
        (["model.hidden=0"], "model.hidden"),
        (["model.batch_size=0"], "model.batch_size"),
        (["model.batch_size=5000"], "dataset.n_train"),
        (["model.iterations.smoke=0"], "model.iterations.smoke"),
        (["~model.iterations.smoke"], "model.iterations"),
        (["model.lr.smoke=0"], "model.lr.smoke"),
        (["model.threads=0"], "model.threads"),
        (["dataset.half_width=1.0"], "dataset.half_width"),
        (["dataset.half_width=-0.1"], "dataset.half_width"),
        (["dataset.readout=affine"], "dataset.readout"),
        (["dataset.n_test=1"], "dataset.n_test"),
        (["dataset=crossing_2d", "dataset.readout=state"], "readout=linear"),
        (["dataset=crossing_2d", "dataset.inner_radius=1.2"], "dataset.inner_radius"),
        (["dataset=crossing_2d", "dataset.inner_fraction=1.0"], "dataset.inner_fraction"),
        (["model=crossing_anode", "dataset.anode_augment_dim=0"], "dataset.anode_augment_dim"),
        (["dataset=mnist"], "dataset.name"),
        (["model=odenet"], "model.name"),
        (["solver.step_size=0.1"], "step_size"),
        (["profile=fast"], "model.iterations"),
        (["precision=bf16-mixed"], "precision"),
    ],
)
def test_invalid_values_are_rejected(compose_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(compose_config, tmp_path, *overrides))


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("dataset", ["crossing_1d", "crossing_2d"])
@pytest.mark.parametrize("model", ["crossing_ode", "crossing_anode"])
def test_smoke_runs_write_rows_and_the_figure_arrays(compose_config, tmp_path, one_thread, dataset, model):
    cfg = _cfg(compose_config, tmp_path, f"model={model}", f"dataset={dataset}")
    row = train(cfg, log=QUIET)
    augment = cfg.model.augment_dim
    frame = read_results(tmp_path)
    assert len(frame) == 1 and frame["task"].iloc[0] == "crossing" and frame["status"].iloc[0] == "ok"
    assert row["model"] == ("anode" if augment else "ode") and row["dataset"] == dataset
    assert row["augment_dim"] == augment and row["iterations"] == 5 and row["adjoint"] is True
    assert 0 <= row["test_accuracy"] <= 100 and math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])
    assert row["nfe_forward"] > 0 and row["nfe_backward"] > 0
    arrays = np.load(artifact_path(tmp_path, "smoke", dataset, row["model"], augment, 0))
    data_dim = 1 if dataset == "crossing_1d" else 2
    assert arrays["trajectories"].shape[1:] == (len(arrays["plot_x"]), data_dim + augment)
    assert np.allclose(arrays["trajectories"][0, :, :data_dim], arrays["plot_x"])
    assert np.all(arrays["trajectories"][0, :, data_dim:] == 0)  # the augmented dimensions start at 0
    assert len(arrays["loss"]) == len(arrays["nfe_forward"]) == len(arrays["nfe_backward"]) == 5
    assert arrays["features"].shape == (cfg.dataset.n_test, data_dim + augment)
    assert row["nfe_forward"] == arrays["nfe_forward"][-1]  # the last 10 % of 5 iterations: the last one


def test_an_interrupted_run_resumes_bit_identical(compose_config, tmp_path, monkeypatch, one_thread):
    import noderun.tasks.crossing as crossing

    overrides = ("model=crossing_anode", "model.iterations.smoke=8", "model.batch_size=400", "dataset.n_train=1000",
                 "checkpoint_every_s=0")
    once = train(_cfg(compose_config, tmp_path / "once", *overrides), log=QUIET)
    calls, batch = 0, crossing.CrossingTask.batch

    def batch_then_interrupt(self, step):
        nonlocal calls
        calls += 1
        if calls == 4:  # in the second pass over the training set (two batches of 400 a pass)
            os.kill(os.getpid(), signal.SIGINT)
        return batch(self, step)

    monkeypatch.setattr(crossing.CrossingTask, "batch", batch_then_interrupt)
    cfg = _cfg(compose_config, tmp_path / "twice", *overrides)
    with pytest.raises(RunInterrupted, match="step 4"):
        train(cfg, log=QUIET)
    monkeypatch.setattr(crossing.CrossingTask, "batch", batch)
    twice = train(cfg, log=QUIET)
    for key in ("train_loss", "test_loss", "test_accuracy", "nfe_forward", "nfe_backward"):
        assert once[key] == twice[key], key
    first, second = (np.load(artifact_path(tmp_path / name, "smoke", "crossing_1d", "anode", 1, 0))
                     for name in ("once", "twice"))
    for key in ("loss", "nfe_forward", "nfe_backward", "trajectories"):
        assert np.array_equal(first[key], second[key]), key


# ------------------------------------------------------------------------- report


def _row(dataset, model, augment, seed, train_loss, status="ok"):
    return {"experiment": "crossing", "task": "crossing", "status": status, "dataset": dataset, "model": model,
            "augment_dim": augment, "profile": "quick", "seed": seed, "params": 1000 + augment,
            "train_loss": train_loss, "test_loss": train_loss * 1.1, "test_accuracy": 100.0 if augment else 50.0,
            "nfe_forward": 20.0 + 10 * (augment == 0), "nfe_backward": 13.0, "time_per_iter_s": 0.01,
            "timestamp": f"2026-01-01T00:00:0{seed}+00:00", "device_name": "cpu"}


def _body(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| Data")]


def test_the_table_has_a_row_per_dataset_and_model_with_mean_and_std():
    rows = [_row("crossing_2d", "anode", 5, s, 0.01 * (s + 1)) for s in range(3)]
    rows += [_row("crossing_1d", "anode", 1, s, 1e-5) for s in range(3)]
    rows += [_row("crossing_1d", "ode", 0, s, 0.5) for s in range(3)]
    rows += [_row("crossing_2d", "ode", 0, 0, 0.1, status="failed: max_num_steps")]
    rows += [_row("crossing_1d", "ode", 0, 0, 0.7) | {"timestamp": "2025-01-01T00:00:00+00:00"}]  # replaced by a rerun
    sections = report.render(pd.DataFrame(rows), "quick")
    assert len(sections) == 1 and "Dupont et al. 2019" in sections[0][0]
    body = _body(sections[0][1])
    assert [row[:3] for row in body] == [["crossing_1d", "ODE", "0"], ["crossing_1d", "ANODE", "1"],
                                         ["crossing_2d", "ODE", "0"], ["crossing_2d", "ANODE", "5"]]
    assert body[0][4] == "0.5 ± 0" and body[0][-1] == "3" and body[1][4] == "1e-05 ± 0"
    assert body[2][4] == "failed" and body[2][-1] == "0 of 1"
    assert body[3][4] == "0.02 ± 0.01" and body[3][7] == "20.0 ± 0.0"
    assert report.render(pd.DataFrame(columns=list(rows[0])), "quick") == []


def test_figures_and_tables_from_smoke_runs(compose_config, tmp_path, one_thread):
    for dataset in ("crossing_1d", "crossing_2d"):
        for model in ("crossing_ode", "crossing_anode"):
            train(_cfg(compose_config, tmp_path, f"model={model}", f"dataset={dataset}"), log=QUIET)
    written = report.figures(tmp_path)
    assert [p.name for p in written] == ["crossing_1d_smoke.png", "crossing_2d_smoke.png",
                                         "crossing_training_smoke.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    text = render_all(read_results(tmp_path), "smoke")
    assert "ODE against augmented ODE" in text and text.count("crossing_1d") == 2
    assert report.figures(tmp_path / "empty") == []


def test_figures_draw_what_is_there(tmp_path, compose_config, one_thread):
    train(_cfg(compose_config, tmp_path, "model=crossing_anode", "dataset=crossing_2d"), log=QUIET)
    assert [p.name for p in report.figures(tmp_path)] == ["crossing_2d_smoke.png", "crossing_training_smoke.png"]


def test_sample_dispatches_on_the_dataset(compose_config, tmp_path):
    cfg = _cfg(compose_config, tmp_path, "dataset=crossing_2d")
    x, y = sample(cfg.dataset, 40, 3)
    assert x.shape == (40, 2) and (y == -1).sum() == 10
