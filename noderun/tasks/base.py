"""The interface every task implements; noderun.runner runs any of them the same way.

A task is one experiment family of the paper. It builds its model, optimiser and data in
`__init__`, hands out batches, computes a batch's loss, evaluates at the end of each epoch
and of the run, writes its artifacts and returns its own result columns. Everything else
(resume, checkpoints, Ctrl-C, failed rows, timing, NFE, memory, logging, the common
columns) is the runner's. The smallest example is noderun.tasks.flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from noderun.config import Unread, schema_keys
from noderun.distributed import World
from noderun.errors import ConfigError


def artifacts_folder(results_dir, task_folder: str, profile: str, experiment: Optional[str],
                     figure_experiment: str) -> Path:
    """Where a run saves the arrays a figure draws: results_dir/task_folder/profile, or for a run under an
    experiment name other than the figure's own, a subfolder of that name, which the figure never reads (so a
    run that changes another setting never replaces what the figure draws)."""
    folder = Path(results_dir) / task_folder / profile
    return folder if experiment in (None, figure_experiment) else folder / experiment


def require(condition: bool, key: str, value, accepted: str) -> None:
    """Raise ConfigError naming the key, its value and what is accepted, unless `condition`."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


@dataclass(frozen=True)
class EpochSummary:
    """What the runner measured over one epoch, summed over every process of the run."""

    epoch: int
    loss_sum: float  # the loss times the `samples` tally, summed over the epoch's steps
    tallies: dict  # the task's tallies (Task.tally_names), summed over the epoch's steps
    elapsed_s: float  # training seconds of the epoch (evaluation not included)
    nfe_forward: list  # per training iteration of the epoch
    nfe_backward: list


class Task:
    """One experiment family. Subclasses set the class attributes and implement the methods.

    Class attributes:
        name: the `task` config value.
        columns: the task's own result columns, after noderun.results.COMMON_COLUMNS.
        distributed: whether it runs under torchrun (several processes).
        tally_names: counts `loss` returns beside the loss, summed per epoch over every process;
            "samples", when present, weights the loss in the epoch's mean.
        precisions: the `precision` values it implements.
        profile_budget: for a task whose budget is not the profile group's (it reads only
            `profile.name`): where its budget is set instead ("" for a task that reads every profile key).

    Attributes set by `__init__` (the runner checkpoints and restores them):
        model, optimizer (None for a task that does not train), scheduler (or None) stepped
        every step or every epoch (scheduler_interval), epochs and steps_per_epoch (0: no
        training), generators (torch.Generator the task draws from, beside torch's global one).
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ()
    distributed: ClassVar[bool] = False
    tally_names: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("32",)  # the `precision` values it implements
    profile_budget: ClassVar[str] = ""

    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Optional[Any] = None
    scheduler_interval: str = "step"  # or "epoch"
    epochs: int = 1
    steps_per_epoch: int = 0
    generators: tuple = ()
    # the metrics of the epoch that end_epoch just evaluated ({name: number}), for the trackers (logger group)
    epoch_metrics: dict = {}

    # -- before the run (class methods: no model is built)
    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """Raise ConfigError for any invalid value of the task's config, before any work."""

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        """The config keys this run does not read; the runner refuses any of them set to another value
        than its config file's (noderun.config.refuse_unread), so that no row records a setting the run
        ignored (the locations results_dir and data_dir are not settings of a run). Subclasses add their
        own to this base list: the profile keys of a task that reads only `profile.name`, and
        `model.adjoint` where `solver.adjoint` overrides it."""
        unread = []
        if cls.profile_budget:
            # progress is the runner's (the progress bar), read for every task
            keys = tuple(k for k in schema_keys("profile") if k not in ("name", "progress"))
            unread.append(Unread("profile", keys, f"on task={cls.name}, which reads only profile.name of the profile "
                                 f"group; {cls.profile_budget.replace('<profile>', cfg.profile.name)}", option=cfg.profile.name))
        if "adjoint" in cfg.model and cfg.solver.adjoint is not None:
            unread.append(Unread("model", ("adjoint",), f"while solver.adjoint={cfg.solver.adjoint} overrides it; "
                                 "drop one of the two", option=cfg.model.name))
        return unread

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        """The columns that identify the run's cell, known before it runs (they also fill a failed row):
        model, dataset and, where they apply, epochs, method, rtol, atol, adjoint and own columns."""
        return {}

    @classmethod
    def trains_ode(cls, cfg: DictConfig) -> bool:
        """Whether the run's training solves an ODE (what regularizer=rnode acts on)."""
        return True

    @classmethod
    def cpu_threads(cls, cfg: DictConfig) -> Optional[int]:
        """torch's CPU threads for the run; None keeps torch's default."""
        return None

    # -- the run
    def __init__(self, cfg: DictConfig, *, device: torch.device, world: World, log) -> None:
        self.cfg, self.device, self.world, self.log = cfg, device, world, log

    def summary(self) -> str:
        """What the run trains, for its first log line."""
        return f"{self.name}: model={self.cfg.model.name}"

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (not when resuming in its middle)."""

    def batch(self, step: int) -> Any:
        """The batch of `step` of the current epoch (drawn outside the timed part of the step)."""
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict]:
        """(scalar loss to minimise, {tally name: count}) for one batch."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser (and scheduler) step, e.g. to update an average of the weights."""

    def end_epoch(self, summary: EpochSummary) -> Optional[str]:
        """Evaluate after an epoch if the task does; return a log line or None."""
        return None

    def finish(self, final_loss: float) -> dict:
        """Final evaluation and artifacts; returns the task's own columns (and may fill common ones
        that only it can measure, as an evaluation-only task does for the NFE).

        final_loss: the training loss of the last step (NaN for a task that does not train)."""
        return {}

    def state_dict(self) -> dict:
        """The task's own resumable state beside the model, optimiser, scheduler and generators."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
