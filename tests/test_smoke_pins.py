"""Every experiment's smoke run at seed 0 on one CPU thread: the numbers it gives are pinned.

tests/data/smoke_pins.json holds, per experiment, the overrides and what its run gave: the test
metric(s), the parameter count and the NFE of every training iteration (for figure3, which does
not train, the NFE per evaluated batch). A change to the runner, a task or a model that moves
any of them fails here, so a refactoring is shown to keep behaviour. Each row's common columns
are also checked to be filled the same way for every task.

The floats of the same run differ between CPUs (MKL, oneDNN and ATen pick their kernels by
instruction set and thread count), so each value is compared within the tolerance the file
states beside it: three times the largest deviation measured by tests/pin_spread.py across
those code paths, on every machine the file lists. Parameter counts and the integer NFE traces,
which none of them moved, are compared exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from noderun.checkpoint import load_checkpoint, run_dir
from noderun.runner import train

PINS = json.loads((Path(__file__).parent / "data" / "smoke_pins.json").read_text())["pins"]


def assert_within(key: str, got, pinned, tolerance) -> None:
    """`got` equals `pinned` within the pin's tolerance: "exact", {"rel": r} or {"abs": points}."""
    if tolerance == "exact":
        assert got == pinned, key
        return
    (kind, size), = tolerance.items()
    bound = size * abs(pinned) if kind == "rel" else size
    # 1e-9 absorbs the binary representation of the rounded values in the JSON and the row
    assert abs(got - pinned) <= bound + 1e-9, f"{key}: {got} differs from the pinned {pinned} by more than {bound:g}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("pins")  # shared: figure3 reads the ODE-Net that table1_odenet trained


@pytest.mark.parametrize("name", list(PINS))
def test_smoke_run_gives_the_pinned_numbers(compose_config, mnist_dir, results, one_thread, name):
    pin = PINS[name]
    cfg = compose_config(["profile=smoke", "seed=0", "device=cpu", f"results_dir={results}", f"data_dir={mnist_dir}",
                          *pin["overrides"]])
    row = train(cfg, log=lambda *_: None)
    loop = load_checkpoint(run_dir(cfg) / "checkpoint.pt")["loop"] if cfg.task != "figure3" else None
    measured = dict(row)
    if loop is not None:
        measured.update(iter_nfe_forward=loop["nfe_forward"], iter_nfe_backward=loop["nfe_backward"])
    assert set(pin["tolerance"]) == set(pin["expected"]), "every pinned value states its tolerance"
    for key, value in pin["expected"].items():
        assert_within(key, measured[key], value, pin["tolerance"][key])
    # the common columns, filled the same way whatever the task
    assert row["status"] == "ok" and row["params"] > 0 and row["device"] == "cpu" and row["torch_version"]
    if loop is not None:  # a task that trains
        assert row["memory_mib"] > 0 and row["time_per_iter_s"] > 0 and row["train_time_s"] > 0
        last = loop["nfe_forward"][-max(1, math.ceil(len(loop["nfe_forward"]) / 10)):]
        assert row["nfe_forward"] == pytest.approx(sum(last) / len(last))
    assert row["cuda_peak_mib"] is None and torch.get_num_threads() == 1
