"""Experiment trackers: TensorBoard and MLflow, fed by the runner for every task alike (`logger` group).

What a run logs (noderun.runner calls these; a task adds only its epoch metrics, Task.epoch_metrics):

- per training step (`step` counts from 1 over the whole run): ``train/loss``, ``train/lr``,
  ``train/nfe_forward``, ``train/nfe_backward``, ``train/step_time_s`` and, with a regularizer,
  ``train/reg_kinetic``, ``train/reg_jacobian``;
- per epoch, at the step that ends it: ``epoch/time_s`` and the task's own metrics (``epoch/test_error``,
  ``epoch/val_loss``, ...);
- at the end, at the last step: what the run measured (the result row's numeric columns but those that
  name its cell) as ``final/<column>``;
- once, as parameters: the composed config flattened to dotted keys, with ``run.key``, ``run.commit`` and
  ``run.device`` (TensorBoard: its hparams and a text summary).

Where: TensorBoard event files under ``<logger.tensorboard_dir>/<experiment>/<run_id>`` (by default
``results/tensorboard/...``, for ``tensorboard --logdir results/tensorboard``); MLflow one run per noderun run,
in the MLflow experiment named after ``experiment_name``, at ``logger.mlflow_uri`` (by default a local file
store, ``results/mlflow``, for ``mlflow ui --backend-store-uri results/mlflow``).

A resumed run continues the same tracker runs (the MLflow run id is kept in the run directory) and logs
no step twice: TensorBoard drops what an interrupted session wrote after the checkpoint (purge_step),
and MLflow skips the steps it already holds. A failed run ends its MLflow run FAILED. Only the main
process of a torchrun job logs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from noderun.errors import ConfigError

BACKENDS = ("tensorboard", "mlflow")
EXTRA = "tracking"  # pip install noderun[tracking]


def check(cfg: DictConfig) -> tuple[str, ...]:
    """The configured backends; ConfigError for an unknown one or one whose package is missing."""
    backends = tuple(cfg.logger.backends)
    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(f"logger.backends has {name!r}; valid backends: {list(BACKENDS)} (logger=none logs "
                              "nothing)")
    if len(set(backends)) != len(backends):
        raise ConfigError(f"logger.backends={list(backends)} names a backend twice")
    module = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow"}
    for name in backends:
        try:
            __import__(module[name])
        except ImportError:
            raise ConfigError(f"logger {name!r} needs its package, which is not installed: "
                              f"pip install 'noderun[{EXTRA}]'") from None
    if cfg.logger.mlflow_uri is not None and "mlflow" not in backends:
        raise ConfigError("logger.mlflow_uri has no effect without the mlflow backend; add it to logger.backends "
                          "(logger=mlflow) or drop logger.mlflow_uri")
    return backends


def flat_params(cfg: DictConfig) -> dict:
    """The resolved config as {dotted.key: value} (lists and dicts of leaves as JSON text)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class TensorBoardBackend:
    def __init__(self, cfg: DictConfig, run_id: str, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(cfg.logger.tensorboard_dir) / cfg.experiment_name / run_id
        # purge_step: events an interrupted session wrote after the checkpoint this one resumes from are dropped
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)
        self.folder = folder

    def params(self, params: dict, new: bool) -> None:
        if new:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())), 0)

    def metrics(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def final(self, final: dict, params: dict, step: int) -> None:
        # the hparams dashboard: the flattened config beside the row's metrics (written as their scalars too)
        scalars = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}
        self.writer.add_hparams(scalars, final, run_name=".", global_step=step)

    def end(self, status: str) -> None:
        self.writer.close()


class MLflowBackend:
    def __init__(self, cfg: DictConfig, run_id: str, start_step: int, stored: Optional[str]):
        uri = cfg.logger.mlflow_uri or Path(cfg.results_dir, "mlflow").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow keeps its local file store in maintenance mode behind this switch; it needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.experiment_name))
        if stored is not None:  # a resumed run continues its MLflow run
            self.run_id = stored
            self.client.update_run(stored, status="RUNNING")
            history = self.client.get_metric_history(stored, "train/loss")
            self.last_step = max((m.step for m in history), default=0)
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
            self.last_step = 0

    def params(self, params: dict, new: bool) -> None:
        if new:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])

    def metrics(self, metrics: dict, step: int) -> None:
        if step <= self.last_step:  # logged before the interruption this run resumes from
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def final(self, final: dict, params: dict, step: int) -> None:
        self.metrics(final, step)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class RunLogger:
    """The run's trackers (none, TensorBoard, MLflow or both); every call is a no-op without them."""

    def __init__(self, cfg: DictConfig, backends: tuple, meta: dict, run_key: str, device: str, start_step: int,
                 store_mlflow_id, is_main: bool = True):
        self.backends = []
        self.step = start_step
        if not is_main or not backends:
            return
        self.params = {**flat_params(cfg), "run.key": run_key, "run.commit": meta.get("git_commit", ""),
                       "run.device": device, "run.id": meta.get("run_id", "")}
        new = start_step == 0
        for name in backends:
            if name == "tensorboard":
                backend = TensorBoardBackend(cfg, meta["run_id"], start_step)
            else:
                backend = MLflowBackend(cfg, meta["run_id"], start_step, meta.get("mlflow_run_id"))
                if meta.get("mlflow_run_id") is None:
                    store_mlflow_id(backend.run_id)
                    new = True
            backend.params(self.params, new or start_step == 0)
            self.backends.append(backend)

    def log_step(self, step: int, metrics: dict) -> None:
        self.step = step
        clean = {k: n for k, v in metrics.items() if (n := _number(v)) is not None}
        for backend in self.backends:
            backend.metrics(clean, step)

    def log_epoch(self, metrics: dict) -> None:
        self.log_step(self.step, metrics)

    def finish(self, measured: dict) -> None:
        """The run ended: its measured result columns as final/<column>, and the trackers close FINISHED."""
        final = {f"final/{k}": n for k, v in measured.items() if not isinstance(v, bool) and (n := _number(v)) is not None}
        for backend in self.backends:
            backend.final(final, self.params, self.step)
            backend.end("FINISHED")
        self.backends = []

    def fail(self) -> None:
        for backend in self.backends:
            backend.end("FAILED")
        self.backends = []

    def stop(self) -> None:
        """Interrupted (Ctrl-C): the trackers close (MLflow: KILLED); a rerun resumes them."""
        for backend in self.backends:
            backend.end("KILLED")
        self.backends = []
