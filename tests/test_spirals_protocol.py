"""Table 2's protocol: training windows that cover the test forecasts, the validation split and the model
selection on it, restarts, the KL warm-up, seeds that draw the data, and the report's protocol sections."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from noderun.data.spirals import generate_spirals
from noderun.report.table2 import (main_rows, render, render_ablation, render_protocols, render_spread,
                                   render_typical, with_methods)
from noderun.runner import train

STEP = (6 * math.pi - 6 * math.pi * 100 / 499) / 799  # the default angle step


def angles(split) -> torch.Tensor:
    """[B, T] the angle of every grid point (r = 0.3 theta)."""
    return split.truth.double().norm(dim=-1) / 0.3


def test_training_windows_cover_every_angle_a_test_forecast_reaches():
    data = generate_spirals(n_obs=30, seed=3)
    train_windows = angles(data.train)[:, :100]
    forecasts = angles(data.test)[:, 100:]
    # every forecast angle lies inside some training window (0.02 rad: one angle step of slack)
    lo, hi = train_windows[:, 0], train_windows[:, -1]
    covered = ((forecasts.reshape(-1, 1) >= lo - 0.02) & (forecasts.reshape(-1, 1) <= hi + 0.02)).any(dim=1)
    assert bool(covered.all())
    # drawn as the test trajectories ("same"), windows end 100 steps short of the largest forecast angle
    same = generate_spirals(n_obs=30, seed=3, train_coverage="same")
    assert float(angles(same.train)[:, 99].max()) < float(forecasts.max()) - 90 * STEP
    # the test set is the same under either coverage
    for name in ("truth", "noisy", "obs_index", "clockwise"):
        assert torch.equal(getattr(same.test, name), getattr(data.test, name))


def test_the_validation_split_is_held_out_from_training():
    data = generate_spirals(n_obs=30, n_val=100)
    assert len(data.train.noisy) == 700 and len(data.val.noisy) == 100 and len(data.test.noisy) == 200
    whole = generate_spirals(n_obs=30, n_val=0)
    assert whole.val is None and torch.equal(torch.cat([data.train.noisy, data.val.noisy]), whole.train.noisy)
    with pytest.raises(ValueError, match="train_coverage='x' is invalid"):
        generate_spirals(train_coverage="x")


SMALL = ["dataset.n_spirals=40", "dataset.n_train=30", "dataset.n_val=6", "dataset.n_obs=30", "profile=smoke",
         "profile.progress=false"]


def test_the_runs_seed_draws_the_data_unless_dataset_seed_is_set(compose_config, tmp_path):
    rows = [train(compose_config(["experiment=rnn_spirals", *SMALL, f"seed={seed}", *extra,
                                  f"results_dir={tmp_path}"]), log=lambda *_: None)
            for seed, extra in ((0, []), (1, []), (1, ["dataset.seed=0"]))]
    assert [row["data_seed"] for row in rows] == [0, 1, 0]
    assert rows[0]["test_rmse"] != rows[1]["test_rmse"] and rows[1]["test_rmse"] != rows[2]["test_rmse"]


def test_the_run_scores_the_weights_of_the_lowest_validation_loss(compose_config, tmp_path, monkeypatch):
    from noderun.tasks import spirals

    cfg = compose_config(["experiment=latent_ode_elbo", *SMALL, "model.iterations.smoke=6", "model.eval_every=2",
                          "model.restarts=2", f"results_dir={tmp_path}"])
    # validation losses as measured in order: the lowest is the 2nd measurement (iteration 4 of restart 1)
    losses = iter([5.0, 3.0, 4.0, 9.0, 8.0, 7.0])
    seen = {}
    real_forecast = spirals.SpiralsTask.forecast

    def fake_loss(self):
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        seen[(self.restart, self.iteration)] = state
        return next(losses)

    def forecast(self, split):
        seen.setdefault("scored", {k: v.clone() for k, v in self.model.state_dict().items()})  # the first forecast
        return real_forecast(self, split)

    monkeypatch.setattr(spirals.SpiralsTask, "validation_loss", fake_loss)
    monkeypatch.setattr(spirals.SpiralsTask, "forecast", forecast)
    row = train(cfg, log=lambda *_: None)
    assert (row["val_loss"], row["best_iteration"], row["best_restart"], row["restarts"]) == (3.0, 4, 1, 2)
    assert sorted(k for k in seen if k != "scored") == [(0, 2), (0, 4), (0, 6), (1, 2), (1, 4), (1, 6)]
    for name, value in seen["scored"].items():  # the test forecast is made with the selected weights
        assert torch.equal(value, seen[(0, 4)][name]), name
    # the second restart started from another initialisation
    assert any(not torch.equal(seen[(0, 2)][k], seen[(1, 2)][k]) for k in seen[(0, 2)])


def test_the_kl_weight_rises_linearly_over_the_warm_up(compose_config, tmp_path, monkeypatch):
    from noderun.models.latent_ode import LatentODE

    weights = []
    real = LatentODE.split_loss

    def spy(self, split, generator=None):
        if self.training:
            weights.append(self.kl_weight)
        return real(self, split, generator)

    monkeypatch.setattr(LatentODE, "split_loss", spy)
    train(compose_config(["experiment=latent_ode_elbo", *SMALL, "model.iterations.smoke=6", "model.kl_warmup=4",
                          f"results_dir={tmp_path}"]), log=lambda *_: None)
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_two_hidden_layers_of_dynamics_on_request():
    from noderun.models.latent_ode import LatentODE

    one, two = LatentODE(), LatentODE(dyn_layers=2)
    assert sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters()) == 20 * 20 + 20


# ------------------------------------------------------------------------ report


def _row(variant, n, rmse, seed, *, data_seed=None, coverage="forecast", n_val=100, experiment="table2",
         config=None, runaways=0.1, val=None):
    model = "rnn" if variant == "rnn" else "latent_ode"
    consistency = None if model == "rnn" else (0.0 if variant == "latent_ode_elbo" else 10.0)
    config = config or {"model": {"name": model, "restarts": 1, "kl_warmup": 0, "iterations": {"quick": 2000}},
                        "dataset": {"train_coverage": coverage, "n_val": n_val, "seed": None, "n_obs": n},
                        "solver": {"rtol": 0.01, "atol": 0.001}}
    return {"experiment": experiment, "model": model, "consistency": consistency, "n_obs": n, "test_rmse": rmse,
            "test_rmse_median": rmse / 2, "test_frac_above_1": runaways, "seed": seed,
            "data_seed": seed if data_seed is None else data_seed, "train_coverage": coverage, "n_val": n_val,
            "status": "ok", "profile": "quick", "noise_std": 0.3, "timestamp": f"2026-01-01T00:{seed:02d}:{n:02d}",
            "config": json.dumps(config), "method": "dopri5", "rtol": 0.01, "atol": 0.001, "test_rmse_tight": None,
            "val_loss": val, "best_iteration": 2000, "params": 10, "iterations": 2000, "time_per_iter_s": 0.1,
            "nfe_forward": 20.0, "nfe_backward": 0.0, "train_time_s": 60.0, "final_loss": 1.0, "restarts": 1}


def test_the_main_table_takes_the_current_protocol_with_each_seed_drawing_its_data():
    rows = [_row("rnn", 50, 0.6, 0), _row("rnn", 50, 0.8, 1),
            _row("rnn", 50, 9.0, 0, coverage="same", n_val=0),  # the earlier protocol
            _row("rnn", 50, 7.0, 1, data_seed=0),  # a spread row: data seed 0 under training seed 1
            _row("rnn", 50, 5.0, 0, experiment="table2_ablation")]
    frame = with_methods(pd.DataFrame(rows))
    assert sorted(main_rows(frame)["test_rmse"]) == [0.6, 0.8]
    text = dict(render(pd.DataFrame(rows), "quick"))
    table = next(v for k, v in text.items() if k.startswith("Table 2 (spirals"))
    assert "0.7000 ± 0.1414" in table and "9.0" not in table and "7.0" not in table


def test_rows_written_before_the_protocol_columns_count_as_the_earlier_protocol():
    row = _row("rnn", 50, 0.6, 0)
    for column in ("train_coverage", "n_val", "data_seed", "test_frac_above_1", "val_loss"):
        del row[column]
    frame = with_methods(pd.DataFrame([row]))
    assert (frame["train_coverage"].iloc[0], frame["n_val"].iloc[0], frame["data_seed"].iloc[0]) == ("same", 0, 0)
    assert main_rows(frame).empty


def test_typical_trajectory_and_runaway_share():
    frame = with_methods(pd.DataFrame([_row("latent_ode_elbo", 30, 1.0, 0, runaways=0.1),
                                       _row("latent_ode_elbo", 30, 2.0, 1, runaways=0.3)]))
    line = next(l for l in render_typical(frame).splitlines() if l.startswith("| Latent ODE, ELBO only"))
    assert "0.7500 ± 0.3536" in line and "20.0 %" in line


def test_spread_splits_data_from_training():
    rows = [_row("rnn", 50, 1.0, 0), _row("rnn", 50, 2.0, 1), _row("rnn", 50, 3.0, 2),  # both vary
            _row("rnn", 50, 1.1, 1, data_seed=0), _row("rnn", 50, 1.2, 2, data_seed=0),  # training varies
            _row("rnn", 50, 4.0, 0, data_seed=1), _row("rnn", 50, 5.0, 0, data_seed=2)]  # data varies
    line = next(l for l in render_spread(with_methods(pd.DataFrame(rows))).splitlines() if l.startswith("| RNN"))
    cells = [c.strip() for c in line.split("|")[2:-1]]
    assert cells == ["3.3333 ± 2.0817 (3)", "1.1000 ± 0.1000 (3)", "2.0000 ± 1.0000 (3)"]
    assert render_spread(with_methods(pd.DataFrame(rows[:3]))) == ""  # nothing to split without those runs


def test_earlier_and_current_protocol_side_by_side():
    rows = [_row("latent_ode_elbo", n, 1.0 + n / 100, 0, coverage="same", n_val=0, data_seed=0) for n in (30, 50)]
    rows += [_row("latent_ode_elbo", n, 0.5, 0) for n in (30, 50, 100)]
    line = next(l for l in render_protocols(with_methods(pd.DataFrame(rows))).splitlines()
                if l.startswith("| Latent ODE, ELBO only"))
    assert "1.300 / 1.500 / -" in line and "0.500 / 0.500 / 0.500" in line


def test_ablation_rows_are_labelled_by_the_setting_they_change():
    base = [_row("latent_ode_elbo", 50, 1.0, s, val=40.0) for s in (0, 1)]
    changed = {"model": {"name": "latent_ode", "restarts": 1, "kl_warmup": 500, "iterations": {"quick": 2000}},
               "dataset": {"train_coverage": "forecast", "n_val": 100, "seed": None, "n_obs": 50},
               "solver": {"rtol": 0.01, "atol": 0.001}}
    ablation = [_row("latent_ode_elbo", 50, 0.5, s, experiment="table2_ablation", config=changed, val=41.0)
                for s in (0, 1)]
    text = render_ablation(with_methods(pd.DataFrame(base + ablation)), "quick")
    lines = [l for l in text.splitlines() if l.startswith("| Latent ODE")]
    assert "current protocol" in lines[0] and "1.000 ± 0.000" in lines[0]
    assert "KL warm-up 500" in lines[1] and "0.500 ± 0.000" in lines[1] and "41.00" in lines[1]


def test_two_layer_dynamics_rows_do_not_replace_the_papers_model_of_the_same_seed():
    dyn2 = {"model": {"name": "latent_ode", "dyn_layers": 2, "restarts": 1, "kl_warmup": 0,
                      "iterations": {"quick": 2000}},
            "dataset": {"train_coverage": "forecast", "n_val": 100, "seed": None, "n_obs": 30},
            "solver": {"rtol": 0.01, "atol": 0.001}}
    rows = [_row("latent_ode_elbo", 30, 1.0, s) for s in (0, 1)]
    rows += [dict(_row("latent_ode_elbo", 30, 0.5, 0, config=dyn2), timestamp="2026-02-01T00:00:00")]
    table = next(v for k, v in render(pd.DataFrame(rows), "quick") if k.startswith("Table 2 (spirals"))
    paper = next(l for l in table.splitlines() if l.startswith("| Latent ODE, ELBO only (paper's method)"))
    two = next(l for l in table.splitlines() if l.startswith("| Latent ODE, ELBO only, two-layer"))
    assert "1.0000 ± 0.0000" in paper and "2/0/0" in paper
    assert "0.5000" in two and "1/0/0" in two


def test_the_comparison_with_the_rnn_has_a_line_for_the_two_layer_dynamics_too():
    from noderun.report.table2 import render_comparison

    dyn2 = {"model": {"name": "latent_ode", "dyn_layers": 2}, "dataset": {"train_coverage": "forecast", "n_val": 100}}
    frame = with_methods(pd.DataFrame([_row("latent_ode_elbo", 50, 0.9, 0), _row("rnn", 50, 0.6, 0),
                                       _row("latent_ode_elbo", 50, 0.3, 0, config=dyn2)]))
    lines = render_comparison(frame).splitlines()
    assert lines[0].startswith("- n=50: latent ODE (ELBO only) 0.9000 against RNN 0.6000: 1.50x, higher")
    assert lines[1].startswith("- n=50: latent ODE (ELBO only, two-layer dynamics) 0.3000 against RNN 0.6000: "
                               "0.50x, lower; lower on 1 of 1 shared seeds")
