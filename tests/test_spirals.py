"""Spirals (Table 2): generator, RMSE, models, smoke runs of both models, table and figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from noderun.data.spirals import generate_spirals, rmse, trajectory_rmse
from noderun.errors import ConfigError
from noderun.models.latent_ode import LatentODE, RNNBaseline
from noderun.results import COMMON_COLUMNS
from noderun.models.solver import SolverSpec
from noderun.report.table2 import (PAPER_TABLE2, figures, render_comparison, render_noise, render_table2,
                                   render_tolerance, with_methods)
from noderun.tasks.spirals import SpiralsTask

COLUMNS = SpiralsTask.columns
from noderun.runner import train, validate

SMALL = dict(n_spirals=40, n_train=30, n_obs=30)


def test_generator_shapes():
    data = generate_spirals(**SMALL)
    train, test = data.train, data.test
    assert train.noisy.shape == (30, 100, 2) and test.noisy.shape == (10, 100, 2)
    assert train.truth.shape == (30, 200, 2) and train.times.shape == (200,)
    assert train.obs_index.shape == (30, 30) and train.obs_values.shape == (30, 30, 2)
    assert train.obs_times.shape == (30, 30) and test.extrapolation_truth.shape == (10, 100, 2)
    assert torch.allclose(train.times[1:] - train.times[:-1], torch.full((199,), 0.01), atol=1e-6)


def test_generator_is_deterministic_and_seeded():
    first, second = generate_spirals(**SMALL), generate_spirals(**SMALL)
    for name in ("truth", "noisy", "obs_index", "clockwise"):
        assert torch.equal(getattr(first.train, name), getattr(second.train, name))
        assert torch.equal(getattr(first.test, name), getattr(second.test, name))
    other = generate_spirals(**SMALL, seed=1)
    assert not torch.equal(first.train.noisy, other.train.noisy)


def test_directions_are_balanced_and_correct():
    data = generate_spirals(n_spirals=1000, n_train=800, n_obs=30)
    clockwise = torch.cat([data.train.clockwise, data.test.clockwise])
    assert int(clockwise.sum()) == 500
    truth = torch.cat([data.train.truth, data.test.truth])
    # sign of the angular velocity: cross product of position and step
    position, step = truth[:, :-1], truth[:, 1:] - truth[:, :-1]
    turning = (position[..., 0] * step[..., 1] - position[..., 1] * step[..., 0]).mean(dim=1)
    assert torch.equal(turning < 0, clockwise)
    # different starting points, noise of the configured size
    assert len(torch.unique(truth[:, 0, 0])) > 900
    noise = data.train.noisy - data.train.truth[:, :100]
    assert abs(float(noise.std()) - 0.3) < 0.01


def test_observations_are_distinct_and_never_in_the_extrapolation_window():
    for n_obs in (30, 50, 100):
        split = generate_spirals(n_spirals=20, n_train=10, n_obs=n_obs).train
        index = split.obs_index
        assert bool((index[:, 1:] > index[:, :-1]).all())  # sorted, without replacement
        assert int(index.min()) >= 0 and int(index.max()) < split.n_steps
        assert float(split.obs_times.max()) < float(split.extrapolation_times.min())
        assert len(split.extrapolation_times) == 100
    full = generate_spirals(n_spirals=4, n_train=2, n_obs=100).train
    assert torch.equal(full.obs_index[0], torch.arange(100))


def test_rmse_hand_computed():
    prediction = torch.zeros(1, 2, 2)
    target = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    assert rmse(prediction, target) == pytest.approx(math.sqrt(25 / 4))
    assert rmse(target, target) == 0.0
    with pytest.raises(ValueError, match="shape"):
        rmse(prediction, target[:, :1])


def test_trajectory_rmse_hand_computed_and_its_median_resists_one_runaway():
    prediction = torch.zeros(3, 2, 2)
    target = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[100.0, 0.0], [0.0, 0.0]]])
    per = trajectory_rmse(prediction, target)
    assert per.dtype == torch.float64 and per.tolist() == pytest.approx([2.5, 1.0, 50.0])
    assert float(per.median()) == pytest.approx(2.5)  # the runaway third trajectory does not move it
    assert rmse(prediction, target) == pytest.approx(math.sqrt((25 + 4 + 10000) / 12))
    with pytest.raises(ValueError, match="shape"):
        trajectory_rmse(prediction, target[:, :1])


def test_models_are_batched_and_shaped():
    split = generate_spirals(**SMALL).train
    grid = split.times[: split.n_steps]
    ode = LatentODE(solver=SolverSpec(rtol=1e-2, atol=1e-2, adjoint=False))
    loss = ode.loss(split.obs_values, split.obs_times, split.obs_index, grid)
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    prediction = ode.predict(split.obs_values, split.obs_times, split.obs_index, split.times)
    assert prediction.shape == (30, 200, 2)
    # the latent path starts at each trajectory's first observation: NaN before it, finite from it on
    before = torch.arange(200)[None, :] < split.obs_index[:, :1]
    assert torch.equal(prediction.isnan().any(dim=-1), before) and bool(before.any())
    rnn = RNNBaseline()
    loss = rnn.loss(split.obs_values, split.obs_times)
    loss.backward()
    assert math.isfinite(loss.item())
    assert rnn.predict(split.obs_values, split.obs_times, split.extrapolation_times).shape == (30, 100, 2)
    # paper sizes: recognition 25, latent 4, dynamics 20, decoder 20; RNN 25
    assert ode.rec_cell.hidden_size == 25 and ode.latent_dim == 4 and rnn.cell.hidden_size == 25


def test_latent_ode_reads_time_gaps_so_a_shifted_trajectory_gives_the_shifted_prediction():
    torch.manual_seed(0)
    split = generate_spirals(n_spirals=8, n_train=4, n_obs=30).train
    values, index = split.obs_values, split.obs_index - split.obs_index[:, :1]  # first observation at 0
    ode = LatentODE(solver=SolverSpec(rtol=1e-7, atol=1e-7, adjoint=False))
    mean, logvar = ode.encode(values, split.times[index])
    shift = 37
    shifted_mean, shifted_logvar = ode.encode(values, split.times[index + shift])
    assert torch.allclose(mean, shifted_mean, atol=1e-5) and torch.allclose(logvar, shifted_logvar, atol=1e-5)
    prediction = ode.predict(values, split.times[index], index, split.times)
    shifted = ode.predict(values, split.times[index + shift], index + shift, split.times)
    assert bool(shifted[:, :shift].isnan().all())
    assert torch.allclose(shifted[:, shift:], prediction[:, : 200 - shift], atol=1e-5)


def test_consistency_term_is_the_hand_computed_distance_between_path_and_suffix_encodings():
    torch.manual_seed(0)
    split = generate_spirals(n_spirals=8, n_train=4, n_obs=30).train
    args = (split.obs_values, split.obs_times, split.obs_index, split.times[:100])
    plain, weighted = LatentODE(consistency=0.0), LatentODE(consistency=2.5)
    weighted.load_state_dict(plain.state_dict())
    for model in (plain, weighted):
        # f = 0 and a posterior std of e^-50: z(t_i) is the mean of q(z(t_1)) at every observation
        torch.nn.init.zeros_(model.dynamics.net[-1].weight)
        torch.nn.init.zeros_(model.dynamics.net[-1].bias)
        with torch.no_grad():
            model.rec_out.bias[model.latent_dim :] = -100.0
            model.rec_out.weight[model.latent_dim :] = 0.0
    with torch.no_grad():
        mean, _ = plain.encode(split.obs_values, split.obs_times)
    k = plain.consistency_count(30)
    assert k == 15 and plain.consistency_count(3) == 2
    expected = ((mean[:, 1:k] - mean[:, :1]) ** 2).sum(dim=(1, 2)).mean()
    with torch.no_grad():
        difference = weighted.loss(*args) - plain.loss(*args)
    assert float(difference) == pytest.approx(2.5 * float(expected), rel=1e-4) and float(expected) > 0


SMOKE = ["profile=smoke", "dataset.n_spirals=40", "dataset.n_train=30", "dataset.n_val=6", "dataset.n_obs=30"]


def test_smoke_training_of_both_models_writes_rows_and_figure(compose_config, tmp_path):
    rows = []
    for experiment in ("latent_ode", "rnn_spirals"):
        cfg = compose_config([f"experiment={experiment}", f"results_dir={tmp_path}", *SMOKE])
        rows.append(train(cfg, log=lambda *_: None))
    frame = pd.read_csv(tmp_path / "table2.csv")
    assert list(frame.columns) == COMMON_COLUMNS + list(COLUMNS) and len(frame) == 2
    assert list(frame["model"]) == ["latent_ode", "rnn"] and (frame["status"] == "ok").all()
    assert (frame["task"] == "spirals").all() and (frame["n_obs"] == 30).all() and (frame["iterations"] == 3).all()
    assert (frame["test_rmse"] > 0).all() and (frame["params"] > 0).all() and (frame["time_per_iter_s"] > 0).all()
    # Half the trajectories at most can have twice the mean squared error: median <= sqrt(2) * pooled RMSE.
    assert (frame["test_rmse_median"] > 0).all() and (frame["test_rmse_median"] <= frame["test_rmse"] * 2**0.5).all()
    ode, rnn = frame.iloc[0], frame.iloc[1]
    assert ode["nfe_forward"] > 0 and ode["method"] == "dopri5" and rnn["nfe_forward"] == 0
    assert rows[0]["test_rmse"] == pytest.approx(ode["test_rmse"])
    assert ode["consistency"] == 10.0 and math.isnan(rnn["consistency"])
    # the extrapolation re-solved at 1e-7: a number of its own for the latent ODE, none for the RNN
    assert ode["test_rmse_tight"] > 0 and math.isnan(rnn["test_rmse_tight"])
    assert sorted(p.name for p in (tmp_path / "spirals" / "table2").iterdir()) == [
        "smoke_n30_noise0.3_latent_ode_seed0_data0.npz", "smoke_n30_noise0.3_rnn_seed0_data0.npz"]
    written = figures(tmp_path)
    assert [p.name for p in written] == ["spirals_smoke_n30.png"] and written[0].stat().st_size > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["experiment=latent_ode", "dataset.n_obs=101"], "dataset.n_obs"),
        (["experiment=latent_ode", "dataset.n_spirals=999"], "dataset.n_spirals"),
        (["experiment=rnn_spirals", "model.lr=0"], "model.lr"),
        (["experiment=rnn_spirals", "model.cell=lstm"], "valid cells"),
        (["experiment=latent_ode", "model=mlp"], "model.name"),
        (["experiment=latent_ode", "model.consistency=-1"], "model.consistency"),
        (["experiment=latent_ode", "model.consistency_fraction=1"], "model.consistency_fraction"),
        (["experiment=latent_ode", "model.gap_scale=0"], "model.gap_scale"),
        (["experiment=rnn_spirals", "model.gap_scale=0"], "model.gap_scale"),
        (["experiment=latent_ode", "dataset=mnist"], "dataset.name"),
        (["experiment=latent_ode", "~model.iterations.smoke", "profile=smoke"], "profile"),
    ],
)
def test_invalid_values_are_rejected(compose_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides))


def _row(model, n_obs, rmse_value, seed=0, status="ok", consistency=None, noise=0.3, tight=None):
    if model == "latent_ode" and consistency is None:
        consistency = 0.0
    return {"model": model, "n_obs": n_obs, "test_rmse": rmse_value, "test_rmse_median": rmse_value, "seed": seed,
            "status": status, "profile": "quick", "consistency": consistency, "noise_std": noise,
            "timestamp": f"2026-01-01T00:00:{seed:02d}", "config": None, "method": "dopri5", "rtol": 0.01,
            "atol": 0.001, "test_rmse_tight": tight}


def test_table_renders_each_method_as_its_own_row_with_mean_std_paper_values_and_missing_cells():
    frame = with_methods(pd.DataFrame([
        _row("latent_ode", 30, 0.2, 0), _row("latent_ode", 30, 0.4, 1), _row("latent_ode", 30, 0.1, 0, consistency=10.0),
        _row("rnn", 100, 0.5), _row("rnn", 50, None, status="failed: diverged")]))
    lines = render_table2(frame).splitlines()
    rnn = next(line for line in lines if line.startswith("| RNN"))
    elbo = next(line for line in lines if line.startswith("| Latent ODE, ELBO only (paper's method)"))
    ours = next(line for line in lines if line.startswith("| Latent ODE + suffix consistency, weight 10 (noderun)"))
    assert "0.3000 ± 0.1414" in elbo and elbo.count("not run") == 2 and "2/0/0" in elbo
    assert "0.1000" in ours and "0.3000" not in ours
    assert "0.5000" in rnn and "failed" in rnn and rnn.count("not run") == 1
    for variant, paper in PAPER_TABLE2.items():
        line = rnn if variant == "rnn" else elbo
        assert " / ".join(f"{paper[n]:.4f}" for n in (30, 50, 100)) in line
    assert any(line.startswith("| Oracle") for line in lines)  # reference rows ('-' without a dataset config)
    empty = render_table2(with_methods(pd.DataFrame(columns=list(_row("rnn", 30, 0.1)))))
    assert empty.count("not run") == 6


def test_latent_ode_rows_without_a_consistency_weight_are_left_out():
    frame = pd.DataFrame([_row("latent_ode", 30, 0.2), _row("rnn", 30, 0.5)])
    frame.loc[0, "consistency"] = None
    frame.loc[0, "config"] = '{"model": {"name": "latent_ode"}}'
    assert list(with_methods(frame)["variant"]) == ["rnn"]
    frame.loc[0, "config"] = '{"model": {"name": "latent_ode", "consistency": 3.0}}'
    assert list(with_methods(frame)["variant"]) == ["latent_ode:3", "rnn"]


def test_comparison_states_where_the_papers_model_loses_to_the_rnn():
    frame = with_methods(pd.DataFrame([_row("latent_ode", 30, 0.2, 0), _row("latent_ode", 30, 0.4, 1),
                                       _row("rnn", 30, 0.6, 0), _row("rnn", 30, 0.3, 1),
                                       _row("latent_ode", 50, 0.9, 0), _row("rnn", 50, 0.3, 0)]))
    lines = render_comparison(frame).splitlines()
    assert lines[0].startswith("- n=30: latent ODE (ELBO only) 0.3000 against RNN 0.4500: 0.67x, lower")
    assert "lower on 1 of 2 shared seeds" in lines[0]
    assert lines[1].startswith("- n=50: latent ODE (ELBO only) 0.9000 against RNN 0.3000: 3.00x, higher")


def test_tolerance_line_reports_the_largest_change_of_the_re_solved_rmse():
    frame = with_methods(pd.DataFrame([_row("latent_ode", 30, 0.2, 0, tight=0.21), _row("latent_ode", 30, 0.4, 1, tight=0.4),
                                       _row("latent_ode", 50, 0.4, 2)]))
    text = render_tolerance(frame)
    assert "dopri5 at rtol 0.01, atol 0.001" in text and "of 2 runs changes by at most 0.01 (5% of it" in text


def test_noise_table_appears_with_rows_at_another_noise_and_shows_references():
    main = [_row("latent_ode", 50, 0.3), _row("rnn", 50, 0.6)]
    assert render_noise(with_methods(pd.DataFrame(main))) == ""
    text = render_noise(with_methods(pd.DataFrame(main + [_row("latent_ode", 50, 0.1, noise=0.1)])))
    elbo = next(line for line in text.splitlines() if line.startswith("| Latent ODE, ELBO only"))
    assert "0.3000" in elbo and "0.1000" in elbo and "| noise 0.3 " in text and "| noise 0.1 " in text
    assert "| RNN" not in text and "Last observation held" in text  # a method without rows at noise 0.1 is not shown
