"""The logger group: TensorBoard and MLflow read back through their own readers, for every task, across
a stop and a resume, a failure and a multirun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from noderun.checkpoint import RunInterrupted
from noderun.errors import ConfigError
from noderun.loggers import RunLogger
from noderun.runner import RunFailed, train, validate

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

QUIET = lambda *_: None  # noqa: E731
CROSSING = ["experiment=crossing", "model=crossing_ode", "profile=smoke", "profile.progress=false",
            "model.iterations.smoke=6"]


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every event of `tag` under a TensorBoard run folder, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


def mlflow_runs(results: Path, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(Path(results, "mlflow").resolve().as_uri())
    return mlflow.search_runs(experiment_names=[experiment])


def metric_steps(results: Path, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=Path(results, "mlflow").resolve().as_uri())
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_tensorboard_gets_every_step_every_epoch_and_the_final_metrics(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(["model=odenet", "model.channels=8", "profile=smoke", "profile.progress=false",
                          "profile.train_size=128", "profile.epochs=2", "logger=tensorboard", f"data_dir={mnist_dir}",
                          f"results_dir={tmp_path}"])
    row = train(cfg, log=QUIET)
    (folder,) = (tmp_path / "tensorboard" / "table1").iterdir()
    assert folder.name == row["run_id"]
    assert [s for s, _ in scalars(folder, "train/loss")] == [1, 2, 3, 4]  # 2 epochs of 2 steps of 64
    for tag in ("train/lr", "train/nfe_forward", "train/nfe_backward", "train/step_time_s"):
        assert len(scalars(folder, tag)) == 4, tag
    assert [s for s, _ in scalars(folder, "epoch/test_error")] == [2, 4]
    assert scalars(folder, "epoch/test_error")[-1][1] == pytest.approx(row["test_error"], abs=1e-3)
    assert scalars(folder, "final/nfe_forward")[-1][1] == pytest.approx(row["nfe_forward"])


def test_mlflow_gets_one_run_with_the_config_the_key_the_commit_and_the_final_metrics(compose_config, tmp_path):
    row = train(compose_config([*CROSSING, "logger=mlflow", f"results_dir={tmp_path}"]), log=QUIET)
    runs = mlflow_runs(tmp_path, "crossing")
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    run = runs.iloc[0]
    assert run["tags.mlflow.runName"] == row["run_id"]
    assert run["params.model.name"] == "crossing_ode" and run["params.solver.method"] == "dopri5"
    assert run["params.run.commit"] == row["git_commit"] and run["params.run.key"]
    assert "cpu" in run["params.run.device"].lower() or "Processor" in run["params.run.device"]
    assert run["metrics.final/test_loss"] == pytest.approx(row["test_loss"], abs=1e-5)
    assert metric_steps(tmp_path, run["run_id"], "train/loss") == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_a_stopped_and_resumed_run_continues_the_same_tracker_run_without_repeating_a_step(compose_config, tmp_path,
                                                                                           logger):
    cfg = compose_config([*CROSSING, f"logger={logger}", f"results_dir={tmp_path}"])

    def stop_after_three(line: str) -> None:
        if line.startswith("step 3/6"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted):
        train(cfg, log=stop_after_three)
    row = train(cfg, log=QUIET)
    if logger == "tensorboard":
        (folder,) = (tmp_path / "tensorboard" / "crossing").iterdir()
        assert [s for s, _ in scalars(folder, "train/loss")] == [1, 2, 3, 4, 5, 6]
    else:
        runs = mlflow_runs(tmp_path, "crossing")
        assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
        assert runs["tags.mlflow.runName"].iloc[0] == row["run_id"]
        assert metric_steps(tmp_path, runs["run_id"].iloc[0], "train/loss") == [1, 2, 3, 4, 5, 6]


def test_steps_logged_after_the_checkpoint_by_a_killed_session_are_not_logged_twice(tmp_path):
    # a session logs steps 1-5 and is killed; its checkpoint was at step 3: the resumed session logs 4-6
    cfg = OmegaConf.create({"experiment_name": "e", "results_dir": str(tmp_path), "seed": 0,
                            "logger": {"backends": ["tensorboard", "mlflow"],
                                       "tensorboard_dir": str(tmp_path / "tensorboard"), "mlflow_uri": None}})
    meta = {"run_id": "r1", "git_commit": "abc"}
    first = RunLogger(cfg, ("tensorboard", "mlflow"), meta, "key", "cpu", 0, lambda i: meta.update(mlflow_run_id=i))
    for step in range(1, 6):
        first.log_step(step, {"train/loss": float(step)})
    first.backends[0].writer.flush()  # the killed session's events reach the disk
    resumed = RunLogger(cfg, ("tensorboard", "mlflow"), meta, "key", "cpu", 3, lambda i: None)
    for step in range(4, 7):
        resumed.log_step(step, {"train/loss": float(step)})
    resumed.finish({"test_loss": 0.5})
    assert [s for s, _ in scalars(tmp_path / "tensorboard" / "e" / "r1", "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert metric_steps(tmp_path, meta["mlflow_run_id"], "train/loss") == [1, 2, 3, 4, 5, 6]


def test_a_failed_run_is_marked_failed_in_mlflow(compose_config, tmp_path):
    cfg = compose_config([*CROSSING, "solver.max_num_steps=1", "logger=mlflow", f"results_dir={tmp_path}"])
    with pytest.raises(RunFailed):
        train(cfg, log=QUIET)
    assert list(mlflow_runs(tmp_path, "crossing")["status"]) == ["FAILED"]


@pytest.mark.parametrize("overrides, csv", [
    (["experiment=latent_ode_elbo", "dataset.n_spirals=40", "dataset.n_train=30", "dataset.n_val=6",
      "dataset.n_obs=30", "model.iterations.smoke=4", "model.eval_every=2"], "table2"),
    (["experiment=mle_cnf", "dataset=two_moons", "model.width=4", "model.eval_samples=200"], "flows_mle"),
    (["experiment=density_nf", "dataset.target=u1"], "flows_density"),
])
def test_every_task_logs_through_the_runner(compose_config, tmp_path, overrides, csv):
    row = train(compose_config([*overrides, "profile=smoke", "profile.progress=false", "logger=tensorboard",
                                f"results_dir={tmp_path}"]), log=QUIET)
    folder = tmp_path / "tensorboard" / csv / row["run_id"]
    assert len(scalars(folder, "train/loss")) == row["iterations"]
    assert scalars(folder, "epoch/time_s")
    if csv == "table2":
        assert [s for s, _ in scalars(folder, "epoch/val_loss")] == [2, 4]


def test_a_multirun_gives_one_tracker_run_per_job(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "noderun", "train", "-m", *CROSSING, "dataset=crossing_1d", "seed=0,1", "logger=mlflow",
         f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert result.returncode == 0, result.stderr
    runs = mlflow_runs(tmp_path, "crossing")
    assert len(runs) == 2 and sorted(runs["params.seed"]) == ["0", "1"] and runs["tags.mlflow.runName"].nunique() == 2


@pytest.mark.parametrize("overrides, message", [
    (["logger.backends=[wandb]"], "valid backends: ['tensorboard', 'mlflow']"),
    (["logger.backends=[mlflow,mlflow]"], "names a backend twice"),
    (["logger=tensorboard", "logger.mlflow_uri=http://x"], "no effect without the mlflow backend"),
])
def test_an_invalid_logger_is_refused_in_one_line(compose_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose_config(["model=odenet", *overrides]))


def test_a_logger_whose_package_is_missing_names_the_extra(compose_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails
    with pytest.raises(ConfigError, match=r"pip install 'noderun\[tracking\]'"):
        validate(compose_config(["model=odenet", "logger=mlflow"]))


def test_a_logger_does_not_change_the_run_key(compose_config):
    from noderun.checkpoint import run_key

    assert run_key(compose_config(["model=odenet"])) == run_key(compose_config(["model=odenet", "logger=all"]))
