"""The console entry point: subcommands, bad input, exit codes, nothing half-written."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from noderun.cli import describe, train_help, usage
from noderun.config import CONF_DIR


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
    (["-m", "model=mlp,resnett"], "Available options in 'model': anode, crossing_anode, crossing_ode, latent_ode, mlp"),
    # experiment is an optional group: Hydra alone would ignore the misspelling and train the default MLP
    (["experiment=latent_odee"], "Could not find 'experiment/latent_odee'; Available options in 'experiment'"),
    (["-m", "experiment=latent_ode,rnn_spiral"], "Could not find 'experiment/rnn_spiral'"),
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


# ----------------------------------------------------------------- help: what conf/ holds


def conf_files(group):
    """The options of a config group as the folder holds them now: a new file is covered at once."""
    return sorted((CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def help_outputs():
    """`noderun --help`, `noderun train --help` and `noderun train -h`, run once for the module."""
    outputs = {}
    for args in (["--help"], ["train", "--help"], ["train", "-h"]):
        proc = run_cli(*args)
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
        outputs[" ".join(args)] = proc.stdout
    return outputs


@pytest.mark.parametrize("group", ["experiment", "profile"])
@pytest.mark.parametrize("args", ["--help", "train --help", "train -h"])
def test_help_lists_every_experiment_and_profile_with_its_description(help_outputs, args, group):
    text = help_outputs[args]
    assert conf_files(group), f"conf/{group} is empty"
    for path in conf_files(group):
        line = next((line for line in text.splitlines() if re.match(rf"\s+{re.escape(path.stem)}(\s|$)", line)), None)
        assert line is not None, f"`noderun {args}` does not list {group}={path.stem} (conf/{group}/{path.name})"
        assert describe(path) in line, f"{path.name}: its description is missing from {line!r}"


def test_train_help_lists_usage_every_group_and_the_cfg_pointer(help_outputs):
    text = help_outputs["train --help"]
    assert text.startswith("usage: noderun train")
    for group in ("model", "solver", "dataset", "hydra/launcher"):
        line = next((line for line in text.splitlines() if line.strip().startswith(group + " ")), None)
        assert line is not None, f"group {group} missing"
        for path in conf_files(group):
            assert re.search(rf"\b{re.escape(path.stem)}\*?(,|\s|$)", line), f"{group}={path.stem} missing: {line!r}"
    assert "mlp*" in text and "dopri5*" in text  # conf/config.yaml's defaults are marked
    assert "noderun train --cfg job" in text


def test_help_reads_conf_at_runtime(tmp_path):
    """A new experiment or profile file is listed without any code change."""
    for group in ("experiment", "profile", "model"):
        (tmp_path / group).mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: tiny\n  - optional experiment: null\n")
    (tmp_path / "experiment" / "brand_new.yaml").write_text(
        "# @package _global_\n# A brand new experiment: one line.\n# More detail.\ntask: x\n")
    (tmp_path / "experiment" / "undocumented.yaml").write_text("task: y\n")
    (tmp_path / "profile" / "tiny.yaml").write_text("# Tiny: seconds and\n# it goes on.\nname: tiny\n")
    (tmp_path / "model" / "tiny.yaml").write_text("name: tiny\n")
    for text in (usage(tmp_path), train_help(tmp_path)):
        assert re.search(r"^  brand_new\s+A brand new experiment: one line\.$", text, re.M)
        assert re.search(r"^  undocumented$", text, re.M)
        assert re.search(r"^  tiny\s+Tiny: seconds and \.\.\.$", text, re.M)
    assert re.search(r"^  model\s+tiny\*$", train_help(tmp_path), re.M)


def test_hydra_flags_still_work_beside_our_help():
    proc = run_cli("train", "--hydra-help")
    assert proc.returncode == 0 and "Hydra (" in proc.stdout, proc.stderr
    proc = run_cli("train", "--cfg", "job", "model=odenet", "profile=smoke")
    assert proc.returncode == 0 and "name: odenet" in proc.stdout and "name: smoke" in proc.stdout, proc.stderr


def test_a_multirun_over_experiments_takes_keys_only_those_experiments_have(tmp_path):
    # dataset.n_obs exists in experiment=latent_ode's dataset, not in the default MNIST one: Hydra's multirun
    # base config (composed without the sweeps) would refuse it; every job takes it
    import pandas as pd

    result = run_cli("train", "-m", "experiment=latent_ode,rnn_spirals", "dataset.n_obs=30", "dataset.noise_std=0.1",
                 "profile=smoke", "profile.progress=false", "model.iterations.smoke=1", f"results_dir={tmp_path}",
                 f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "table2.csv")
    assert list(frame["model"]) == ["latent_ode", "rnn"] and set(frame["n_obs"]) == {30}
    assert set(frame["noise_std"]) == {0.1}


def test_fixed_values_become_one_value_sweeps_only_beside_a_swept_group():
    from noderun.cli import sweep_fixed_values

    args = ["-m", "experiment=a,b", "dataset.n_obs=50", "model=mlp", "+extra=1", "seed=0,1", "x='q r'",
            "hydra.sweep.dir=/d"]
    assert sweep_fixed_values(args) == ["-m", "experiment=a,b", "dataset.n_obs=choice(50)", "model=mlp", "+extra=1",
                                        "seed=0,1", "x='q r'", "hydra.sweep.dir=/d"]
    assert sweep_fixed_values(["-m", "model=mlp", "seed=0,1", "profile.lr=0.1"]) == [
        "-m", "model=mlp", "seed=0,1", "profile.lr=0.1"]
    assert sweep_fixed_values(["experiment=a,b", "dataset.n_obs=50"]) == ["experiment=a,b", "dataset.n_obs=50"]
