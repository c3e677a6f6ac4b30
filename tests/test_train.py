"""Smoke training runs: one per model, each writing one correct row into a temporary results_dir."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from noderun.results import COMMON_COLUMNS
from noderun.tasks.classification import ClassificationTask

TASK_COLUMNS = ClassificationTask.columns
from noderun.models import build_model
from noderun.models.solver import SolverSpec
from noderun.tasks.classification import final_weights_path as checkpoint_path
from noderun.runner import train

EXPECTED_PARAMS = {"mlp": 238_510, "resnet": 576_778, "odenet": 208_266, "rknet": 208_266}


@pytest.mark.parametrize("model", ["mlp", "resnet", "odenet", "rknet"])
def test_smoke_run_writes_one_complete_row(compose_config, mnist_dir, tmp_path, model):
    is_ode = model in ("odenet", "rknet")
    loose = ["solver.rtol=1e-1", "solver.atol=1e-1"] if is_ode else []  # the MLP and ResNet refuse solver options
    cfg = compose_config([f"model={model}", "profile=smoke", f"data_dir={mnist_dir}", f"results_dir={tmp_path}",
                          "profile.train_size=128", "profile.test_size=128", *loose])
    row = train(cfg, log=lambda *_: None)
    frame = pd.read_csv(tmp_path / "table1.csv")
    assert list(frame.columns) == COMMON_COLUMNS + list(TASK_COLUMNS) and len(frame) == 1
    written = frame.iloc[0]
    assert written["run_id"] == row["run_id"] and written["model"] == model and written["status"] == "ok"
    assert written["params"] == EXPECTED_PARAMS[model]
    assert 0 <= written["test_error"] <= 100 and written["profile"] == "smoke"
    assert written["memory_mib"] > 0 and written["time_per_iter_s"] > 0
    assert (written["nfe_forward"] > 0) == is_ode
    assert (written["nfe_backward"] > 0) == (model == "odenet")
    assert written["device"] == "cpu" and written["torch_version"]
    assert math.isnan(written["cuda_peak_mib"])
    checkpoint = torch.load(checkpoint_path(tmp_path, "table1", model, "smoke", 0), weights_only=False)
    assert checkpoint["history"]["test_error"] == [pytest.approx(written["test_error"], abs=1e-3)]
    counts = checkpoint["history"]["nfe_forward"][0]
    assert len(counts) == 2 and all((count > 0) == is_ode for count in counts)  # one entry per iteration
    rebuilt = build_model(compose_config([f"model={model}"]).model, SolverSpec())
    rebuilt.load_state_dict(checkpoint["state_dict"])


def test_seeded_runs_are_deterministic_on_cpu(compose_config, mnist_dir, tmp_path):
    overrides = ["model=resnet", "model.n_blocks=1", "profile=smoke", f"data_dir={mnist_dir}",
                 f"results_dir={tmp_path}", "profile.train_size=128", "profile.test_size=64"]
    first = train(compose_config(overrides), log=lambda *_: None)
    second = train(compose_config(overrides + ["force=true"]), log=lambda *_: None)  # not the finished run's row
    assert second["run_id"] != first["run_id"]
    assert first["test_loss"] == second["test_loss"] and first["train_error"] == second["train_error"]
