"""Fault injection: kills, Ctrl-C, torn and tampered checkpoints, full disks, diverging runs.

Every training run here is a tiny ResNet (1 block, 8 channels) on 256 MNIST images, 4
steps an epoch, so each run takes a second or two.
"""

from __future__ import annotations

import errno
import re
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import noderun.checkpoint as checkpoint_module
import noderun.tasks.classification as classification
from noderun.checkpoint import CheckpointError, RunDirectory, RunInterrupted, load_checkpoint, run_dir
from noderun.results import read_results
from noderun.report import render_all
from noderun.tasks.classification import final_weights_path as checkpoint_path
from noderun.runner import RunFailed, train

TINY = ["model=resnet", "model.n_blocks=1", "model.channels=8", "profile=smoke", "profile.epochs=3",
        "profile.train_size=256", "profile.test_size=64", "profile.batch_size=64"]
QUIET = lambda *_: None  # noqa: E731


def overrides(mnist_dir, results_dir, *extra):
    return [*TINY, f"data_dir={mnist_dir}", f"results_dir={results_dir}", *extra]


def final_weights(results_dir) -> dict:
    return torch.load(checkpoint_path(results_dir, "table1", "resnet", "smoke", 0), weights_only=True)["state_dict"]


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def interrupt_before_the_first_step(cfg) -> None:
    """Run `cfg`, asking it to stop (as Ctrl-C does) before its first step: it saves a checkpoint there."""
    def log(line: str) -> None:
        if line.startswith("[noderun] ") and " profile=" in line:  # the run's first line
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted, match="epoch 1, step 0"):
        train(cfg, log=log)


def rows(results_dir) -> pd.DataFrame:
    return pd.read_csv(results_dir / "table1.csv")


def train_with_signal_at_crop(call: int, signal_name: str, args: list[str]) -> subprocess.CompletedProcess:
    """`noderun train args` in a subprocess that sends itself `signal_name` at the `call`-th batch crop."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import noderun.tasks.classification as c
        calls = 0
        crop = c.random_crop
        def crop_then_signal(*args, **kwargs):
            global calls
            calls += 1
            if calls == {call}:
                os.kill(os.getpid(), signal.{signal_name})
            return crop(*args, **kwargs)
        c.random_crop = crop_then_signal
        from noderun.cli import main
        main(["train", *sys.argv[1:]])
    """)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory):
    """An uninterrupted run, in a fresh process like the runs it is compared with: its results_dir."""
    folder = tmp_path_factory.mktemp("reference")
    args = overrides(mnist_dir, folder, "profile.progress=false")
    result = subprocess.run([sys.executable, "-m", "noderun", "train", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return folder


def test_sigkill_mid_epoch_then_rerun_resumes_from_the_periodic_checkpoint_bit_identical(mnist_dir, tmp_path,
                                                                                         reference):
    # The child kills itself with SIGKILL in the middle of epoch 2 (the 6th batch of 4 per epoch). With
    # checkpoint_every_s=0 the periodic checkpoint after every step has saved epoch 2's first step.
    resumed_at = "epoch 2, step 1/4"
    args = overrides(mnist_dir, tmp_path, "profile.progress=false", "checkpoint_every_s=0")
    killed = train_with_signal_at_crop(6, "SIGKILL", args)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "table1.csv").exists()
    resumed = subprocess.run([sys.executable, "-m", "noderun", "train", *args], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at {resumed_at}" in resumed.stdout + resumed.stderr
    assert_bit_identical(final_weights(tmp_path), final_weights(reference))
    assert len(rows(tmp_path)) == 1
    assert rows(tmp_path)["test_loss"][0] == rows(reference)["test_loss"][0]


def test_ctrl_c_checkpoints_mid_epoch_and_resume_is_bit_identical(compose_config, mnist_dir, tmp_path, reference,
                                                                  monkeypatch):
    calls = 0
    crop = classification.random_crop

    def crop_then_interrupt(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 7:  # epoch 2, step 2: the run stops before step 3
            os.kill(os.getpid(), signal.SIGINT)
        return crop(*args, **kwargs)

    monkeypatch.setattr(classification, "random_crop", crop_then_interrupt)
    cfg = compose_config(overrides(mnist_dir, tmp_path))
    with pytest.raises(RunInterrupted, match="epoch 2, step 3"):
        train(cfg, log=QUIET)
    assert not (tmp_path / "table1.csv").exists()
    saved = load_checkpoint(run_dir(cfg) / "checkpoint.pt")
    assert (saved["loop"]["epoch"], saved["loop"]["step"]) == (2, 3)

    monkeypatch.setattr(classification, "random_crop", crop)
    lines = []
    train(cfg, log=lines.append)
    assert "[noderun] resumed at epoch 2, step 3/4" in lines
    assert_bit_identical(final_weights(tmp_path), final_weights(reference))
    assert len(rows(tmp_path)) == 1
    log_file = (run_dir(cfg) / "train.log").read_text()
    assert "epoch 1/3" in log_file and "epoch 3/3" in log_file  # both sessions' lines


def test_a_finished_run_is_skipped_and_force_runs_it_again(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(overrides(mnist_dir, tmp_path, "profile.epochs=1"))
    first = train(cfg, log=QUIET)
    lines = []
    again = train(cfg, log=lines.append)
    assert again["run_id"] == first["run_id"] and any("already finished" in line for line in lines)
    assert len(rows(tmp_path)) == 1
    forced = train(compose_config(overrides(mnist_dir, tmp_path, "profile.epochs=1", "force=true")), log=QUIET)
    assert forced["run_id"] != first["run_id"]
    assert forced["test_loss"] == first["test_loss"]  # seeded and deterministic on CPU
    assert len(rows(tmp_path)) == 2


def test_a_kill_between_row_and_finished_marker_never_writes_a_second_row(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(overrides(mnist_dir, tmp_path, "profile.epochs=1"))
    first = train(cfg, log=QUIET)
    (run_dir(cfg) / "finished.json").unlink()  # as if killed right after appending the row
    again = train(cfg, log=QUIET)
    assert again["run_id"] == first["run_id"]
    assert len(rows(tmp_path)) == 1


def test_resume_false_starts_over(compose_config, mnist_dir, tmp_path, monkeypatch):
    cfg = compose_config(overrides(mnist_dir, tmp_path))
    interrupt_before_the_first_step(cfg)
    lines = []
    train(compose_config(overrides(mnist_dir, tmp_path, "resume=false")), log=lines.append)
    assert not any("resumed at" in line or "resuming" in line for line in lines), lines


@pytest.mark.parametrize("damage", ["truncate", "tamper", "foreign"])
def test_an_unreadable_checkpoint_is_refused_in_one_line(compose_config, mnist_dir, tmp_path, damage):
    cfg = compose_config(overrides(mnist_dir, tmp_path))
    interrupt_before_the_first_step(cfg)
    path = run_dir(cfg) / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:400]) + data[400:])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError) as caught:
        train(cfg, log=QUIET)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "resume=false" in message
    assert not (tmp_path / "table1.csv").exists()


def test_the_cli_reports_an_unreadable_checkpoint_in_one_line_and_exit_2(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(overrides(mnist_dir, tmp_path))
    folder = RunDirectory(cfg)
    folder.checkpoint_path.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "noderun", "train", *overrides(mnist_dir, tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("noderun: error:")]
    assert len(errors) == 1 and "unreadable" in errors[0]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint_module.save_checkpoint(path, {"step": 1})
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        checkpoint_module.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_a_diverging_run_records_a_failed_row_and_keeps_its_log(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(overrides(mnist_dir, tmp_path, "profile.lr=1e12"))
    with pytest.raises(RunFailed, match="training loss became"):
        train(cfg, log=QUIET)
    frame = read_results(tmp_path)
    assert len(frame) == 1 and frame["status"][0].startswith("failed: training loss became")
    assert frame["model"][0] == "resnet" and pd.isna(frame["test_error"][0])
    assert "run failed" in (run_dir(cfg) / "train.log").read_text()
    table = render_all(frame, "smoke")
    assert re.search(r"\| ResNet +\| failed", table)


def test_a_solver_failure_records_a_failed_row(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(["model=odenet", "model.channels=8", *overrides(mnist_dir, tmp_path)[3:],
                          "solver.max_num_steps=1"])
    with pytest.raises(RunFailed, match="max_num_steps"):
        train(cfg, log=QUIET)
    frame = read_results(tmp_path)
    assert frame["status"][0].startswith("failed: ") and "max_num_steps" in frame["status"][0]
    assert frame["method"][0] == "dopri5" and frame["rtol"][0] == cfg.solver.rtol
    # A retry of the same command is a new attempt (a new run id), not a skipped finished run.
    with pytest.raises(RunFailed):
        train(cfg, log=QUIET)
    frame = read_results(tmp_path)
    assert len(frame) == 2 and frame["run_id"].nunique() == 2


def test_the_cli_exits_1_with_one_line_for_a_failed_run(mnist_dir, tmp_path):
    args = ["model=odenet", "model.channels=8", *overrides(mnist_dir, tmp_path)[3:], "solver.max_num_steps=1"]
    result = subprocess.run([sys.executable, "-m", "noderun", "train", *args], capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("noderun: error:")]
    assert len(errors) == 1 and "max_num_steps" in errors[0]


SMALL_SPIRALS = ["dataset.n_spirals=40", "dataset.n_train=30", "dataset.n_val=6", "dataset.n_obs=30",
                 "model.batch_size=10"]


@pytest.mark.parametrize(
    "overrides, artifact, stopped, resumed",
    [
        (["experiment=latent_ode", *SMALL_SPIRALS, "model.iterations.smoke=6"],
         "spirals/table2/smoke_n30_noise0.3_latent_ode_seed0_data0.npz", "epoch 1, step 4", "epoch 1, step 4/6"),
        # validation every 2 iterations, two restarts: stopped where the second restart begins
        (["experiment=latent_ode_elbo", *SMALL_SPIRALS, "model.iterations.smoke=4", "model.eval_every=2",
          "model.restarts=2"], "spirals/table2/smoke_n30_noise0.3_latent_ode_elbo_seed0_data0.npz", "epoch 3, step 0",
         "epoch 3, step 0/2"),
        (["experiment=mle_cnf", "dataset=two_moons", "model.width=4", "model.eval_samples=200",
          "solver.rtol=1e-3", "solver.atol=1e-3", "model.iterations.smoke=6"],
         "flows/smoke/mle_two_moons_planar_cnf_w4_s0.npz", "epoch 1, step 4", "epoch 1, step 4/6"),
    ],
    ids=["latent_ode", "latent_ode_restarts", "planar_cnf"],
)
def test_iteration_tasks_resume_bit_identical_after_ctrl_c(compose_config, tmp_path, overrides, artifact, stopped,
                                                           resumed):
    args = [*overrides, "profile=smoke"]
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    train(compose_config([*args, f"results_dir={reference_dir}"]), log=QUIET)

    cfg = compose_config([*args, f"results_dir={resumed_dir}"])

    def stop_after_three(line: str) -> None:
        if line.startswith(("step 3/6", "step 3/8")):
            # as Ctrl-C does: every process learns of it with the next step's collective, then stops
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted, match=stopped):
        train(cfg, log=stop_after_three)
    lines = []
    train(cfg, log=lines.append)
    assert f"[noderun] resumed at {resumed}" in lines
    produced = list(resumed_dir.glob(artifact.split("/")[0] + "/**/*.npz"))
    assert [p.relative_to(resumed_dir).as_posix() for p in produced] == [artifact]
    ours, theirs = np.load(resumed_dir / artifact), np.load(reference_dir / artifact)
    for key in theirs.files:
        nan_ok = ours[key].dtype.kind == "f"  # NaN: no prediction there; labels are text
        assert np.array_equal(ours[key], theirs[key], equal_nan=nan_ok), key


def test_ctrl_c_on_the_cli_saves_and_exits_130_then_resumes(mnist_dir, tmp_path):
    args = overrides(mnist_dir, tmp_path, "profile.progress=false", "profile.epochs=1")
    interrupted = train_with_signal_at_crop(2, "SIGINT", args)
    assert interrupted.returncode == 130, interrupted.stderr
    assert "interrupted at epoch 1, step 2" in interrupted.stdout and "rerun the same command" in interrupted.stdout
    assert "Traceback" not in interrupted.stderr and not (tmp_path / "table1.csv").exists()
    resumed = subprocess.run([sys.executable, "-m", "noderun", "train", *args], capture_output=True, text=True)
    assert resumed.returncode == 0 and "resumed at epoch 1, step 2/4" in resumed.stdout
    assert len(rows(tmp_path)) == 1


@pytest.mark.parametrize("error, reason", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory: CUDA out of memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes; out of memory"),
     "out of memory: DefaultCPUAllocator"),
    (FloatingPointError("training loss became nan at epoch 3, step 7"), "training loss became nan"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # a bug, not a run failure: re-raised as is
    (KeyError("model"), None),
])
def test_which_errors_are_recorded_as_failed_runs(error, reason):
    from noderun.runner import failure_reason

    found = failure_reason(error)
    assert (found is None) if reason is None else found.startswith(reason)
