"""The console entry point: subcommands, bad input, exit codes, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "noderun", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_unknown_command_lists_valid_ones():
    proc = run_cli("trian")
    assert proc.returncode == 2 and "valid commands: train, table, data, plot" in proc.stderr


def test_unknown_model_option_fails_before_any_work(tmp_path):
    proc = run_cli("train", "model=resnett", f"results_dir={tmp_path / 'r'}")
    assert proc.returncode != 0 and "Available options" in proc.stderr and "resnet" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_mistyped_key_fails(tmp_path):
    proc = run_cli("train", "solver.rtoll=1e-3", f"results_dir={tmp_path}")
    assert proc.returncode != 0 and "rtoll" in proc.stderr


@pytest.mark.parametrize("override", ["profile.lr=-1", "profile.epochs=0", "solver.rtol=0", "solver.method=rk5"])
def test_invalid_value_gets_one_line_error_and_no_output(tmp_path, override):
    proc = run_cli("train", override, "profile=smoke", f"results_dir={tmp_path / 'r'}", f"data_dir={tmp_path / 'd'}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("noderun: error:")]
    assert len(errors) == 1 and override.split("=")[0] in errors[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_unwritable_results_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("train", "profile=smoke", f"results_dir={blocker / 'sub'}")
    assert proc.returncode == 2 and "results_dir" in proc.stderr


def test_train_then_table_end_to_end(tmp_path, mnist_dir):
    proc = run_cli("train", "model=mlp", "profile=smoke", f"results_dir={tmp_path}", f"data_dir={mnist_dir}")
    assert proc.returncode == 0, proc.stderr
    table = run_cli("table", f"results_dir={tmp_path}")
    assert table.returncode == 0
    assert "1-Layer MLP" in table.stdout and table.stdout.count("not run") == 3
    assert (tmp_path / "tables.md").exists()


def test_table_on_an_empty_folder_does_not_crash(tmp_path):
    proc = run_cli("table", f"results_dir={tmp_path}")
    assert proc.returncode == 0 and "not run" in proc.stdout


def test_model_of_another_task_is_refused_with_a_hint(tmp_path):
    proc = run_cli("train", "model=latent_ode", "profile=smoke", f"results_dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and "experiment=latent_ode" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, expected", [
    (["profile.epochs=1.5"], "could not be converted to Integer"),
    (["profile.lr=abc"], "could not be converted to Float"),
    (["solver.rtoll=1e-3"], "Key 'rtoll' not in 'SolverConfig'"),
    (["-m", "model=mlp,resnett"], "Available options in 'model': latent_ode, mlp"),
])
def test_a_bad_override_gets_one_line_and_exit_2_before_any_job(tmp_path, args, expected):
    proc = run_cli("train", "profile=smoke", *args, f"results_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("noderun: error:")
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results, no outputs/ or multirun/ folder


def test_an_unknown_backend_is_refused_before_any_work(tmp_path):
    proc = run_cli("train", "model=odenet", "profile=smoke", "solver.backend=jax", f"results_dir={tmp_path / 'r'}",
                   f"data_dir={tmp_path / 'd'}")
    assert proc.returncode == 2 and "solver.backend" in proc.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
