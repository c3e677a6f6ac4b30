"""Task registry: what `cfg.task` runs, which columns its result rows add, how its tables render.

A task is one experiment family of the paper: classification (Table 1 and the depth
experiment), and the ones added beside it. Adding a task is one module here exposing
a `TASK` and one line in `TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import DictConfig


@dataclass(frozen=True)
class Task:
    """One experiment family.

    validate(cfg): raise noderun.errors.ConfigError for invalid values, before any work.
    run(cfg, log, run) -> dict: train and evaluate; returns the row's values (common and own
        columns). `run` is the run's noderun.checkpoint.RunDirectory: the task resumes from
        run.load() when it returns a state, saves its state with run.save() at the end of
        every epoch, and, when run.stop_requested turns true (Ctrl-C), saves and raises
        noderun.checkpoint.RunInterrupted at the next step boundary.
    describe(cfg) -> dict: the columns that identify the run's cell in the tables (model,
        dataset, solver, ...), known before it runs; they fill the row of a failed run.
    columns: the task's own result columns, after noderun.results.COMMON_COLUMNS.
    numeric_columns: which of them read back as numbers.
    render(rows, profile) -> [(title, markdown)]: its tables from its rows of one profile.
    figures(results_dir) -> [paths]: write the task's PNGs under results_dir/figures from what
        its runs saved there; an empty list when there is nothing to draw yet.
    schemas: (group, name, dataclass) triples for Hydra's ConfigStore, so the task's own
        config files (conf/model/..., conf/dataset/...) are typed like every other.
    """

    name: str
    validate: Callable[[DictConfig], None]
    run: Callable[..., dict]
    columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    render: Callable[[pd.DataFrame, str], list[tuple[str, str]]]
    figures: Callable[[Path], list[Path]] | None = None
    describe: Callable[[DictConfig], dict] | None = None
    schemas: tuple[tuple[str, str, type], ...] = ()


def _registry() -> dict[str, Task]:
    from noderun.tasks import classification, flows, nfe_sweep, spirals

    return {task.name: task for task in (classification.TASK, spirals.TASK, flows.TASK, nfe_sweep.TASK)}


TASKS: dict[str, Task] = _registry()
