"""Figure 3 (a)-(c): statistics of the trained ODE-Net as the solver tolerance varies.

One run = one tolerance (rtol, with atol tied to it by the experiment config) and one
adjoint norm setting (solver.seminorm). It loads the ODE-Net that Table 1 trained for
the same profile and seed (``<results_dir>/checkpoints/table1-odenet-<profile>-seed<seed>.pt``),
takes the first ``dataset.test_size[<profile>]`` images of the MNIST test set, and
measures per batch of ``dataset.batch_size``:

- forward NFE and forward wall time (``torch.no_grad``, after one untimed warm-up batch);
- backward NFE: the adjoint solve of the gradient of the test loss, with the configured
  norm (``solver.seminorm=true`` leaves the parameter channels out of the error norm);
- numerical error of the ODE block's output h(1): against a reference solve of the same
  trained block from the same h(0) with ``dataset.reference_method`` at
  ``dataset.reference_rtol``/``reference_atol`` in ``dataset.reference_dtype`` (default:
  dopri5 at 1e-8 in float64, far below any swept tolerance). ``ode_error`` is the mean
  over images of ||h(1) - h_ref(1)|| / ||h_ref(1)|| (L2 over the block's C x H x W output);
  ``ode_error_max`` is the largest absolute difference of any element.

Rows go to ``<results_dir>/figure3.csv``; ``render`` prints one table per norm setting.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from noderun.data.batching import to_float
from noderun.data.mnist import load_mnist
from noderun.errors import ConfigError
from noderun.models import build_model, ode_blocks
from noderun.profiling import device_name, resolve_device, synchronize
from noderun.results import latest_per_cell, markdown, mean_std
from noderun.tasks import Task

COLUMNS = (
    "seminorm",  # True: adjoint error norm without the parameter channels
    "test_size",  # test images measured
    "batch_size",  # images per batch (NFE and times are per batch)
    "nfe_ratio",  # nfe_backward / nfe_forward
    "ode_error",  # mean over images of ||h(1) - h_ref(1)|| / ||h_ref(1)|| of the ODE block's output
    "ode_error_max",  # largest absolute elementwise difference to the reference
    "forward_time_s",  # mean seconds of a forward pass (whole network, no_grad) per batch
    "backward_time_s",  # mean seconds of the loss gradient's backward pass per batch
    "test_error",  # % wrong on the measured images at this tolerance
    "reference",  # the reference solve: method, tolerances, dtype
    "reference_nfe",  # mean NFE per batch of the reference solve
)
NUMERIC_COLUMNS = ("test_size", "batch_size", "nfe_ratio", "ode_error", "ode_error_max", "forward_time_s",
                   "backward_time_s", "test_error", "reference_nfe")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SweepDatasetConfig:
    """The MNIST test images the sweep measures on, in which batches, and the reference solve."""

    name: str = "mnist"
    test_size: Dict[str, Optional[int]] = field(
        default_factory=lambda: {"smoke": 64, "quick": 256, "paper": None})  # per profile; None: all 10,000
    batch_size: int = 128  # the training batch size: NFE per batch as in training
    reference_method: str = "dopri5"
    reference_rtol: float = 1e-8
    reference_atol: float = 1e-8
    reference_dtype: str = "float64"  # float64 makes a 1e-8 tolerance reachable


# --------------------------------------------------------------------------- checks


def require(condition: bool, key: str, value, accepted: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


def _sweep_size(cfg: DictConfig) -> Optional[int]:
    return cfg.dataset.test_size[cfg.profile.name]


def validate_config(cfg: DictConfig) -> None:
    """Reject invalid values before any work (the checkpoint is looked for when the run starts)."""
    from noderun.ode.methods import METHODS, get_method

    data, solver, profile = cfg.dataset, cfg.solver, cfg.profile
    require(cfg.model.name == "odenet", "model.name", cfg.model.name, "the nfe_sweep task takes: ['odenet']")
    require(data.name == "mnist" and "reference_rtol" in data, "dataset", data.name,
            "the nfe_sweep task takes dataset=mnist_sweep (set by experiment=figure3)")
    require(solver.method in METHODS and get_method(solver.method).adaptive, "solver.method", solver.method,
            "a tolerance sweep needs an adaptive method, e.g. dopri5")
    require(0 < solver.rtol <= 1, "solver.rtol", solver.rtol, "it must be in (0, 1]")
    require(0 < solver.atol <= 1, "solver.atol", solver.atol, "it must be in (0, 1]")
    require(solver.adjoint is None or bool(solver.adjoint), "solver.adjoint", solver.adjoint,
            "the backward NFE is the adjoint's: leave it null or true")
    require(profile.name in data.test_size, "dataset.test_size", OmegaConf.to_container(data.test_size),
            f"it needs an entry for profile {profile.name!r}")
    size = _sweep_size(cfg)
    require(size is None or 1 <= size <= 10_000, f"dataset.test_size.{profile.name}", size,
            "it must be null (all 10,000) or an integer in [1, 10000]")
    require(data.batch_size >= 1, "dataset.batch_size", data.batch_size, "it must be an integer >= 1")
    require(data.reference_method in METHODS and get_method(data.reference_method).adaptive,
            "dataset.reference_method", data.reference_method, "it must be an adaptive method, e.g. dopri5")
    require(data.reference_dtype in DTYPES, "dataset.reference_dtype", data.reference_dtype,
            f"valid dtypes: {list(DTYPES)}")
    require(0 < data.reference_rtol < solver.rtol, "dataset.reference_rtol", data.reference_rtol,
            f"it must be > 0 and tighter than solver.rtol={solver.rtol:g}")
    require(0 < data.reference_atol < solver.atol, "dataset.reference_atol", data.reference_atol,
            f"it must be > 0 and tighter than solver.atol={solver.atol:g}")


# ---------------------------------------------------------------------- the sweep


def load_trained_odenet(cfg: DictConfig) -> tuple[torch.nn.Module, dict]:
    """The Table 1 ODE-Net of this profile and seed, rebuilt with this run's solver settings."""
    from noderun.tasks.classification import checkpoint_path

    path = checkpoint_path(cfg.results_dir, "table1", "odenet", cfg.profile.name, cfg.seed)
    if not path.is_file():
        raise ConfigError(
            f"no trained ODE-Net at {path}; run `noderun train model=odenet profile={cfg.profile.name} "
            f"seed={cfg.seed} results_dir={cfg.results_dir}` first"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model_cfg = OmegaConf.create(payload["config"]["model"])
    if model_cfg.get("name") != "odenet":
        raise ConfigError(f"{path} holds model {model_cfg.get('name')!r}, not odenet; retrain it with "
                          f"`noderun train model=odenet profile={cfg.profile.name} seed={cfg.seed}`")
    solver = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg.solver, resolve=True)), {"adjoint": True})
    model = build_model(model_cfg, solver)
    model.load_state_dict(payload["state_dict"])
    return model, payload


def _reference_block(block, data) -> torch.nn.Module:
    reference = copy.deepcopy(block).to(DTYPES[data.reference_dtype])
    reference.method = data.reference_method
    reference.rtol, reference.atol = float(data.reference_rtol), float(data.reference_atol)
    reference.options = {"max_num_steps": 1_000_000}
    reference.adjoint = False
    return reference


def run_sweep(cfg: DictConfig, log=print, run=None) -> dict:
    from noderun.ode import track_stats

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data_cfg = cfg.dataset
    model, payload = load_trained_odenet(cfg)
    model = model.to(device).eval()
    block = ode_blocks(model)[0]
    reference = _reference_block(block, data_cfg)
    dtype = DTYPES[data_cfg.reference_dtype]
    downsample = model[0]

    data = load_mnist(cfg.data_dir, log=log)
    size = _sweep_size(cfg)
    images = data.test_images[:size].to(device)
    labels = data.test_labels[:size].to(device)
    batch = int(data_cfg.batch_size)
    starts = list(range(0, len(images), batch))
    log(f"[noderun] figure3: ODE-Net ({cfg.profile.name}, seed {cfg.seed}) solver={cfg.solver.method} "
        f"rtol={cfg.solver.rtol:g} atol={cfg.solver.atol:g} seminorm={cfg.solver.seminorm} "
        f"on {len(images)} test images in {len(starts)} batches of {batch}")

    nfe_f, nfe_b, nfe_ref, t_fwd, t_bwd = [], [], [], [], []
    rel_errors, max_error, wrong = [], 0.0, 0
    with torch.no_grad():  # warm-up: first-call set-up costs are not timed
        model(to_float(images[:batch]))
    for start in starts:
        x = to_float(images[start : start + batch])
        y = labels[start : start + batch]
        # forward: NFE and wall time of the whole network, no graph
        synchronize(device)
        tic = time.perf_counter()
        with torch.no_grad(), track_stats() as stats:
            logits = model(x)
        synchronize(device)
        t_fwd.append(time.perf_counter() - tic)
        nfe_f.append(stats.nfe_forward)
        wrong += (logits.argmax(1) != y).sum().item()
        # backward: the adjoint solve of the test loss's gradient
        model.zero_grad(set_to_none=True)
        with track_stats() as stats:
            loss = F.cross_entropy(model(x), y)
            synchronize(device)
            tic = time.perf_counter()
            loss.backward()
            synchronize(device)
        t_bwd.append(time.perf_counter() - tic)
        nfe_b.append(stats.nfe_backward)
        # error of the block's output against the reference solve from the same h(0)
        with torch.no_grad():
            h0 = downsample(x)
            h1 = block(h0)
            with track_stats() as stats:
                h_ref = reference(h0.to(dtype))
            nfe_ref.append(stats.nfe_forward)
            diff = (h1.to(dtype) - h_ref).flatten(1)
            rel = diff.norm(dim=1) / h_ref.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
            rel_errors += rel.tolist()
            max_error = max(max_error, diff.abs().max().item())
    model.zero_grad(set_to_none=True)

    mean_f, mean_b = statistics.fmean(nfe_f), statistics.fmean(nfe_b)
    row = {
        "model": "odenet",
        "dataset": "mnist",
        "epochs": len(payload["history"]["epoch"]) if "history" in payload else None,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "method": cfg.solver.method,
        "rtol": float(cfg.solver.rtol),
        "atol": float(cfg.solver.atol),
        "adjoint": True,
        "nfe_forward": round(mean_f, 3),
        "nfe_backward": round(mean_b, 3),
        "device": device.type,
        "device_name": device_name(device),
        "seminorm": bool(cfg.solver.seminorm),
        "test_size": len(images),
        "batch_size": batch,
        "nfe_ratio": round(mean_b / mean_f, 4) if mean_f else None,
        "ode_error": float(f"{statistics.fmean(rel_errors):.6g}"),
        "ode_error_max": float(f"{max_error:.6g}"),
        "forward_time_s": round(statistics.fmean(t_fwd), 6),
        "backward_time_s": round(statistics.fmean(t_bwd), 6),
        "test_error": round(100.0 * wrong / len(images), 4),
        "reference": f"{data_cfg.reference_method} rtol={data_cfg.reference_rtol:g} "
                     f"atol={data_cfg.reference_atol:g} {data_cfg.reference_dtype}",
        "reference_nfe": round(statistics.fmean(nfe_ref), 3),
    }
    log(f"[noderun] figure3 rtol={cfg.solver.rtol:g}: nfe fwd {mean_f:.1f} bwd {mean_b:.1f} "
        f"(ratio {row['nfe_ratio']}) error {row['ode_error']:.3g} fwd {row['forward_time_s'] * 1e3:.1f} ms/batch")
    return row


# ------------------------------------------------------------------------- tables


def _is_true(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


# What makes two rows the same cell: a rerun replaces the earlier row, never counts as another seed.
CELL_KEY = ["experiment", "model", "profile", "seed", "method", "rtol", "atol", "seminorm", "test_size", "batch_size"]


def render_sweep(frame: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    runs = latest_per_cell(frame[(frame["experiment"] == "figure3") & (frame["profile"] == profile)], CELL_KEY)
    runs = runs[runs["status"] == "ok"]
    sections = []
    for seminorm in (False, True):
        part = runs[_is_true(runs["seminorm"]) == seminorm]
        if part.empty:
            continue
        rows = []
        for rtol, cell in sorted(part.groupby("rtol"), key=lambda item: -item[0]):
            rows.append([f"{rtol:.0e}", mean_std(cell["nfe_forward"], 1), mean_std(cell["nfe_backward"], 1),
                         mean_std(cell["nfe_ratio"], 2), mean_std(cell["ode_error"].map(math.log10), 2),
                         mean_std(cell["forward_time_s"] * 1e3, 1), mean_std(cell["test_error"], 2),
                         str(len(cell))])
        table = markdown(rows, ["rtol = atol", "NFE fwd", "NFE bwd", "bwd / fwd", "log10 error", "fwd ms / batch",
                                "test error %", "seeds"])
        first = part.iloc[0]
        note = (f"Per batch of {int(first['batch_size'])} over the first {int(first['test_size'])} test images; "
                f"error of the ODE block's output against {first['reference']}. The paper reports backward "
                "NFE about half of forward.")
        title = f"Figure 3 (a)-(c): tolerance sweep of the trained ODE-Net, {'seminorm' if seminorm else 'full norm'}"
        sections.append((title, table + "\n\n" + note))
    return sections


def figures(results_dir: Path) -> list[Path]:
    from noderun.plots import nfe_sweep_figures

    return nfe_sweep_figures(results_dir)


TASK = Task(
    name="nfe_sweep",
    validate=validate_config,
    run=run_sweep,
    columns=COLUMNS,
    numeric_columns=NUMERIC_COLUMNS,
    render=render_sweep,
    figures=figures,
    schemas=(("dataset", "mnist_sweep", SweepDatasetConfig),),
)
