"""Irregularly sampled spirals: Table 2 (latent ODE vs RNN, predictive RMSE) and Figure 8.

Both models see only the n_obs noisy observations of each trajectory's observation
window; both are scored by the same function (`noderun.data.spirals.rmse`) on the 100
noiseless time points after that window, on held-out trajectories. Training budgets
(iterations per profile, learning rate) belong to the model config, since the shared
profile group is shaped for the classification task: this task reads only
`cfg.profile.name` (smoke, quick, paper).
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from noderun.checkpoint import NoRunDirectory, RunDirectory, RunInterrupted, restore_rng_states, rng_states
from noderun.data.spirals import rmse, spirals_from_config, trajectory_rmse
from noderun.errors import ConfigError
from noderun.profiling import SavedTensorMeter, cpu_threads, device_name, resolve_device, synchronize
from noderun.results import latest_per_cell, markdown, mean_std
from noderun.tasks import Task

# Table 2 of Chen et al. (2018): predictive RMSE on the test set, shown beside ours.
PAPER_TABLE2 = {
    "rnn": {"label": "RNN", 30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {"label": "Latent ODE", 30: 0.1642, 50: 0.1502, 100: 0.1346},
}
N_OBS = (30, 50, 100)
MODELS = tuple(PAPER_TABLE2)
CELLS = ("gru", "rnn")
N_FIGURE = 4  # test trajectories each run keeps for the figure

COLUMNS = (
    "n_obs",  # observed points per trajectory (of the observation window)
    "iterations",  # optimiser steps
    "n_train",  # training trajectories
    "n_test",  # test trajectories
    "noise_std",  # observation noise of the data
    "final_loss",  # training loss (negative ELBO or NLL per trajectory) of the last iteration
    "test_rmse",  # RMSE on the extrapolation window of the test trajectories (noiseless targets)
    "test_rmse_median",  # median over test trajectories of each one's RMSE there: the typical trajectory
)
NUMERIC_COLUMNS = ("n_obs", "iterations", "n_train", "n_test", "noise_std", "final_loss", "test_rmse",
                   "test_rmse_median")


# ------------------------------------------------------------------------ schemas


@dataclass
class LatentODEModelConfig:
    """Latent ODE (paper: recognition RNN 25 units, latent 4, dynamics and decoder 20 hidden units)."""

    name: str = "latent_ode"
    latent_dim: int = 4
    rec_hidden: int = 25
    dyn_hidden: int = 20
    dec_hidden: int = 20
    cell: str = "gru"  # recognition cell: gru or rnn (tanh)
    obs_std: float = 0.3  # fixed std of the Gaussian likelihood p(x | z)
    gap_scale: float = 10.0  # the time gap enters the recognition cell multiplied by this
    consistency: float = 10.0  # weight of the suffix-consistency term (0: the paper's ELBO alone)
    consistency_fraction: float = 0.5  # the term covers suffixes holding more than 1 - this of the observations
    adjoint: bool = False  # gradients through the solver (False) or the adjoint (True); solver.adjoint overrides
    lr: float = 0.01  # Adam, cosine-annealed to lr_min over the iterations
    lr_min: float = 0.0005
    batch_size: Optional[int] = None  # None: all training trajectories each iteration
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 1500, "paper": 4000})
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default


@dataclass
class RNNModelConfig:
    """RNN baseline (paper: 25 hidden units, Gaussian NLL, time gap to the next observation as input)."""

    name: str = "rnn"
    hidden: int = 25
    cell: str = "gru"  # gru or rnn (tanh)
    gap_scale: float = 10.0  # the time gap enters the cell multiplied by this
    lr: float = 0.01
    lr_min: float = 0.0005
    batch_size: Optional[int] = None
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 1500, "paper": 4000})
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default


@dataclass
class SpiralsDatasetConfig:
    """The generator's every constant (noderun.data.spirals.generate_spirals)."""

    name: str = "spirals"
    n_obs: int = 100  # observed points per trajectory, drawn without replacement from the observation window
    n_spirals: int = 1000  # half clockwise, half counter-clockwise
    n_train: int = 800  # trajectories for training; the other n_spirals - n_train for testing
    n_steps: int = 100  # equally spaced time points of the observation window
    n_extrapolate: int = 100  # time points after it on which RMSE is measured
    a: float = 0.0  # r = a + b * theta
    b: float = 0.3
    theta_min: float = 6 * math.pi * 100 / 499  # where the authors' example starts: away from the centre
    theta_max: float = 6 * math.pi
    n_base: int = 800  # angles discretising [theta_min, theta_max]; a trajectory is a stretch of consecutive ones
    dt: float = 0.01  # time between grid points
    noise_std: float = 0.3  # Gaussian noise of the observations
    seed: int = 0  # the data set's own seed: the same data whatever the training seed


# ------------------------------------------------------------------------- checks


def require(condition: bool, key: str, value, accepted: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


def validate_config(cfg: DictConfig) -> None:
    model, data = cfg.model, cfg.dataset
    require(model.name in MODELS, "model.name", model.name, f"the spirals task takes models: {list(MODELS)}")
    require(data.name == "spirals", "dataset.name", data.name, "the spirals task takes: ['spirals']")
    profile = cfg.profile.name
    require(profile in model.iterations, "profile", profile,
            f"model.iterations names the budgets of profiles {sorted(model.iterations)}")
    for name, steps in model.iterations.items():
        require(isinstance(steps, int) and steps >= 1, f"model.iterations.{name}", steps, "it must be an integer >= 1")
    require(math.isfinite(model.lr) and model.lr > 0, "model.lr", model.lr, "it must be a finite number > 0")
    require(math.isfinite(model.lr_min) and 0 <= model.lr_min <= model.lr, "model.lr_min", model.lr_min,
            f"it must be in [0, model.lr={model.lr}]")
    require(model.batch_size is None or 1 <= model.batch_size <= data.n_train, "model.batch_size",
            model.batch_size, f"it must be null (all) or in [1, dataset.n_train={data.n_train}]")
    require(model.threads is None or model.threads >= 1, "model.threads", model.threads,
            "it must be null (torch's default) or an integer >= 1")
    require(model.cell in CELLS, "model.cell", model.cell, f"valid cells: {list(CELLS)}")
    require(model.gap_scale > 0, "model.gap_scale", model.gap_scale, "it must be > 0")
    if model.name == "latent_ode":
        for key in ("latent_dim", "rec_hidden", "dyn_hidden", "dec_hidden"):
            require(model[key] >= 1, f"model.{key}", model[key], "it must be an integer >= 1")
        require(model.obs_std > 0, "model.obs_std", model.obs_std, "it must be > 0")
        require(math.isfinite(model.consistency) and model.consistency >= 0, "model.consistency",
                model.consistency, "it must be a finite number >= 0 (0 turns the term off)")
        require(0 < model.consistency_fraction < 1, "model.consistency_fraction", model.consistency_fraction,
                "it must be in (0, 1)")
    else:
        require(model.hidden >= 1, "model.hidden", model.hidden, "it must be an integer >= 1")
    require(data.n_spirals >= 2 and data.n_spirals % 2 == 0, "dataset.n_spirals", data.n_spirals,
            "it must be an even integer >= 2 (half clockwise, half counter-clockwise)")
    require(1 <= data.n_train < data.n_spirals, "dataset.n_train", data.n_train,
            f"it must be in [1, dataset.n_spirals={data.n_spirals})")
    require(data.n_steps >= 2, "dataset.n_steps", data.n_steps, "it must be an integer >= 2")
    require(2 <= data.n_obs <= data.n_steps, "dataset.n_obs", data.n_obs,
            f"it must be in [2, dataset.n_steps={data.n_steps}]; the paper's are {list(N_OBS)}")
    require(data.n_extrapolate >= 1, "dataset.n_extrapolate", data.n_extrapolate, "it must be an integer >= 1")
    require(data.n_base >= data.n_steps + data.n_extrapolate, "dataset.n_base", data.n_base,
            f"it must be >= dataset.n_steps + dataset.n_extrapolate = {data.n_steps + data.n_extrapolate}")
    require(data.theta_max > data.theta_min, "dataset.theta_max", data.theta_max,
            f"it must be > dataset.theta_min={data.theta_min}")
    require(data.dt > 0, "dataset.dt", data.dt, "it must be > 0")
    require(data.noise_std >= 0, "dataset.noise_std", data.noise_std, "it must be >= 0")


def describe(cfg: DictConfig) -> dict:
    """The columns that identify a run's cell, known before it runs (they also fill a failed row)."""
    is_ode = cfg.model.name == "latent_ode"
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "n_obs": cfg.dataset.n_obs,
        "iterations": int(cfg.model.iterations[cfg.profile.name]),
        "noise_std": cfg.dataset.noise_std,
        "method": cfg.solver.method if is_ode else None,
        "rtol": cfg.solver.rtol if is_ode else None,
        "atol": cfg.solver.atol if is_ode else None,
    }


# ---------------------------------------------------------------------- the loop


def build(cfg: DictConfig):
    from noderun.models.latent_ode import LatentODE, RNNBaseline

    m = cfg.model
    if m.name == "rnn":
        return RNNBaseline(obs_dim=2, hidden=m.hidden, cell=m.cell, gap_scale=m.gap_scale)
    solver = cfg.solver
    options = {"max_num_steps": solver.max_num_steps}
    if solver.step_size is not None:
        options["step_size"] = solver.step_size
    adjoint = m.adjoint if solver.adjoint is None else solver.adjoint
    return LatentODE(obs_dim=2, latent_dim=m.latent_dim, rec_hidden=m.rec_hidden, dyn_hidden=m.dyn_hidden,
                     dec_hidden=m.dec_hidden, cell=m.cell, obs_std=m.obs_std, gap_scale=m.gap_scale,
                     consistency=m.consistency, consistency_fraction=m.consistency_fraction, method=solver.method,
                     rtol=solver.rtol, atol=solver.atol, options=options, adjoint=adjoint)


def _is_latent_ode(model) -> bool:
    from noderun.models.latent_ode import LatentODE

    return isinstance(model, LatentODE)


def extrapolate(model, split) -> torch.Tensor:
    """Predicted positions [B, n_extrapolate, 2] on the extrapolation window."""
    model.eval()
    with torch.no_grad():
        if _is_latent_ode(model):
            prediction = model.predict(split.obs_values, split.obs_times, split.obs_index, split.times)
            prediction = prediction[:, split.n_steps :]
        else:
            prediction = model.predict(split.obs_values, split.obs_times, split.extrapolation_times)
    model.train()
    return prediction


def _batch_loss(model, split, grid):
    if _is_latent_ode(model):
        return model.loss(split.obs_values, split.obs_times, split.obs_index, grid)
    return model.loss(split.obs_values, split.obs_times)


def figure_path(results_dir, profile: str, n_obs: int, model: str, seed: int) -> Path:
    return Path(results_dir) / "spirals" / f"{profile}_n{n_obs}_{model}_seed{seed}.npz"


def save_predictions(cfg: DictConfig, model, test) -> Path:
    """The first N_FIGURE test trajectories and the model's predictions, for `figures`."""
    part = test.subset(slice(0, N_FIGURE))
    model.eval()
    with torch.no_grad():
        if _is_latent_ode(model):  # reconstruction from the first observation on, then extrapolation
            pred_times = part.times
            pred = model.predict(part.obs_values, part.obs_times, part.obs_index, part.times)
        else:
            pred_times = part.extrapolation_times
            pred = model.predict(part.obs_values, part.obs_times, pred_times)
    model.train()
    path = figure_path(cfg.results_dir, cfg.profile.name, cfg.dataset.n_obs, cfg.model.name, cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, times=part.times.cpu().numpy(), truth=part.truth.cpu().numpy(),
             obs_times=part.obs_times.cpu().numpy(), obs_values=part.obs_values.cpu().numpy(),
             pred_times=pred_times.cpu().numpy(), pred=pred.cpu().numpy(), n_steps=part.n_steps)
    tmp.replace(path)
    return path


def train_spirals(cfg: DictConfig, log=print, run: RunDirectory | None = None) -> dict:
    with cpu_threads(cfg.model.threads, resolve_device(cfg.device)):
        return _train_spirals(cfg, log, run or NoRunDirectory())


def _train_spirals(cfg: DictConfig, log, run: RunDirectory) -> dict:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = spirals_from_config(cfg.dataset)
    train, test = data.train.to(device), data.test.to(device)
    grid = train.times[: train.n_steps]  # training never sees the extrapolation window
    model = build(cfg).to(device)
    is_ode = cfg.model.name == "latent_ode"
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    iterations = int(cfg.model.iterations[cfg.profile.name])
    batch_size = cfg.model.batch_size or len(train.noisy)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.model.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=cfg.model.lr_min)
    solver = cfg.solver
    log(f"[noderun] model={cfg.model.name} ({params:,} params) n_obs={cfg.dataset.n_obs} profile={cfg.profile.name} "
        f"device={device} iterations={iterations} batch={batch_size}"
        + (f" solver={solver.method} rtol={solver.rtol:g} atol={solver.atol:g} adjoint={model.adjoint}"
           if is_ode else ""))
    from noderun.ode import track_stats

    # Everything a resumed run needs besides the weights, optimiser, scheduler and RNG states.
    state = run.load() or {"step": 0, "times": [], "nfe_forward": [], "nfe_backward": [], "memory_bytes": None,
                           "cuda_peak_mib": None, "loss": math.nan, "train_elapsed_s": 0.0}
    if "model" in state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"], generator)
        log(f"[noderun] resumed at iteration {state['step']}/{iterations}")
    times, nfe_f, nfe_b = state["times"], state["nfe_forward"], state["nfe_backward"]
    report_every = max(1, iterations // 10)  # also the checkpoint interval
    segment_start = time.perf_counter()

    def checkpoint() -> None:
        state["train_elapsed_s"] += time.perf_counter() - segment_start
        run.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "rng": rng_states(generator)})

    for step in range(state["step"], iterations):
        if run.stop_requested:
            checkpoint()
            raise RunInterrupted(f"interrupted at iteration {step}: checkpoint saved in {run.path}")
        if batch_size < len(train.noisy):
            batch = train.subset(torch.randperm(len(train.noisy), generator=generator)[:batch_size].to(device))
        else:
            batch = train
        first = state["memory_bytes"] is None
        meter = SavedTensorMeter() if first else nullcontext()
        if first and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        with track_stats() as stats:
            with meter:
                loss = _batch_loss(model, batch, grid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at iteration {step}")
        optimizer.step()
        scheduler.step()
        synchronize(device)
        if first:  # pays for one-time set-up: measured for memory, not timed
            state["memory_bytes"] = meter.bytes
            if device.type == "cuda":
                state["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            times.append(time.perf_counter() - start)
        nfe_f.append(stats.nfe_forward)
        nfe_b.append(stats.nfe_backward)
        state["loss"] = loss_value
        state["step"] = step + 1
        if (step + 1) % report_every == 0 or step + 1 == iterations:
            line = f"iter {step + 1}/{iterations} loss {loss_value:.3f}"
            if is_ode:
                line += f" nfe_fwd {nfe_f[-1]} nfe_bwd {nfe_b[-1]}"
            log(line)
            checkpoint()
            segment_start = time.perf_counter()
    train_time = state["train_elapsed_s"]
    loss_value, memory_bytes, cuda_peak = state["loss"], state["memory_bytes"], state["cuda_peak_mib"]
    prediction = extrapolate(model, test)
    test_rmse = rmse(prediction, test.extrapolation_truth)
    median_rmse = float(trajectory_rmse(prediction, test.extrapolation_truth).median())
    save_predictions(cfg, model, test)
    log(f"[noderun] {cfg.model.name} n_obs={cfg.dataset.n_obs}: test RMSE {test_rmse:.4f} "
        f"(median trajectory {median_rmse:.4f}; train {train_time:.1f}s)")
    tail = max(1, len(nfe_f) // 10)  # solver statistics of the last 10% of training
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "epochs": None,
        "params": params,
        "method": solver.method if is_ode else None,
        "rtol": solver.rtol if is_ode else None,
        "atol": solver.atol if is_ode else None,
        "adjoint": model.adjoint if is_ode else None,
        "nfe_forward": round(statistics.fmean(nfe_f[-tail:]), 3),
        "nfe_backward": round(statistics.fmean(nfe_b[-tail:]), 3),
        "memory_mib": round(memory_bytes / 2**20, 4) if memory_bytes is not None else None,
        "cuda_peak_mib": round(cuda_peak, 3) if cuda_peak is not None else None,
        "time_per_iter_s": round(statistics.median(times), 5) if times else None,
        "train_time_s": round(train_time, 3),
        "device": device.type,
        "device_name": device_name(device),
        "n_obs": cfg.dataset.n_obs,
        "iterations": iterations,
        "n_train": len(train.noisy),
        "n_test": len(test.noisy),
        "noise_std": cfg.dataset.noise_std,
        "final_loss": round(loss_value, 5),
        "test_rmse": round(test_rmse, 5),
        "test_rmse_median": round(median_rmse, 5),
    }


# ------------------------------------------------------------------------- tables


def render_table2(frame: pd.DataFrame, profile: str) -> str:
    """Models x n_obs: our mean ± std over seeds, the paper's value beside."""
    runs = frame[(frame["profile"] == profile)] if "profile" in frame else frame
    headers = ["Model"]
    for n in N_OBS:
        headers += [f"n={n}", "paper"]
    headers.append("seeds")
    rows = []
    for model, paper in PAPER_TABLE2.items():
        row, seeds = [paper["label"]], []
        for n in N_OBS:
            cell = runs[(runs["model"] == model) & (runs["n_obs"] == n)]
            ok = cell[cell["status"] == "ok"]
            if ok.empty:
                row.append("failed" if not cell.empty else "not run")
            else:
                row.append(mean_std(ok["test_rmse"], 4))
                seeds.append(str(len(ok)))
            row.append(f"{paper[n]:.4f}")
        row.append("/".join(seeds) if seeds else "0")
        rows.append(row)
    return markdown(rows, headers)


def render_details(frame: pd.DataFrame, profile: str) -> str:
    runs = frame[(frame["profile"] == profile) & (frame["status"] == "ok")]
    rows = []
    for model, paper in PAPER_TABLE2.items():
        for n in N_OBS:
            ok = runs[(runs["model"] == model) & (runs["n_obs"] == n)]
            if ok.empty:
                continue
            rows.append([paper["label"], str(n), str(int(ok["params"].iloc[0])), mean_std(ok["iterations"], 0),
                         mean_std(ok["time_per_iter_s"], 4),
                         mean_std(ok["nfe_forward"], 1) + " / " + mean_std(ok["nfe_backward"], 1),
                         mean_std(ok["train_time_s"], 1), mean_std(ok["final_loss"], 2),
                         mean_std(ok["test_rmse_median"], 4) if "test_rmse_median" in ok else "-"])
    if not rows:
        return ""
    return markdown(rows, ["Model", "n_obs", "params", "iterations", "s / iter", "NFE fwd / bwd",
                           "train s", "final loss", "median trajectory RMSE"])


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    rows = latest_per_cell(rows, ["model", "n_obs", "seed", "profile"])
    sections = [("Table 2 (spirals, predictive RMSE on the extrapolation window)", render_table2(rows, profile))]
    details = render_details(rows, profile)
    if details:
        sections.append(("Table 2 runs", details))
    return sections


# ------------------------------------------------------------------------ figures


def figures(results_dir: Path) -> list[Path]:
    """One PNG per (profile, n_obs) like the paper's Figure 8, from the saved predictions."""
    folder = Path(results_dir) / "spirals"
    if not folder.is_dir():
        return []
    groups: dict[tuple[str, int], dict[str, Path]] = {}
    for path in sorted(folder.glob("*_n*_*_seed*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        stem = path.stem
        profile, rest = stem.split("_n", 1)
        n_text, rest = rest.split("_", 1)
        model, seed = rest.rsplit("_seed", 1)
        key = (profile, int(n_text))
        # the lowest seed of each model draws
        current = groups.setdefault(key, {})
        if model not in current or int(seed) < int(current[model].stem.rsplit("_seed", 1)[1]):
            current[model] = path
    if not groups:
        return []
    from noderun.plots import pyplot, save_figure

    plt = pyplot()
    out_dir = Path(results_dir) / "figures"
    written = []
    for (profile, n_obs), paths in sorted(groups.items()):
        loaded = {model: np.load(path) for model, path in paths.items()}
        reference = next(iter(loaded.values()))
        count = reference["truth"].shape[0]
        fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
        for i, ax in enumerate(axes[0]):
            s = int(reference["n_steps"])
            truth = reference["truth"][i]
            ax.plot(truth[:, 0], truth[:, 1], color="0.75", lw=1, ls="--", label="ground truth")
            ax.scatter(reference["obs_values"][i][:, 0], reference["obs_values"][i][:, 1], s=6, color="k",
                       label="observations", zorder=3)
            if "latent_ode" in loaded:
                pred = loaded["latent_ode"]["pred"][i]
                ax.plot(pred[:s, 0], pred[:s, 1], color="tab:blue", lw=1.5, label="latent ODE reconstruction")
                ax.plot(pred[s - 1 :, 0], pred[s - 1 :, 1], color="tab:red", lw=1.5,
                        label="latent ODE extrapolation")
            if "rnn" in loaded:
                pred = loaded["rnn"]["pred"][i]
                ax.plot(pred[:, 0], pred[:, 1], color="tab:green", lw=1.2, label="RNN extrapolation")
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xticks([])
            ax.set_yticks([])
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        fig.suptitle(f"Spirals, {n_obs} observations (profile={profile})", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        written.append(save_figure(fig, out_dir / f"spirals_{profile}_n{n_obs}.png"))
    return written


TASK = Task(
    name="spirals",
    validate=validate_config,
    run=train_spirals,
    describe=describe,
    columns=COLUMNS,
    numeric_columns=NUMERIC_COLUMNS,
    render=render,
    figures=figures,
    schemas=(
        ("model", "latent_ode", LatentODEModelConfig),
        ("model", "rnn", RNNModelConfig),
        ("dataset", "spirals", SpiralsDatasetConfig),
    ),
)
