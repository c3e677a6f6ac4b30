"""The figures of `noderun plot`: Figure 3, memory and time against depth, training curves.

One function per figure, each taking the data (a result frame or training histories) and
the PNG path to write, so that they run on any data, fixtures included:

- ``plot_nfe_sweep``: Figure 3 (a) numerical error, (b) forward time and (c) backward NFE
  against forward NFE, from the rows of ``figure3.csv`` (full norm and seminorm);
- ``plot_nfe_training``: Figure 3 (d), forward NFE per training iteration with the epoch means,
  from an ODE-Net checkpoint's history;
- ``plot_depth``: activation memory and time per iteration against depth L (ResNet) and
  forward NFE L~ (RK-Net, ODE-Net), with least-squares lines, from ``depth.csv``;
- ``plot_training_curves``: test error per epoch of every model, from the Table 1 histories.

``classification_figures`` and ``nfe_sweep_figures`` are the tasks' ``figures`` hooks: they
find the data under a results folder and write ``<results_dir>/figures/<figure>_<profile>.png``.
Everything draws with matplotlib's Agg backend (files only).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

LABELS = {"mlp": "1-Layer MLP", "resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
COLORS = {"mlp": "tab:gray", "resnet": "tab:green", "rknet": "tab:orange", "odenet": "tab:blue"}


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, never to a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG at `path` (creating its folder), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _is_true(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def _fit_line(ax, x, y, color) -> float:
    """Draw the least-squares line of y on x over x's range; return its slope (NaN if undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return math.nan
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    if abs(slope) < 1e-12 * max(1.0, float(np.abs(y[ok]).max())):
        slope = 0.0  # flat up to rounding (e.g. ODE-Net memory)
    grid = np.linspace(x[ok].min(), x[ok].max(), 50)
    ax.plot(grid, slope * grid + intercept, color=color, lw=1, ls="--", alpha=0.8)
    return float(slope)


# ------------------------------------------------------------------------ figures


def plot_nfe_sweep(frame: pd.DataFrame, path: Path, title: str = "Figure 3 (a)-(c)") -> Path:
    """Rows of figure3.csv (one profile) -> three panels against forward NFE per batch.

    Needs columns seminorm, rtol, nfe_forward, nfe_backward, ode_error, forward_time_s;
    several seeds of one (seminorm, rtol) are averaged.
    """
    plt = pyplot()
    data = frame.copy()
    data["seminorm"] = _is_true(data["seminorm"])
    for column in ("rtol", "nfe_forward", "nfe_backward", "ode_error", "forward_time_s"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    means = data.groupby(["seminorm", "rtol"], as_index=False)[
        ["nfe_forward", "nfe_backward", "ode_error", "forward_time_s"]].mean()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    # seminorm dashed with hollow markers, so that it stays visible where it equals the full norm
    styles = {False: dict(label="full norm", color="tab:blue", marker="o", ms=7),
              True: dict(label="seminorm", color="tab:red", marker="s", ls="--", mfc="none", ms=9)}
    for seminorm, part in means.groupby("seminorm"):
        style = styles[bool(seminorm)]
        color = style["color"]
        part = part.sort_values("nfe_forward")
        axes[0].plot(part["nfe_forward"], part["ode_error"], **style)
        axes[1].plot(part["nfe_forward"], part["forward_time_s"] * 1e3, **style)
        axes[2].plot(part["nfe_forward"], part["nfe_backward"], **style)
        for _, r in part.iterrows():
            axes[0].annotate(f"{r['rtol']:.0e}", (r["nfe_forward"], r["ode_error"]), fontsize=6,
                             xytext=(3, 3), textcoords="offset points", color=color)
    if (means["ode_error"] > 0).all() and len(means):
        axes[0].set_yscale("log")
    axes[0].set(xlabel="NFE forward (per batch)", ylabel="numerical error of h(1) (relative)",
                title="(a) error vs NFE (labels: rtol = atol)")
    axes[1].set(xlabel="NFE forward (per batch)", ylabel="forward time (ms per batch)",
                title="(b) time vs NFE")
    top = float(np.nanmax(means[["nfe_forward", "nfe_backward"]].to_numpy())) if len(means) else 1.0
    axes[2].plot([0, top * 1.05], [0, top * 1.05], color="0.5", ls=":", lw=1, label="y = x")
    axes[2].set(xlabel="NFE forward (per batch)", ylabel="NFE backward (per batch)",
                title="(c) backward vs forward NFE")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_nfe_training(history: Mapping, path: Path, title: str = "Figure 3 (d)") -> Path:
    """An ODE-Net history (nfe_forward: per-iteration counts per epoch) -> forward NFE through training."""
    plt = pyplot()
    epochs = [list(counts) for counts in history["nfe_forward"]]
    values = [count for counts in epochs for count in counts]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if values:
        ax.plot(np.arange(1, len(values) + 1), values, color="tab:blue", lw=0.6, alpha=0.5,
                label="per iteration")
        ends = np.cumsum([len(counts) for counts in epochs])
        mids = ends - np.array([len(counts) for counts in epochs]) / 2 + 0.5
        means = [np.mean(counts) if counts else np.nan for counts in epochs]
        ax.plot(mids, means, color="tab:red", marker="o", lw=1.5, label="epoch mean")
    ax.set(xlabel="training iteration", ylabel="NFE forward")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_depth(frame: pd.DataFrame, path: Path, title: str = "Memory and time against depth") -> Path:
    """Rows of depth.csv (one profile) -> memory and time per iteration against L or L~, with fitted lines."""
    plt = pyplot()
    data = frame.copy()
    for column in ("n_blocks", "nfe_forward", "memory_mib", "time_per_iter_s"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    panels = (("memory_mib", "activation memory (MiB)"), ("time_per_iter_s", "time per iteration (s)"))
    for row, (column, ylabel) in enumerate(panels):
        for col, models in enumerate((("resnet",), ("rknet", "odenet"))):
            ax = axes[row][col]
            for model in models:
                part = data[data["model"] == model]
                x = part["n_blocks"] if model == "resnet" else part["nfe_forward"]
                if part.empty:
                    continue
                ax.scatter(x, part[column], color=COLORS[model], label=LABELS[model], zorder=3)
                slope = _fit_line(ax, x, part[column], COLORS[model])
                if math.isfinite(slope):
                    unit = "MiB" if column == "memory_mib" else "s"
                    ax.plot([], [], color=COLORS[model], ls="--", label=f"fit: {slope:.3g} {unit} per unit")
            ax.set(xlabel="L (residual blocks)" if col == 0 else "L~ (forward NFE per iteration)", ylabel=ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training_curves(histories: Mapping[str, Mapping], path: Path, title: str = "Training curves") -> Path:
    """{label: history} -> test error (%) per epoch; a label starting with a model name takes its colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, history in histories.items():
        model = str(label).split()[0]
        ax.plot(history["epoch"], history["test_error"], marker="o", ms=3, color=COLORS.get(model),
                label=f"{LABELS.get(model, model)}{str(label)[len(model):]}")
    errors = [e for h in histories.values() for e in h["test_error"]]
    if errors and min(errors) > 0:
        from matplotlib.ticker import FormatStrFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------- task hooks

_CHECKPOINT = re.compile(r"^(?P<experiment>[^-]+)-(?P<model>[^-]+)-(?P<profile>.+)-seed(?P<seed>\d+)\.pt$")


def load_histories(results_dir: Path, experiment: str = "table1") -> dict[tuple[str, str, int], dict]:
    """{(profile, model, seed): history} of the checkpoints of one experiment under results_dir."""
    import torch

    found = {}
    for path in sorted((Path(results_dir) / "checkpoints").glob(f"{experiment}-*.pt")):
        match = _CHECKPOINT.match(path.name)
        if match is None:
            continue
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("history"):
            found[(match["profile"], match["model"], int(match["seed"]))] = payload["history"]
    return found


def _profile_rows(results_dir: Path, experiment: str, cell: list[str]) -> dict[str, pd.DataFrame]:
    """The finished rows of one experiment per profile, the latest of each cell (a rerun replaces)."""
    from noderun.results import latest_per_cell, read_results

    frame = read_results(results_dir)
    if frame.empty:
        return {}
    rows = latest_per_cell(frame[frame["experiment"] == experiment], cell)
    rows = rows[rows["status"] == "ok"]
    return {str(profile): part for profile, part in rows.groupby("profile") if len(part)}


def classification_figures(results_dir: Path) -> list[Path]:
    """Training curves and Figure 3 (d) from the Table 1 checkpoints; the depth plot from depth.csv."""
    out = Path(results_dir) / "figures"
    written = []
    histories = load_histories(results_dir, "table1")
    for profile in sorted({p for p, _, _ in histories}):
        mine = {key: h for key, h in histories.items() if key[0] == profile}
        order = sorted(mine, key=lambda key: (list(LABELS).index(key[1]) if key[1] in LABELS else 99, key[2]))
        several = {model for _, model, _ in mine if sum(1 for _, m, _ in mine if m == model) > 1}
        labels = {(f"{model} seed {seed}" if model in several else model): mine[(p, model, seed)]
                  for p, model, seed in order}
        written.append(plot_training_curves(labels, out / f"training_{profile}.png",
                                            f"Test error per epoch, Table 1 models (profile={profile})"))
        odenet = sorted((seed, h) for (_, model, seed), h in mine.items() if model == "odenet")
        if odenet and any(len(counts) for counts in odenet[0][1].get("nfe_forward", [])):
            seed, history = odenet[0]
            written.append(plot_nfe_training(
                history, out / f"figure3d_{profile}.png",
                f"Figure 3 (d): forward NFE in training, ODE-Net (profile={profile}, seed {seed})"))
    from noderun.tasks.classification import CELL_KEY

    for profile, rows in sorted(_profile_rows(results_dir, "depth", CELL_KEY).items()):
        written.append(plot_depth(rows, out / f"depth_{profile}.png",
                                  f"Memory and time against depth (profile={profile})"))
    return written


def nfe_sweep_figures(results_dir: Path) -> list[Path]:
    """Figure 3 (a)-(c) per profile from figure3.csv."""
    from noderun.tasks.nfe_sweep import CELL_KEY

    out = Path(results_dir) / "figures"
    return [plot_nfe_sweep(rows, out / f"figure3abc_{profile}.png",
                           f"Figure 3 (a)-(c): trained ODE-Net over tolerances (profile={profile})")
            for profile, rows in sorted(_profile_rows(results_dir, "figure3", CELL_KEY).items())]
