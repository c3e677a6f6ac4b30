"""Result rows: atomic locked appends, schema checks, table rendering from fixture CSVs."""

from __future__ import annotations

import multiprocessing
import warnings

import pandas as pd
import pytest

from noderun import results
from noderun.results import COMMON_COLUMNS, append_row, read_results
from noderun.report import render_all
from noderun.tasks.classification import ClassificationTask

TASK_COLUMNS = ClassificationTask.columns
from noderun.report.table1 import render_backends, render_depth, render_table1

COLUMNS = COMMON_COLUMNS + list(TASK_COLUMNS)


def row(**values):
    base = {"run_id": "r", "experiment": "table1", "task": "classification", "status": "ok", "model": "mlp", "profile": "quick",
            "seed": 0, "test_error": 2.0, "params": 238510, "memory_mib": 0.3, "time_per_iter_s": 0.01,
            "nfe_forward": 0, "nfe_backward": 0, "device_name": "cpu"}
    base.update(values)
    return base


def test_append_writes_header_once_and_round_trips(tmp_path):
    path = tmp_path / "table1.csv"
    append_row(path, row(run_id="a", config='{"x": "a,b"}'), COLUMNS)
    append_row(path, row(run_id="b", test_error=3.0), COLUMNS)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3
    frame = read_results(tmp_path)
    assert list(frame["run_id"]) == ["a", "b"] and list(frame["test_error"]) == [2.0, 3.0]
    assert frame["config"].iloc[0] == '{"x": "a,b"}'


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(results.ResultsError, match="unknown result columns"):
        append_row(tmp_path / "t.csv", row(test_eror=1.0), COLUMNS)
    assert not (tmp_path / "t.csv").exists()


def test_foreign_file_is_not_appended_to(tmp_path):
    path = tmp_path / "table1.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(results.ResultsError, match="different header"):
        append_row(path, row(), COLUMNS)
    assert path.read_text() == "a,b\n1,2\n"


def _append_many(args):
    path, worker = args
    for i in range(50):
        append_row(path, row(run_id=f"{worker}-{i}", config="x" * 2000), COLUMNS)


def test_parallel_writers_never_interleave(tmp_path):
    path = tmp_path / "table1.csv"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(path, w) for w in range(4)])
    frame = pd.read_csv(path)
    assert len(frame) == 200 and frame["run_id"].is_unique
    assert set(frame["config"]) == {"x" * 2000}


def test_malformed_rows_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "table1.csv"
    append_row(path, row(run_id="good"), COLUMNS)
    with open(path, "a") as handle:
        handle.write("torn,row\n")
    with pytest.warns(UserWarning, match=r"table1.csv:3: skipping a malformed row"):
        frame = read_results(tmp_path)
    assert list(frame["run_id"]) == ["good"]


def test_table1_aggregates_seeds_and_marks_missing_rows(tmp_path):
    path = tmp_path / "table1.csv"
    append_row(path, row(run_id="1", seed=0, test_error=2.0), COLUMNS)
    append_row(path, row(run_id="2", seed=1, test_error=4.0), COLUMNS)
    append_row(path, row(run_id="3", model="resnet", status="failed: NaN loss", test_error=None), COLUMNS)
    text = render_table1(read_results(tmp_path), "quick")
    mlp_line = next(line for line in text.splitlines() if "1-Layer MLP" in line)
    assert "3.00 ± 1.41" in mlp_line and "1.60" in mlp_line and "| 2 " in mlp_line
    assert "failed" in next(line for line in text.splitlines() if "ResNet" in line)
    assert "not run" in next(line for line in text.splitlines() if "ODE-Net" in line)


def test_a_rerun_of_a_cell_replaces_it_in_the_mean(tmp_path):
    path = tmp_path / "table1.csv"
    append_row(path, row(run_id="old", seed=0, test_error=9.0, timestamp="2026-01-01T00:00:00+00:00"), COLUMNS)
    append_row(path, row(run_id="new", seed=0, test_error=2.0, timestamp="2026-01-02T00:00:00+00:00"), COLUMNS)
    append_row(path, row(run_id="s1", seed=1, test_error=4.0, timestamp="2026-01-01T00:00:00+00:00"), COLUMNS)
    mlp_line = next(line for line in render_table1(read_results(tmp_path), "quick").splitlines() if "MLP" in line)
    assert "3.00 ± 1.41" in mlp_line and "| 2 " in mlp_line


def test_reference_rows_are_compared_beside_table1_and_kept_out_of_it(tmp_path):
    ours = '{"solver": {"backend": "native"}, "model": {"time_channel": "exact"}}'
    reference = '{"solver": {"backend": "torchdiffeq"}, "model": {"time_channel": "concat"}}'
    append_row(tmp_path / "table1.csv", row(run_id="o0", model="odenet", test_error=1.8, config=ours), COLUMNS)
    append_row(tmp_path / "table1.csv", row(run_id="o1", model="odenet", seed=1, test_error=2.0, config=ours), COLUMNS)
    append_row(tmp_path / "reference.csv", row(run_id="r0", experiment="reference", model="odenet", test_error=2.4,
                                               config=reference), COLUMNS)
    frame = read_results(tmp_path)
    ode_line = next(line for line in render_table1(frame, "quick").splitlines() if "ODE-Net" in line)
    assert "1.90 ± 0.14" in ode_line and "2.40" not in ode_line
    lines = render_backends(frame, "quick").splitlines()
    native = next(line for line in lines if line.startswith("| native"))
    torchdiffeq = next(line for line in lines if line.startswith("| torchdiffeq"))
    assert "exact" in native and "1.90 ± 0.14" in native and "0, 1" in native
    assert "concat" in torchdiffeq and "2.40" in torchdiffeq
    assert render_backends(frame[frame["experiment"] == "table1"], "quick").startswith("(no reference rows")


def test_render_all_with_no_results_shows_every_row_as_not_run(tmp_path):
    text = render_all(read_results(tmp_path))
    assert "No results yet" in text and text.count("not run") == 4


def test_depth_table_fits_slopes(tmp_path):
    path = tmp_path / "depth.csv"
    for blocks in (1, 2, 4):
        append_row(path, row(run_id=f"r{blocks}", experiment="depth", model="resnet", n_blocks=blocks,
                             memory_mib=1.0 + 0.5 * blocks, time_per_iter_s=0.1 * blocks), COLUMNS)
    for tol, nfe in ((1e-1, 10), (1e-3, 20)):
        append_row(path, row(run_id=f"o{tol}", experiment="depth", model="odenet", rtol=tol, nfe_forward=nfe,
                             memory_mib=2.0, time_per_iter_s=0.01 * nfe), COLUMNS)
    text = render_depth(read_results(tmp_path), "quick")
    assert "524,288" in text  # 0.5 MiB per block
    odenet_fit = [line for line in text.splitlines() if line.startswith("| ODE-Net") and "evaluation" in line][0]
    assert "| 0 " in odenet_fit and "0.0" in odenet_fit


def test_the_fast_table_takes_the_mlp_row_of_the_paper_profile(tmp_path):
    path = tmp_path / "table1.csv"
    append_row(path, row(run_id="mlp", profile="paper", test_error=1.71, train_time_s=420.0), COLUMNS)
    append_row(path, row(run_id="mlp-fast", profile="fast", test_error=9.99, train_time_s=60.0), COLUMNS)
    append_row(path, row(run_id="ode", model="odenet", profile="fast", test_error=0.5, train_time_s=1500.0,
                         precision="bf16-mixed", nfe_forward=26.0, nfe_backward=14.0), COLUMNS)
    text = render_all(read_results(tmp_path), "fast")
    mlp = next(line for line in text.splitlines() if line.startswith("| 1-Layer MLP"))
    assert "(paper)" in mlp and "1.71" in mlp and "9.99" not in text and "| 7.0 " in mlp  # 420 s = 7.0 min
    ode = next(line for line in text.splitlines() if line.startswith("| ODE-Net"))
    assert "0.50" in ode and "bf16-mixed" in ode and "| 25.0 " in ode
    assert "Simard et al. 2003" in text


def test_the_settings_table_keeps_one_row_per_ablation_setting(tmp_path):
    import json

    def config(**profile):
        return json.dumps({"profile": {"epochs": 5, "lr_schedule": "linear", "warmup_epochs": 0.5, "nesterov": True,
                                       "weight_decay": 5e-4, "label_smoothing": 0.1, "ema_decay": 0.998, **profile}})

    path, ablation = tmp_path / "table1.csv", tmp_path / "fast_ablation.csv"
    append_row(path, row(run_id="a", model="resnet", profile="fast", test_error=0.46, train_time_s=400.0,
                         config=config()), COLUMNS)
    append_row(ablation, row(run_id="b", experiment="fast_ablation", model="resnet", profile="fast", test_error=0.5,
                             train_time_s=400.0, config=config(ema_decay=None)), COLUMNS)
    append_row(ablation, row(run_id="c", experiment="fast_ablation", model="resnet", profile="fast", test_error=0.6,
                             train_time_s=400.0, config=config(label_smoothing=0.0)), COLUMNS)
    text = render_all(read_results(tmp_path), "fast")
    settings = text.split("Table 1 settings")[1]
    assert [line.split("|")[2].strip() for line in settings.splitlines() if line.startswith("| ResNet")] == [
        "fast_ablation", "fast_ablation", "table1"]
