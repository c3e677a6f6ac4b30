"""The tasks `cfg.task` names, imported only when a run asks for one.

A task is one experiment family of the paper (noderun.tasks.base.Task): classification
(Table 1, the depth experiment), figure3 (the tolerance sweep of a trained ODE-Net),
spirals (Table 2), flows (Figures 4 and 5) and, beyond the paper, crossing (augmented ODEs,
Dupont et al. 2019). Adding one is a module here with a Task
subclass, and one line below.
"""

from __future__ import annotations

import importlib

# task name -> "module:class"
TASKS = {
    "classification": "noderun.tasks.classification:ClassificationTask",
    "figure3": "noderun.tasks.figure3:Figure3Task",
    "spirals": "noderun.tasks.spirals:SpiralsTask",
    "flows": "noderun.tasks.flows:FlowsTask",
    "crossing": "noderun.tasks.crossing:CrossingTask",  # beyond the paper: Dupont et al. (2019)
}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str):
    """The Task subclass called `name` (KeyError for an unknown name: check task_names() first)."""
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
