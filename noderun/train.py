"""`train(cfg) -> dict`: one run of any task, one result row. The CLI only wraps it.

Checks every value before any work (the common ones here, the task's own in its
module), runs the task named by `cfg.task` in its run directory (resumable, see
noderun.checkpoint), and appends exactly one row to ``<results_dir>/<experiment_name>.csv``:
status "ok" with the task's measurements, or "failed: <reason>".
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from noderun import distributed
from noderun.checkpoint import RunDirectory, RunInterrupted
from noderun.distributed import World
from noderun.errors import ConfigError
from noderun.profiling import device_name, git_commit, resolve_device
from noderun.results import COMMON_COLUMNS, append_row, check_writable
from noderun.tasks import TASKS, Task


def validate_common(cfg: DictConfig) -> Task:
    """Check what every task shares (task, device, solver); return the task."""
    from noderun.ode.methods import METHODS  # the solver library's registry is the one source of truth

    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is invalid; valid tasks: {sorted(TASKS)}")
    world = World.from_environment()
    if world.distributed and cfg.task != "classification":
        raise ConfigError(f"task={cfg.task} runs in one process; torchrun (WORLD_SIZE={world.size}) is supported "
                          "for the classification task (Table 1, depth)")
    resolve_device(cfg.device)
    solver = cfg.solver
    checks = [
        (solver.method in METHODS, "solver.method", solver.method, f"valid methods: {sorted(METHODS)}"),
        (math.isfinite(solver.rtol) and solver.rtol > 0, "solver.rtol", solver.rtol, "it must be a finite number > 0"),
        (math.isfinite(solver.atol) and solver.atol > 0, "solver.atol", solver.atol, "it must be a finite number > 0"),
        (solver.max_num_steps >= 1, "solver.max_num_steps", solver.max_num_steps, "it must be >= 1"),
        (solver.step_size is None or (math.isfinite(solver.step_size) and solver.step_size > 0),
         "solver.step_size", solver.step_size, "it must be null or a finite number > 0"),
    ]
    for ok, key, value, accepted in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is invalid; {accepted}")
    if cfg.task == "classification":  # the ODE block of Table 1 is the one with a torchdiffeq backend
        from noderun.models.odenet import check_backend

        check_backend(solver.backend, solver.method)
    return TASKS[cfg.task]


def validate(cfg: DictConfig) -> Task:
    """All checks for a composed config; raises ConfigError, returns the task."""
    task = validate_common(cfg)
    task.validate(cfg)
    return task


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def failure_reason(error: BaseException) -> str | None:
    """The one-line reason a run failed, or None for errors that are bugs rather than run failures.

    Run failures: divergence (NaN or infinite loss), the ODE solver giving up (step underflow,
    max_num_steps, non-finite state) and running out of memory.
    """
    from noderun.ode.errors import ODESolverError

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, (FloatingPointError, ODESolverError)):
        return text[:300]
    if isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in text):
        return f"out of memory: {text[:200]}"
    return None


def train(cfg: DictConfig, log=print) -> dict:
    """Run (or resume) one experiment described by a composed config; append and return its result row.

    A run whose directory (noderun.checkpoint.run_dir) holds a checkpoint continues from it;
    a finished one is skipped and its row returned, unless cfg.force. A run that fails
    (divergence, solver failure, out of memory) appends a row with status "failed: <reason>",
    keeps its checkpoint and log, and re-raises.
    """
    task = validate(cfg)
    check_writable(cfg.results_dir)
    world = World.from_environment()
    distributed.start(world, world.device(resolve_device(cfg.device)))
    try:
        return _train(cfg, task, world, log)
    finally:
        distributed.stop(world)


def _train(cfg: DictConfig, task: Task, world: World, log) -> dict:
    run_dir = RunDirectory(cfg, resume=cfg.resume and not cfg.force, writer=world.is_main)
    finished = run_dir.finished_row()
    if finished is not None:
        log(f"[noderun] already finished: run {finished.get('run_id')} in {run_dir.path} "
            "(force=true runs it again)")
        return finished
    meta = run_dir.meta(new_run_id(), git_commit())  # commit at the start: the code that runs
    log = run_dir.tee(log)
    state = run_dir.load()
    if state is not None:
        log(f"[noderun] resuming run {meta['run_id']} from {run_dir.checkpoint_path}")
    row = {
        "run_id": meta["run_id"],
        "experiment": cfg.experiment_name,
        "task": task.name,
        "profile": cfg.profile.name,
        "seed": cfg.seed,
        "torch_version": torch.__version__,
        "git_commit": meta["git_commit"],
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
    }
    path = Path(cfg.results_dir) / f"{cfg.experiment_name}.csv"
    columns = COMMON_COLUMNS + list(task.columns)
    try:
        with run_dir.stop_on_interrupt():
            metrics = task.run(cfg, log=log, run=run_dir)
    except RunInterrupted as interrupted:
        log(f"[noderun] {interrupted}; rerun the same command to resume")
        raise
    except Exception as error:
        reason = failure_reason(error)
        if reason is None:
            raise
        device = resolve_device(cfg.device)
        failed = {**row, **(task.describe(cfg) if task.describe else {}), "status": f"failed: {reason}",
                  "timestamp": _now(), "device": device.type, "device_name": device_name(device)}
        if world.is_main:
            append_row(path, failed, columns, unique_key="run_id")
        log(f"[noderun] run failed ({reason}); row marked failed -> {path}; "
            f"checkpoint and log kept in {run_dir.path}")
        run_dir.forget_run_id()  # a retry (same command) continues from the checkpoint as a new run id
        raise
    row.update({"timestamp": _now(), "status": "ok", **metrics})
    # unique_key: a run killed between this append and mark_finished appends nothing on its rerun.
    if world.is_main:
        append_row(path, row, columns, unique_key="run_id")
    run_dir.mark_finished(row)
    log(f"[noderun] result row -> {path} (run {meta['run_id']})")
    return row


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
