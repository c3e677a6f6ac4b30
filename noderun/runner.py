"""The one training runner: `train(cfg) -> dict` runs any task and appends exactly one result row.

What every task shares lives here, written once:

- checks before any work (the common ones, then the task's own `validate`, then a refusal of
  any config key the run would not read, `Task.unread`);
- seeding, the device, CPU threads, and the process group under torchrun;
- the run directory (noderun.checkpoint): resume, checkpoints at every epoch end, every
  `checkpoint_every_s` seconds at a step boundary and on Ctrl-C, the failed row of a run
  that diverged, whose solver gave up or that ran out of memory;
- the training loop: the progress bar and log lines, the non-finite-loss check, NFE
  tracking (noderun.ode.track_stats), timing with a device sync, and the activation memory
  of the first step (noderun.profiling.SavedTensorMeter);
- the common result columns (noderun.results.RunRecord), filled the same way for every task.

A task (noderun.tasks.base.Task) says only what differs: its model, optimiser, batches,
loss, evaluation, artifacts and own columns.

Under torchrun every rank runs this loop on its shard of each global batch. One collective a
step sums the loss and the task's tallies, and tells every rank whether any rank was asked to
stop or failed; gradients are then averaged across ranks. So a solver failure or an
out-of-memory error on one rank stops every rank at the same step, and rank 0 writes the one
failed row, instead of the other ranks waiting in a collective until a timeout.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from noderun import distributed, loggers
from noderun.checkpoint import RunDirectory, RunInterrupted, restore_rng_states, rng_states, run_key
from noderun.loggers import RunLogger
from noderun.models.regularization import regularizer_label
from noderun.config import refuse_unread
from noderun.distributed import World
from noderun.errors import ConfigError
from noderun.profiling import (SavedTensorMeter, bf16_supported, cpu_threads, device_name, float32_matmuls, git_commit,
                                resolve_device, synchronize)
from noderun.results import COMMON_COLUMNS, RunRecord, append_row, check_writable
from noderun.tasks import get_task, task_names
from noderun.tasks.base import EpochSummary, Task

PRECISIONS = ("32", "bf16-mixed")


def regularizer_of(cfg: DictConfig, task: type[Task]):
    """The run's noderun.models.regularization.Regularizer (ConfigError for one that cannot act)."""
    from noderun.models.regularization import from_config

    return from_config(cfg.regularizer, trains_ode=task.trains_ode(cfg),
                       run=f"task={task.name}, model={cfg.model.name}")
# Common columns that say what ran rather than what it measured (the trackers log the others as final/...).
NOT_MEASURED = ("run_id", "timestamp", "experiment", "task", "status", "model", "dataset", "profile", "seed",
                "epochs", "method", "rtol", "atol", "adjoint", "regularizer", "device", "device_name", "precision",
                "torch_version", "git_commit", "config")
LOG_LINES = 10  # progress lines a run logs, evenly spaced over its steps
NFE_WINDOW = 0.1  # nfe_forward / nfe_backward average the last 10 % of training iterations


class RunFailed(RuntimeError):
    """A run failed in a way that is recorded (divergence, solver failure, out of memory): its failed
    row is written and its checkpoint and log are kept. The message is the row's reason."""


# ------------------------------------------------------------------------- checks


def validate(cfg: DictConfig) -> type[Task]:
    """All checks of a composed config, before any work; raises ConfigError, returns the task class."""
    if cfg.task not in task_names():
        raise ConfigError(f"task={cfg.task!r} is invalid; valid tasks: {task_names()}")
    task = get_task(cfg.task)
    world = World.from_environment()
    if world.distributed and not task.distributed:
        raise ConfigError(f"task={cfg.task} runs in one process; torchrun (WORLD_SIZE={world.size}) is supported "
                          "for the classification task (Table 1, depth)")
    resolve_device(cfg.device)
    if not (math.isfinite(cfg.checkpoint_every_s) and cfg.checkpoint_every_s >= 0):
        raise ConfigError(f"checkpoint_every_s={cfg.checkpoint_every_s!r} is invalid; it must be a number of "
                          "seconds >= 0 (0: a checkpoint after every step)")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is invalid; valid values: {list(PRECISIONS)}")
    if cfg.precision not in task.precisions:
        raise ConfigError(f"precision={cfg.precision} is not available for task={task.name}; "
                          f"it takes: {list(task.precisions)}")
    if cfg.precision == "bf16-mixed" and not bf16_supported(resolve_device(cfg.device)):
        raise ConfigError("precision=bf16-mixed needs native bfloat16 arithmetic, which this device lacks "
                          "(CPU: AVX512-BF16 or AMX; CUDA: compute capability 8.0 or newer): emulated it is "
                          "slower than float32; use precision=32")
    task.validate(cfg)
    regularizer_of(cfg, task)
    loggers.check(cfg)
    refuse_unread(cfg, task.unread(cfg))
    return task


def failure_reason(error: BaseException) -> str | None:
    """The one-line reason a run failed, or None for errors that are bugs rather than run failures.

    Run failures: divergence (NaN or infinite loss), the ODE solver giving up (step underflow,
    max_num_steps, non-finite state) and running out of memory.
    """
    from noderun.ode.errors import ODESolverError

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, (FloatingPointError, ODESolverError, RunFailed)):
        return text[:300]
    if isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in text):
        return f"out of memory: {text[:200]}"
    return None


# ---------------------------------------------------------------------- the run


def train(cfg: DictConfig, log=print) -> dict:
    """Run (or resume) one experiment described by a composed config; append and return its result row.

    A run whose directory (noderun.checkpoint.run_dir) holds a checkpoint continues from it;
    a finished one is skipped and its row returned, unless cfg.force. A run that fails
    (divergence, solver failure, out of memory) appends a row with status "failed: <reason>",
    keeps its checkpoint and log, and raises RunFailed. Any other error is a bug: it propagates
    as it is and writes no row.
    """
    task = validate(cfg)
    check_writable(cfg.results_dir)
    world = World.from_environment()
    device = world.device(resolve_device(cfg.device))
    distributed.start(world, device)
    try:
        with cpu_threads(task.cpu_threads(cfg), device), float32_matmuls(device):
            return _run(cfg, task, world, device, log)
    finally:
        distributed.stop(world)


def _run(cfg: DictConfig, task: type[Task], world: World, device: torch.device, log) -> dict:
    run_dir = RunDirectory(cfg, resume=cfg.resume and not cfg.force, writer=world.is_main)
    world.barrier()  # rank 0 has removed a stale checkpoint (resume=false, force) before any rank reads one
    finished = run_dir.finished_row()
    if finished is not None:
        log(f"[noderun] already finished: run {finished.get('run_id')} in {run_dir.path} "
            "(force=true runs it again)")
        return finished
    meta = run_dir.meta(new_run_id(), git_commit())  # commit at the start: the code that runs
    log = run_dir.tee(log)
    record = RunRecord(
        run_id=meta["run_id"], experiment=cfg.experiment_name, task=task.name, profile=cfg.profile.name,
        seed=cfg.seed, device=device.type, device_name=device_name(device), precision=cfg.precision,
        torch_version=torch.__version__, regularizer=regularizer_label(cfg.regularizer),
        git_commit=meta["git_commit"], config=json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
    )
    cell = task.describe(cfg)
    row = {**asdict(record), **cell}
    path = Path(cfg.results_dir) / f"{cfg.experiment_name}.csv"
    columns = COMMON_COLUMNS + list(task.columns)
    loop = Loop(cfg, task, run_dir, world, device, log, meta)
    try:
        with run_dir.stop_on_interrupt():
            row.update(loop.run())
    except RunInterrupted as interrupted:
        loop.tracker.stop()
        log(f"[noderun] {interrupted}; rerun the same command to resume")
        raise
    except Exception as error:
        reason = failure_reason(error)
        loop.tracker.fail()
        if reason is None:
            raise
        if world.is_main:
            append_row(path, {**row, "status": f"failed: {reason}", "timestamp": now()}, columns, unique_key="run_id")
        log(f"[noderun] run failed ({reason}); row marked failed -> {path}; "
            f"checkpoint and log kept in {run_dir.path}")
        run_dir.forget_run_id()  # a retry (same command) continues from the checkpoint as a new run id
        raise RunFailed(reason) from error
    row.update(timestamp=now(), status="ok")
    # unique_key: a run killed between this append and mark_finished appends nothing on its rerun.
    if world.is_main:
        append_row(path, row, columns, unique_key="run_id")
    loop.tracker.finish({k: v for k, v in row.items() if k not in cell and k not in NOT_MEASURED})
    run_dir.mark_finished(row)
    log(f"[noderun] result row -> {path} (run {meta['run_id']})")
    return row


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- the loop


@dataclass
class LoopState:
    """Where a run stands, checkpointed with the weights: a resumed run continues bit for bit."""

    epoch: int = 1  # the epoch in progress (1-based)
    step: int = 0  # steps of it already taken
    epoch_loss_sum: float = 0.0  # loss x samples, summed over the epoch's steps (all ranks)
    epoch_tallies: dict = field(default_factory=dict)  # the task's tallies, summed likewise
    epoch_elapsed_s: float = 0.0
    train_elapsed_s: float = 0.0
    last_loss: float = math.nan
    nfe_forward: list = field(default_factory=list)  # per training iteration, the whole run
    nfe_backward: list = field(default_factory=list)
    reg_kinetic: list = field(default_factory=list)  # per training iteration with a regularizer (RunRecord)
    reg_jacobian: list = field(default_factory=list)
    iteration_times: list = field(default_factory=list)  # seconds, every iteration but the first
    memory_bytes: int | None = None  # saved-for-backward bytes of the first iteration
    cuda_peak_mib: float | None = None


class Loop:
    """One run of a task's training, from its checkpoint if it has one, then its evaluation."""

    def __init__(self, cfg: DictConfig, task: type[Task], run_dir: RunDirectory, world: World,
                 device: torch.device, log, meta: dict):
        self.cfg, self.task_class, self.run_dir, self.world, self.device, self.log = (
            cfg, task, run_dir, world, device, log)
        self.meta = meta
        self.tracker = RunLogger(cfg, (), meta, "", "", 0, None)  # none until run() opens the configured ones

    def run(self) -> dict:
        cfg, world, device, log = self.cfg, self.world, self.device, self.log
        self.regularizer = regularizer_of(cfg, self.task_class)
        torch.manual_seed(cfg.seed)
        task = self.task_class(cfg, device=device, world=world, log=log)
        self.task = task
        world.broadcast_parameters(task.model)
        saved = self.run_dir.load()
        state = LoopState()
        if saved is not None:
            self._restore(saved)
            state = LoopState(**saved["loop"])
            log(f"[noderun] resumed at epoch {state.epoch}, step {state.step}/{task.steps_per_epoch}")
        self.state = state
        done = (state.epoch - 1) * task.steps_per_epoch + state.step
        self.tracker = RunLogger(cfg, loggers.check(cfg), self.meta, run_key(cfg), device_name(device), done,
                                 lambda mlflow_id: self.run_dir.update_meta(mlflow_run_id=mlflow_id),
                                 is_main=world.is_main)
        params = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
        log(f"[noderun] {task.summary()} ({params:,} params) profile={cfg.profile.name} device={device} "
            f"{task.epochs} x {task.steps_per_epoch} steps")
        total = task.epochs * task.steps_per_epoch
        self.log_every = max(1, total // LOG_LINES)
        self.progress = None
        if cfg.profile.progress and world.is_main and total:
            from tqdm import tqdm

            done = (state.epoch - 1) * task.steps_per_epoch + state.step
            self.progress = tqdm(total=total, initial=done, unit="it", dynamic_ncols=True, leave=False)
        try:
            self._train()
        finally:
            if self.progress is not None:
                self.progress.close()
        measured = self._measurements(params)
        measured.update(task.finish(self.state.last_loss))
        return measured

    # -- checkpoints
    def _checkpoint(self) -> None:
        task = self.task
        self.run_dir.save({
            "loop": asdict(self.state), "model": task.model.state_dict(), "task": task.state_dict(),
            "optimizer": task.optimizer.state_dict() if task.optimizer else None,
            "scheduler": task.scheduler.state_dict() if task.scheduler else None,
            "rng": rng_states(*task.generators),
        })
        self.last_checkpoint = time.monotonic()

    def _restore(self, saved: dict) -> None:
        task = self.task
        task.model.load_state_dict(saved["model"])
        if task.optimizer is not None:
            task.optimizer.load_state_dict(saved["optimizer"])
        if task.scheduler is not None:
            task.scheduler.load_state_dict(saved["scheduler"])
        restore_rng_states(saved["rng"], *task.generators, path=self.run_dir.checkpoint_path)
        task.load_state_dict(saved["task"])

    # -- training
    def _train(self) -> None:
        task, state, cfg = self.task, self.state, self.cfg
        self.last_checkpoint = time.monotonic()
        self.stop_agreed = self.run_dir.stop_requested  # Ctrl-C before the first step
        while state.epoch <= task.epochs:
            if state.step == 0:
                task.start_epoch(state.epoch)
            self.segment_start = time.perf_counter()
            for step in range(state.step, task.steps_per_epoch):
                if self.stop_agreed:
                    self._account_time()
                    self._checkpoint()
                    raise RunInterrupted(f"interrupted at epoch {state.epoch}, step {step}: "
                                         f"checkpoint saved in {self.run_dir.path}")
                self._step(step)
                state.step = step + 1
                if time.monotonic() - self.last_checkpoint >= cfg.checkpoint_every_s:
                    self._account_time()
                    self._checkpoint()
                    self.segment_start = time.perf_counter()
            if task.scheduler is not None and task.scheduler_interval == "epoch":
                task.scheduler.step()
            self._account_time()
            epoch_nfe = slice(len(state.nfe_forward) - task.steps_per_epoch, None)
            line = task.end_epoch(EpochSummary(
                epoch=state.epoch, loss_sum=state.epoch_loss_sum, tallies=dict(state.epoch_tallies), elapsed_s=state.epoch_elapsed_s,
                nfe_forward=state.nfe_forward[epoch_nfe], nfe_backward=state.nfe_backward[epoch_nfe]))
            if line:
                self.log(line)
            self.tracker.log_epoch({"epoch/time_s": state.epoch_elapsed_s,
                                    **{f"epoch/{k}": v for k, v in task.epoch_metrics.items()}})
            state.epoch, state.step = state.epoch + 1, 0
            state.epoch_loss_sum, state.epoch_tallies, state.epoch_elapsed_s = 0.0, {}, 0.0
            self._checkpoint()

    def _account_time(self) -> None:
        elapsed = time.perf_counter() - self.segment_start
        self.state.epoch_elapsed_s += elapsed
        self.state.train_elapsed_s += elapsed
        self.segment_start = time.perf_counter()

    def _step(self, step: int) -> None:
        from noderun.models import regularization
        from noderun.ode import track_stats

        task, state, device, world = self.task, self.state, self.device, self.world
        batch = task.batch(step)
        first = state.memory_bytes is None
        meter = SavedTensorMeter() if first else nullcontext()
        if first and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        failure = None
        synchronize(device)
        start = time.perf_counter()
        try:
            with track_stats() as stats:
                with meter, regularization.collect(self.regularizer) as terms:
                    loss, tallies = task.loss(batch)
                objective = loss if terms.penalty is None else loss + terms.penalty
                task.optimizer.zero_grad(set_to_none=True)
                objective.backward()
            synchronize(device)  # NFE and failures of the backward pass are known only once it has run
        except Exception as error:  # one rank's failure must stop every rank (see the module docstring)
            if not world.distributed or failure_reason(error) is None:
                raise
            failure = error
        names = task.tally_names  # the same on every rank, so the collective lines up even after a failure
        if failure is None:
            local = [loss.item() * tallies.get("samples", 1), *[float(tallies[n]) for n in names]]
        else:
            local = [0.0] * (1 + len(names))
        local += [float(self.run_dir.stop_requested), float(failure is not None)]
        loss_sum, *summed, stops, failures = world.sum(local, device)
        if failure is not None:
            raise failure
        if failures:
            raise RunFailed(f"another process failed at epoch {state.epoch}, step {step} (see its log)")
        self.stop_agreed = stops > 0
        samples = dict(zip(names, summed)).get("samples", world.size)
        loss_value = loss_sum / samples
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at epoch {state.epoch}, step {step}")
        world.average_gradients(task.model)
        task.optimizer.step()
        if task.scheduler is not None and task.scheduler_interval == "step":
            task.scheduler.step()
        task.after_step()
        synchronize(device)
        if first:  # the first step also pays for one-time set-up: measured for memory, not timed
            state.memory_bytes = meter.bytes
            if device.type == "cuda":
                state.cuda_peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            state.iteration_times.append(time.perf_counter() - start)
        state.nfe_forward.append(stats.nfe_forward)
        state.nfe_backward.append(stats.nfe_backward)
        if self.regularizer.active:
            state.reg_kinetic.append(terms.kinetic)
            state.reg_jacobian.append(terms.jacobian)
        state.last_loss = loss_value
        state.epoch_loss_sum += loss_sum
        for name, value in zip(names, summed):
            state.epoch_tallies[name] = state.epoch_tallies.get(name, 0) + value
        done = (state.epoch - 1) * task.steps_per_epoch + step + 1
        metrics = {"train/loss": loss_value, "train/lr": task.optimizer.param_groups[0]["lr"],
                   "train/nfe_forward": stats.nfe_forward, "train/nfe_backward": stats.nfe_backward,
                   "train/step_time_s": time.perf_counter() - start}
        if self.regularizer.active:
            metrics.update({"train/reg_kinetic": terms.kinetic, "train/reg_jacobian": terms.jacobian})
        self.tracker.log_step(done, metrics)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(epoch=state.epoch, loss=f"{loss_value:.3f}")
        total = task.epochs * task.steps_per_epoch
        if done % self.log_every == 0 or done == total:
            self.log(f"step {done}/{total} loss {loss_value:.4f} nfe {stats.nfe_forward}/{stats.nfe_backward}")

    # -- the common columns
    def _measurements(self, params: int) -> dict:
        """The measured common columns (RunRecord's documentation defines each)."""
        state = self.state
        window = max(1, math.ceil(len(state.nfe_forward) * NFE_WINDOW))

        def late_mean(values: list, digits: int = 3) -> float | None:
            return round(statistics.fmean(values[-window:]), digits) if values else None

        return {
            "params": params,
            "nfe_forward": late_mean(state.nfe_forward),
            "nfe_backward": late_mean(state.nfe_backward),
            "reg_kinetic": late_mean(state.reg_kinetic, digits=6),
            "reg_jacobian": late_mean(state.reg_jacobian, digits=6),
            "memory_mib": round(state.memory_bytes / 2**20, 4) if state.memory_bytes is not None else None,
            "cuda_peak_mib": round(state.cuda_peak_mib, 3) if state.cuda_peak_mib is not None else None,
            "time_per_iter_s": round(statistics.median(state.iteration_times), 5) if state.iteration_times else None,
            "train_time_s": round(state.train_elapsed_s, 3),
        }
