"""The classification task's validation set (dataset.val_size): the last training images, held out of training,
evaluated beside the test set; it leaves the key of a run without one unchanged; it is refused out of range."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

SMOKE = ["profile=smoke", "profile.progress=false", "seed=0", "model=mlp"]


def build_task(compose_config, mnist_dir, overrides):
    from noderun.distributed import World
    from noderun.tasks.classification import ClassificationTask

    cfg = compose_config([*SMOKE, f"data_dir={mnist_dir}", *overrides])
    return ClassificationTask(cfg, device=torch.device("cpu"), world=World.from_environment(), log=lambda *_: None)


def test_the_validation_set_is_the_last_training_images_and_never_trained_on(compose_config, mnist_dir):
    from noderun.data.mnist import load_mnist

    data = load_mnist(mnist_dir)
    task = build_task(compose_config, mnist_dir, ["dataset.val_size=500", "profile.train_size=null"])
    assert len(task.val_images) == task.val_count == 500
    assert torch.equal(task.val_images, data.train_images[-500:])
    assert torch.equal(task.val_labels, data.train_labels[-500:])
    assert torch.equal(task.train_images, data.train_images[:-500])  # training draws from the rest only
    # the same images for every seed (the split is not drawn)
    other = build_task(compose_config, mnist_dir, ["dataset.val_size=500", "profile.train_size=null", "seed=3"])
    assert torch.equal(other.val_images, task.val_images)
    # without a validation set every training image trains
    plain = build_task(compose_config, mnist_dir, ["profile.train_size=null"])
    assert len(plain.train_images) == 60_000 and plain.val_count == 0 and len(plain.val_images) == 0


def test_a_run_with_a_validation_set_records_its_error_beside_the_test_error(compose_config, mnist_dir, tmp_path):
    from noderun.runner import train
    from noderun.tasks.classification import evaluate

    overrides = [*SMOKE, f"data_dir={mnist_dir}", f"results_dir={tmp_path}", "dataset.val_size=300"]
    row = train(compose_config(overrides), log=lambda *_: None)
    assert row["val_size"] == 300 and row["train_size"] == 256
    assert 0 <= row["val_error"] <= 100 and row["val_loss"] > 0
    # the recorded error is the saved weights' error on the last 300 training images
    saved = torch.load(next((tmp_path / "checkpoints").glob("*.pt")), weights_only=False)
    assert saved["history"]["val_error"] == [row["val_error"]]
    from noderun.data.mnist import load_mnist
    from noderun.models import build_model
    from noderun.models.solver import SolverSpec

    cfg = compose_config(overrides)
    model = build_model(cfg.model, SolverSpec.from_config(cfg.solver, default_adjoint=cfg.model.adjoint))
    model.load_state_dict(saved["state_dict"])
    data = load_mnist(mnist_dir)
    wrong, loss_sum = evaluate(model, data.train_images[-300:], data.train_labels[-300:], 256)
    assert row["val_error"] == pytest.approx(100 * wrong / 300, abs=1e-3)
    assert row["val_loss"] == pytest.approx(loss_sum / 300, rel=1e-4)
    # a run without one leaves the columns empty (0 images held out)
    plain = train(compose_config([*overrides[:-1], "seed=1"]), log=lambda *_: None)
    assert plain["val_size"] == 0 and plain["val_error"] is None and plain["val_loss"] is None
    frame = pd.read_csv(tmp_path / "table1.csv")
    assert list(frame["val_size"]) == [300, 0] and frame["val_error"].isna().tolist() == [False, True]


def test_no_validation_set_keeps_the_run_key_of_runs_made_before_the_option(compose_config):
    from noderun.checkpoint import run_key

    plain = compose_config(SMOKE)
    assert run_key(plain) == run_key(compose_config([*SMOKE, "dataset.val_size=0"]))
    assert run_key(plain) != run_key(compose_config([*SMOKE, "dataset.val_size=1000"]))
    # the key of a config without the option at all (a run made before it existed) is the same
    from omegaconf import OmegaConf

    older = OmegaConf.create(OmegaConf.to_container(compose_config(SMOKE)))
    del older.dataset["val_size"]
    assert run_key(older) == run_key(plain)
    assert OmegaConf.select(plain, "dataset.val_size") == 0


@pytest.mark.parametrize("overrides, message", [
    (["dataset.val_size=-1"], "dataset.val_size"),
    (["dataset.val_size=59990"], "dataset.val_size"),
    (["dataset.val_size=10000", "profile.train_size=55000"], "at most 50000 training images remain"),
])
def test_a_validation_set_out_of_range_is_refused_in_one_line(compose_config, overrides, message):
    from noderun.errors import ConfigError
    from noderun.runner import validate

    with pytest.raises(ConfigError, match=message) as info:
        validate(compose_config([*SMOKE, *overrides]))
    assert "\n" not in str(info.value)


def report_row(regularizer: str, seed: int, machine: str, minutes: float, nfe: float, *, val_size: int = 10000,
               val_error: float = 0.5, timestamp: str = "2026-01-01T00:00:00", old_config: bool = False) -> dict:
    import json

    config = {"model": {"name": "odenet"}, "dataset": {"name": "mnist", "val_size": val_size},
              "solver": {"reuse_forward_step": True}, "seed": seed, "experiment_name": "sweep",
              "regularizer": {"name": regularizer}}
    if old_config:  # a row written before the options existed: its config lacks them
        del config["dataset"]["val_size"], config["solver"]["reuse_forward_step"]
    return {"task": "classification", "status": "ok", "model": "odenet", "dataset": "mnist", "seed": seed,
            "timestamp": timestamp, "config": json.dumps(config), "regularizer": regularizer,
            "device_name": machine, "nfe_forward": nfe, "nfe_backward": nfe / 2, "train_time_s": 60 * minutes,
            "reg_kinetic": None if regularizer == "none" else 1.0, "reg_jacobian": None if regularizer == "none"
            else 2.0, "test_error": 0.4, "val_error": val_error if val_size else None, "val_size": val_size}


def test_the_regularisation_section_scores_a_sweep_by_validation_error_and_compares_minutes_on_one_machine():
    from noderun.report.regularization import render

    rnode = "rnode(kinetic=1e-05, jacobian=1e-05, probe=rademacher)"
    rows = pd.DataFrame([
        report_row("none", 0, "A", 10, 26, val_error=0.61),
        report_row("none", 1, "B", 20, 26, val_error=0.63),
        report_row(rnode, 0, "A", 5, 13, val_error=0.55),
        report_row(rnode, 1, "A", 5, 13, val_error=0.57),  # seed 1's unregularised run ran on another machine
    ])
    (title, text), = render(rows, "fast")
    lines = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in text.splitlines() if line.startswith("| odenet")}
    assert lines["none"][0] == "odenet, mnist, validation 10000 images"
    assert lines["none"][2] == "validation error %" and lines["none"][3] == "0.6200 ± 0.0141"
    assert lines[rnode][3] == "0.5600 ± 0.0141"
    assert lines[rnode][8:10] == ["0.50", "0.50"]  # seed 0 only: the one both ran on machine A
    assert lines[rnode][11] == "A" and lines["none"][11] == "A; B"
    # no shared machine: no ratios
    alone = rows[~((rows["regularizer"] == "none") & (rows["seed"] == 0))]
    (_, text), = render(alone, "fast")
    assert [c.strip() for c in text.splitlines()[3].split("|")[1:-1]][8:10] == ["-", "-"]


def test_runs_without_a_validation_set_score_by_test_error_and_rows_older_than_the_options_share_the_cell():
    from noderun.report.regularization import render

    rnode = "rnode(kinetic=1e-05, jacobian=1e-05, probe=rademacher)"
    rows = pd.DataFrame([report_row("none", 0, "A", 10, 26, val_size=0, old_config=True),
                         report_row(rnode, 0, "A", 8, 13, val_size=0)])
    (_, text), = render(rows, "fast")
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| odenet")]
    assert [line[1] for line in lines] == ["none", rnode]  # one cell: the old row lacks the keys at their defaults
    assert lines[0][0] == "odenet, mnist" and lines[0][2] == "test error %" and lines[0][3] == "0.4000"
    assert lines[1][8:10] == ["0.50", "0.80"]


def cell_labels(solver_settings: list[dict], nfe: list[float]) -> list[str]:
    """The regularisation section's cell labels for an unregularised and a regularised run at each of
    `solver_settings` (written into the rows' recorded solver config, and the rtol/atol columns when given)."""
    import json

    from noderun.report.regularization import render

    rnode = "rnode(kinetic=1e-05, jacobian=1e-05, probe=rademacher)"
    rows = []
    for settings, evaluations in zip(solver_settings, nfe):
        for regularizer in ("none", rnode):
            row = report_row(regularizer, 0, "A", 10, evaluations, val_size=0)
            config = json.loads(row["config"])
            config["solver"].update(settings)
            columns = {key: settings[key] for key in ("rtol", "atol") if key in settings}
            rows.append({**row, "config": json.dumps(config), **columns})
    (_, text), = render(pd.DataFrame(rows), "fast")
    return [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| odenet")]


def test_cells_that_differ_only_in_tolerance_are_told_apart():
    labels = cell_labels([{"rtol": 1e-3, "atol": 1e-3}, {"rtol": 1e-5, "atol": 1e-5}], [26, 50])
    assert labels == ["odenet, mnist, tol 0.001"] * 2 + ["odenet, mnist, tol 1e-05"] * 2


def test_a_cell_with_the_first_step_set_is_named_so():
    labels = cell_labels([{}, {"first_step": 0.5}], [26, 13])
    assert labels == ["odenet, mnist"] * 2 + ["odenet, mnist, first step 0.5"] * 2
