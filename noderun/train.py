"""`train(cfg) -> dict`: one run of any task, one result row. The CLI only wraps it.

Checks every value before any work (the common ones here, the task's own in its
module), runs the task named by `cfg.task`, and appends one row to
``<results_dir>/<experiment_name>.csv``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from noderun.errors import ConfigError
from noderun.profiling import git_commit, resolve_device
from noderun.results import COMMON_COLUMNS, append_row, check_writable
from noderun.tasks import TASKS, Task


def validate_common(cfg: DictConfig) -> Task:
    """Check what every task shares (task, device, solver); return the task."""
    from noderun.ode.methods import METHODS  # the solver library's registry is the one source of truth

    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is invalid; valid tasks: {sorted(TASKS)}")
    resolve_device(cfg.device)
    solver = cfg.solver
    checks = [
        (solver.method in METHODS, "solver.method", solver.method, f"valid methods: {sorted(METHODS)}"),
        (solver.rtol > 0, "solver.rtol", solver.rtol, "it must be > 0"),
        (solver.atol > 0, "solver.atol", solver.atol, "it must be > 0"),
        (solver.max_num_steps >= 1, "solver.max_num_steps", solver.max_num_steps, "it must be >= 1"),
        (solver.step_size is None or solver.step_size > 0, "solver.step_size", solver.step_size,
         "it must be null or > 0"),
    ]
    for ok, key, value, accepted in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is invalid; {accepted}")
    return TASKS[cfg.task]


def validate(cfg: DictConfig) -> Task:
    """All checks for a composed config; raises ConfigError, returns the task."""
    task = validate_common(cfg)
    task.validate(cfg)
    return task


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def train(cfg: DictConfig, log=print) -> dict:
    """Run one experiment described by a composed config; append and return its result row."""
    task = validate(cfg)
    check_writable(cfg.results_dir)
    run_id = new_run_id()
    commit = git_commit()  # the code that runs, even if the checkout changes during a long run
    metrics = task.run(cfg, log=log)
    row = {
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "experiment": cfg.experiment_name,
        "task": task.name,
        "status": "ok",
        "profile": cfg.profile.name,
        "seed": cfg.seed,
        "torch_version": torch.__version__,
        "git_commit": commit,
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
        **metrics,
    }
    path = Path(cfg.results_dir) / f"{cfg.experiment_name}.csv"
    append_row(path, row, COMMON_COLUMNS + list(task.columns))
    log(f"[noderun] result row -> {path} (run {run_id})")
    return row
