"""The figures of `noderun plot` from fixture data, and the Figure 3 tolerance sweep on a small model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from noderun.errors import ConfigError
from noderun.report import figure3, table1
from noderun.report.figure3 import figures as nfe_sweep_figures
from noderun.report.figure3 import plot_nfe_sweep
from noderun.report.table1 import figures as classification_figures
from noderun.report.table1 import plot_depth, plot_nfe_training, plot_training_curves
from noderun.results import COMMON_COLUMNS, append_row, read_results
from noderun.report import render_all
from noderun.tasks import get_task
from noderun.runner import train, validate

HISTORY = {
    "epoch": [1, 2, 3],
    "test_error": [2.5, 1.2, 0.9],
    "train_error": [5.0, 2.0, 1.0],
    "train_loss": [0.5, 0.2, 0.1],
    "epoch_time_s": [10.0, 10.0, 10.0],
    "nfe_forward": [[26, 26, 32, 32], [32, 38, 38, 38], [38, 44, 44, 44]],
    "nfe_backward": [[20, 26, 26, 26], [26, 32, 32, 32], [32, 38, 38, 38]],
}


def _sweep_frame() -> pd.DataFrame:
    rows = []
    for seminorm in (False, True):
        for i, rtol in enumerate((1e0, 1e-1, 1e-2, 1e-3)):
            fwd = 14 + 6 * i
            rows.append({"experiment": "figure3", "status": "ok", "profile": "smoke", "seed": 0, "rtol": rtol,
                         "seminorm": str(seminorm), "nfe_forward": fwd, "nfe_backward": fwd * (0.6 if seminorm else 0.8),
                         "ode_error": 10.0 ** (-1 - i), "forward_time_s": 0.001 * fwd, "nfe_ratio": 0.8,
                         "test_error": 1.0, "batch_size": 128, "test_size": 1000, "reference": "dopri5 rtol=1e-08"})
    return pd.DataFrame(rows)


def _depth_frame() -> pd.DataFrame:
    rows = [{"model": "resnet", "n_blocks": n, "nfe_forward": 0, "memory_mib": 1.5 * n, "time_per_iter_s": 0.01 * n}
            for n in (1, 2, 4)]
    rows += [{"model": m, "n_blocks": None, "rtol": rtol, "nfe_forward": nfe,
              "memory_mib": (0.3 * nfe if m == "rknet" else 2.0), "time_per_iter_s": 0.002 * nfe}
             for m in ("rknet", "odenet") for nfe, rtol in ((14, 1e-1), (26, 1e-2), (38, 1e-3))]
    return pd.DataFrame(rows)


def _nonempty_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_nfe_sweep(tmp_path):
    assert _nonempty_png(plot_nfe_sweep(_sweep_frame(), tmp_path / "a.png"))


def test_plot_nfe_training(tmp_path):
    assert _nonempty_png(plot_nfe_training(HISTORY, tmp_path / "d.png"))


def test_plot_depth(tmp_path):
    assert _nonempty_png(plot_depth(_depth_frame(), tmp_path / "depth.png"))


def test_plot_training_curves(tmp_path):
    other = dict(HISTORY, test_error=[3.0, 2.0, 1.5])
    assert _nonempty_png(plot_training_curves({"odenet": HISTORY, "resnet": other}, tmp_path / "t.png"))


def _write_rows(results_dir, experiment, frame, task="classification"):
    columns = COMMON_COLUMNS + list(get_task(task).columns)
    for i, record in enumerate(frame.to_dict("records")):
        row = {k: v for k, v in record.items() if k in columns and not (isinstance(v, float) and pd.isna(v))}
        row.update(run_id=f"r{i}", experiment=experiment, task=task, status="ok", profile="smoke", seed=0,
                   config=json.dumps({}))
        append_row(results_dir / f"{experiment}.csv", row, columns)


def test_figure_hooks_find_their_data(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for model in ("odenet", "resnet"):
        torch.save({"state_dict": {}, "config": {}, "history": HISTORY},
                   tmp_path / "checkpoints" / f"table1-{model}-smoke-seed0.pt")
    _write_rows(tmp_path, "depth", _depth_frame())
    _write_rows(tmp_path, "figure3", _sweep_frame(), task="figure3")
    names = {p.name for p in classification_figures(tmp_path) + nfe_sweep_figures(tmp_path)}
    assert names == {"training_smoke.png", "figure3d_smoke.png", "depth_smoke.png", "figure3abc_smoke.png"}
    assert all(_nonempty_png(tmp_path / "figures" / n) for n in names)
    assert classification_figures(tmp_path / "empty") == [] and nfe_sweep_figures(tmp_path / "empty") == []


def test_a_rerun_of_the_sweep_or_the_depth_experiment_replaces_its_rows(tmp_path, monkeypatch):

    first, again = _sweep_frame(), _sweep_frame()
    first["timestamp"], again["timestamp"] = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
    again["nfe_backward"] = 99.0
    _write_rows(tmp_path, "figure3", pd.concat([first, again]), task="figure3")
    depth_first, depth_again = _depth_frame(), _depth_frame()
    depth_first["timestamp"], depth_again["timestamp"] = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
    depth_again["memory_mib"] = 7.0
    _write_rows(tmp_path, "depth", pd.concat([depth_first, depth_again]))

    table = figure3.render(read_results(tmp_path), "smoke")[0][1]
    body = [line for line in table.splitlines() if line.startswith("| 1e")]
    assert len(body) == 4 and all("| 99.0 " in line and line.rstrip("| ").endswith("1") for line in body)
    plotted = {}

    def recorder(name):
        def record(rows, path, title):
            plotted[name] = rows
            return path
        return record

    monkeypatch.setattr(figure3, "plot_nfe_sweep", recorder("sweep"))
    monkeypatch.setattr(table1, "plot_depth", recorder("depth"))
    nfe_sweep_figures(tmp_path)
    classification_figures(tmp_path)
    assert len(plotted["sweep"]) == len(first) and (plotted["sweep"]["nfe_backward"] == 99.0).all()
    assert len(plotted["depth"]) == len(depth_first) and (plotted["depth"]["memory_mib"] == 7.0).all()


# ------------------------------------------------------------------------ the sweep


@pytest.fixture
def small_checkpoint(tmp_path):
    """An untrained 8-channel ODE-Net saved where Table 1's smoke ODE-Net would be."""
    from noderun.models import build_odenet
    from noderun.tasks.classification import final_weights_path as checkpoint_path

    torch.manual_seed(0)
    model = build_odenet(channels=8)
    path = checkpoint_path(tmp_path, "table1", "odenet", "smoke", 0)
    path.parent.mkdir(parents=True)
    config = {"model": {"name": "odenet", "hidden": 300, "channels": 8, "n_blocks": 6, "adjoint": True}}
    torch.save({"state_dict": model.state_dict(), "config": config, "history": HISTORY}, path)
    return tmp_path


def _sweep_cfg(compose_config, results_dir, data_dir, *overrides):
    return compose_config(["experiment=figure3", "profile=smoke", "device=cpu", f"results_dir={results_dir}",
                           f"data_dir={data_dir}", "dataset.test_size.smoke=8", "dataset.batch_size=4",
                           "dataset.reference_rtol=1e-7", "dataset.reference_atol=1e-7", *overrides])


def test_sweep_nfe_does_not_increase_as_tolerance_loosens(compose_config, small_checkpoint, mnist_dir, one_thread):
    rows = {}
    for rtol in ("1e-4", "1e-2", "1e0"):
        for seminorm in ("false", "true"):
            cfg = _sweep_cfg(compose_config, small_checkpoint, mnist_dir, f"solver.rtol={rtol}",
                             f"solver.seminorm={seminorm}")
            assert cfg.solver.atol == cfg.solver.rtol
            rows[(float(rtol), seminorm)] = train(cfg, log=lambda *a, **k: None)
    for seminorm in ("false", "true"):
        forward = [rows[(rtol, seminorm)]["nfe_forward"] for rtol in (1e-4, 1e-2, 1e0)]
        errors = [rows[(rtol, seminorm)]["ode_error"] for rtol in (1e-4, 1e-2, 1e0)]
        assert forward == sorted(forward, reverse=True), forward
        assert forward[0] > forward[-1]
        assert errors[0] < errors[-1]
        assert all(rows[(rtol, seminorm)]["nfe_backward"] > 0 for rtol in (1e-4, 1e-2, 1e0))
    # seminorm never needs more backward evaluations than the full norm here
    assert rows[(1e-4, "true")]["nfe_backward"] <= rows[(1e-4, "false")]["nfe_backward"]
    frame = read_results(small_checkpoint)
    assert len(frame[frame["experiment"] == "figure3"]) == 6
    text = render_all(frame, "smoke")
    assert "Figure 3 (a)-(c)" in text and "seminorm" in text and "1e-04" in text
    assert [p.name for p in nfe_sweep_figures(small_checkpoint)] == ["figure3abc_smoke.png"]


def test_sweep_without_checkpoint_says_what_to_run(compose_config, tmp_path, mnist_dir):
    cfg = _sweep_cfg(compose_config, tmp_path, mnist_dir)
    with pytest.raises(ConfigError, match=r"noderun train model=odenet profile=smoke") as info:
        train(cfg, log=lambda *a, **k: None)
    assert "\n" not in str(info.value)


def test_figure3_composes_and_validates(compose_config):
    cfg = compose_config(["experiment=figure3"])
    assert cfg.task == "figure3" and cfg.experiment_name == "figure3" and cfg.model.name == "odenet"
    assert validate(cfg).name == "figure3"


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.rtol=0", "solver.rtol"),
        ("solver.rtol=2", "solver.rtol"),
        ("solver=rk4", "adaptive"),
        ("solver.adjoint=false", "solver.adjoint"),
        ("model=resnet", "model.name"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("dataset.test_size.quick=0", "dataset.test_size"),
        ("dataset.reference_rtol=1e-2", "dataset.reference_rtol"),
        ("dataset.reference_dtype=float16", "dataset.reference_dtype"),
        ("dataset.reference_method=euler", "dataset.reference_method"),
        ("dataset=mnist", "dataset"),
    ],
)
def test_sweep_rejects_bad_values(compose_config, override, message):
    cfg = compose_config(["experiment=figure3", "profile=quick", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
