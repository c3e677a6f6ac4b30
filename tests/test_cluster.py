"""Scaling out: Hydra's joblib and submitit launchers, resumed sweeps, torchrun + DDP on gloo."""

from __future__ import annotations

import os
import subprocess
import textwrap
import sys

import pandas as pd
import pytest
import torch

from noderun.errors import ConfigError
from noderun.tasks.classification import final_weights_path as checkpoint_path
from noderun.runner import train, validate

SMOKE = ["model=mlp", "profile=smoke", "profile.train_size=64", "profile.test_size=64", "profile.progress=false"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


def noderun(*args, cwd):
    return subprocess.run([sys.executable, "-m", "noderun", "train", *args], capture_output=True, text=True,
                          cwd=cwd, env=ONE_THREAD, timeout=600)


def test_joblib_sweep_writes_distinct_rows_and_skips_finished_cells(compose_config, mnist_dir, tmp_path):
    results = tmp_path / "results"
    common = [*SMOKE, f"data_dir={mnist_dir}", f"results_dir={results}"]
    finished = train(compose_config([*common, "seed=0"]), log=lambda *_: None)  # as if a sweep had been cut short
    proc = noderun("-m", "hydra/launcher=local_parallel", *common, "seed=0,1,2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already finished" in proc.stdout + proc.stderr
    frame = pd.read_csv(results / "table1.csv")
    assert sorted(frame["seed"]) == [0, 1, 2] and frame["run_id"].is_unique
    assert finished["run_id"] in set(frame["run_id"])


def test_submitit_local_sweep_writes_distinct_rows(mnist_dir, tmp_path):
    results = tmp_path / "results"
    proc = noderun("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *SMOKE,
                   f"data_dir={mnist_dir}", f"results_dir={results}", "seed=0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(results / "table1.csv")
    assert sorted(frame["seed"]) == [0, 1] and frame["run_id"].is_unique and (frame["status"] == "ok").all()


def test_slurm_launcher_config_composes_with_user_values(compose_config):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from noderun.config import CONF_DIR

    compose_config()  # registers the schemas
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.mem_gb=64",
                                 "hydra.launcher.timeout_min=2880", "model=odenet"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.mem_gb, launcher.timeout_min, launcher.gpus_per_node) == ("a100", 64, 2880, 1)


def test_ddp_on_gloo_matches_one_process_with_the_same_global_batch(mnist_dir, tmp_path):
    # A fixed-step solver takes the same steps on a shard as on the whole batch, so the adjoint
    # gradients, averaged by DDP, must equal the one-process gradients of the global batch.
    args = ["model=odenet", "model.channels=8", "solver=rk4", "solver.step_size=0.25", "profile=smoke",
            "profile.train_size=128", "profile.batch_size=64", "profile.test_size=64", "profile.progress=false",
            f"data_dir={mnist_dir}"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "noderun", "train", *args, f"results_dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=ONE_THREAD, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    one = noderun(*args, f"results_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    weights = [torch.load(checkpoint_path(tmp_path / name, "table1", "odenet", "smoke", 0),
                          weights_only=True)["state_dict"] for name in ("one", "two")]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)
    rows = [pd.read_csv(tmp_path / name / "table1.csv") for name in ("one", "two")]
    assert len(rows[1]) == 1  # only rank 0 writes
    assert (rows[1]["world_size"][0], rows[1]["batch_size"][0], rows[0]["world_size"][0]) == (2, 64, 1)
    assert rows[1]["test_error"][0] == rows[0]["test_error"][0]  # test set sharded, counts summed
    assert rows[1]["nfe_backward"][0] == rows[0]["nfe_backward"][0] > 0


def test_ddp_refuses_a_global_batch_that_does_not_divide_and_other_tasks(compose_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="profile.batch_size=64 is invalid; it is the global batch"):
        validate(compose_config(["model=mlp", "profile=smoke"]))
    with pytest.raises(ConfigError, match="task=spirals runs in one process"):
        validate(compose_config(["experiment=latent_ode", "profile=smoke"]))


def test_a_failure_on_one_rank_stops_every_rank_with_one_failed_row(mnist_dir, tmp_path):
    """Rank 1's solver gives up at step 1: both processes stop at that step (no wait for a timeout),
    exit 1 with one line each, and rank 0 writes the one failed row."""
    script = textwrap.dedent("""
        import os, sys
        from noderun.ode.errors import ODESolverError
        from noderun.tasks.classification import ClassificationTask
        loss, calls = ClassificationTask.loss, [0]
        def failing_on_rank_1(self, batch):
            calls[0] += 1
            if os.environ["RANK"] == "1" and calls[0] == 2:
                raise ODESolverError("max_num_steps=1 reached at t=0.5")
            return loss(self, batch)
        ClassificationTask.loss = failing_on_rank_1
        from noderun.cli import main
        main(["train", *sys.argv[1:]])
    """)
    (tmp_path / "fail_on_rank_1.py").write_text(script)
    args = ["model=odenet", "model.channels=8", "solver=rk4", "solver.step_size=0.5", "profile=smoke",
            "profile.train_size=256", "profile.batch_size=64", "profile.test_size=64", "profile.progress=false",
            f"data_dir={mnist_dir}", f"results_dir={tmp_path / 'results'}"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(tmp_path / "fail_on_rank_1.py"), *args],
                         capture_output=True, text=True, cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if "noderun: error:" in line]
    assert len(errors) == 2 and any("another process failed at epoch 1, step 1" in line for line in errors), errors
    frame = pd.read_csv(tmp_path / "results" / "table1.csv")
    assert len(frame) == 1 and frame["status"][0].startswith("failed: another process failed")
