"""Figures 4 and 5 (planar NF against planar CNF) as tables from result rows, and as figures from the
arrays each flow run saved under results_dir/flows/<profile>/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noderun.data.densities import ENERGIES, GRID, LIMIT, SNAPSHOTS, TOY_DATASETS, density_grid, energy
from noderun.report.aggregate import latest_per_cell, markdown, mean_std
from noderun.report.plotting import pyplot, save_figure

TASK = "flows"
MODELS = ("planar_nf", "planar_cnf")
WIDTHS = (2, 8, 32)  # K (NF layers) and M (CNF hidden units) of Figure 4
LABELS = {"u1": "U1 (ring)", "u2": "U2 (wave)", "u3": "U3 (split)", "two_circles": "Two Circles",
          "two_moons": "Two Moons"}


def _cell(part: pd.DataFrame, column: str, digits: int) -> str:
    """Mean ± std of the finished runs of a cell; 'failed' when its only runs failed."""
    ok = part[part["status"] == "ok"]
    if ok.empty and not part.empty:
        return "failed"
    return mean_std(ok[column], digits)


def render_density(rows: pd.DataFrame) -> str:
    """Figure 4d as a table: loss per target, NF K and CNF M ∈ {2, 8, 32}; CNF < NF count."""
    every = rows[rows["kind"] == "density"]
    runs = every[every["status"] == "ok"]
    widths = sorted(set(WIDTHS) | set(runs["width"].dropna().astype(int)))
    table, wins, cells = [], 0, 0
    for target in ENERGIES:
        line = [LABELS[target]]
        means = {}
        for model in MODELS:
            for width in widths:
                part = runs[(runs["target"] == target) & (runs["model"] == model) & (runs["width"] == width)]
                tried = every[(every["target"] == target) & (every["model"] == model) & (every["width"] == width)]
                line.append(_cell(tried, "loss", 3))
                if not part.empty:
                    means[model, width] = part["loss"].mean()
        for width in widths:
            if ("planar_nf", width) in means and ("planar_cnf", width) in means:
                cells += 1
                wins += means["planar_cnf", width] < means["planar_nf", width]
        table.append(line)
    headers = ["Target"] + [f"NF K={w}" for w in widths] + [f"CNF M={w}" for w in widths]
    text = markdown(table, headers)
    text += (f"\n\nLoss E_q[log q(z) + U(z)] (nats; KL(q‖p) minus log Z, lower is better). "
             f"CNF < NF at equal K = M in {wins} of {cells} cells with both measured.")
    return text


def render_mle(rows: pd.DataFrame) -> str:
    every = rows[rows["kind"] == "mle"]
    runs = every[every["status"] == "ok"]
    table = []
    for data in TOY_DATASETS:
        part = runs[runs["target"] == data]
        nf, cnf = part[part["model"] == "planar_nf"], part[part["model"] == "planar_cnf"]
        tried = every[every["target"] == data]
        width = lambda p: str(int(p["width"].iloc[0])) if not p.empty else "-"  # noqa: E731
        better = "-"
        if not nf.empty and not cnf.empty:
            better = "CNF" if cnf["test_nll"].mean() < nf["test_nll"].mean() else "NF"
        table.append([LABELS[data], _cell(tried[tried["model"] == "planar_nf"], "test_nll", 3), width(nf),
                      _cell(tried[tried["model"] == "planar_cnf"], "test_nll", 3), width(cnf), better])
    text = markdown(table, ["Data", "NF test NLL", "K", "CNF test NLL", "M", "lower"])
    return text + "\n\nTest NLL in nats per 2-D point (lower is better)."


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    rows = latest_per_cell(rows, ["experiment", "kind", "model", "target", "width", "seed", "profile"])
    sections = []
    if (rows["kind"] == "density").any():
        sections.append(("Figure 4: density matching (planar NF vs planar CNF)", render_density(rows)))
    if (rows["kind"] == "mle").any():
        sections.append(("Figure 5: maximum likelihood (planar NF vs planar CNF)", render_mle(rows)))
    return sections


# ------------------------------------------------------------------------- figures


def _load(folder: Path, kind: str, target: str, model: str, width: int):
    paths = sorted(folder.glob(f"{kind}_{target}_{model}_w{width}_s*.npz"))
    return np.load(paths[0]) if paths else None


def _target_density(target: str) -> np.ndarray:
    u = energy(target, density_grid().double())
    return torch.exp(-u).reshape(GRID, GRID).numpy()


def figures(results_dir: Path) -> list[Path]:
    plt = pyplot()

    written = []
    root = Path(results_dir) / "flows"
    if not root.is_dir():
        return written
    out = Path(results_dir) / "figures"
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        profile = folder.name
        if list(folder.glob("density_*.npz")):
            fig, axes = plt.subplots(len(ENERGIES), 7, figsize=(14, 2 * len(ENERGIES)), squeeze=False)
            for row, target in enumerate(ENERGIES):
                axes[row, 0].imshow(_target_density(target), origin="lower", extent=extent, cmap="viridis")
                axes[row, 0].set_ylabel(LABELS[target])
                for col, (model, width) in enumerate([(m, w) for m in MODELS for w in WIDTHS], start=1):
                    data = _load(folder, "density", target, model, width)
                    if data is not None:
                        axes[row, col].imshow(data["density"], origin="lower", extent=extent, cmap="viridis")
                    else:
                        axes[row, col].text(0.5, 0.5, "not run", ha="center", va="center",
                                            transform=axes[row, col].transAxes)
                    if row == 0:
                        axes[row, col].set_title(("NF K" if model == "planar_nf" else "CNF M") + f"={width}")
                axes[row, 0].set_title("Target" if row == 0 else "")
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
            fig.tight_layout()
            written.append(save_figure(fig, out / f"flows_density_{profile}.png", dpi=80))
        for data_name in TOY_DATASETS:
            cnf = next(iter(sorted(folder.glob(f"mle_{data_name}_planar_cnf_w*_s*.npz"))), None)
            nf = next(iter(sorted(folder.glob(f"mle_{data_name}_planar_nf_w*_s*.npz"))), None)
            if cnf is None and nf is None:
                continue
            fig, axes = plt.subplots(2, len(SNAPSHOTS) + 2, figsize=(2.2 * (len(SNAPSHOTS) + 2), 4.6), squeeze=False)
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlim(-LIMIT, LIMIT)
                ax.set_ylim(-LIMIT, LIMIT)
                ax.set_aspect("equal")
            for row, (label, path) in enumerate((("CNF", cnf), ("NF", nf))):
                axes[row, 0].set_ylabel(label)
                if path is None:
                    axes[row, 0].text(0, 0, "not run", ha="center", va="center")
                    continue
                arrays = np.load(path)
                axes[row, 0].scatter(*arrays["data"].T, s=1, c="k")
                axes[row, 0].set_title("data" if row == 0 else "")
                samples = arrays["samples"]
                if label == "CNF":
                    for col, fraction in enumerate(SNAPSHOTS, start=1):
                        axes[row, col].scatter(*samples[col - 1].T, s=1, c="tab:blue")
                        axes[row, col].set_title(f"t = {fraction:.0%}")
                else:
                    axes[row, len(SNAPSHOTS)].scatter(*samples[0].T, s=1, c="tab:orange")
                    axes[row, len(SNAPSHOTS)].set_title("NF samples")
                axes[row, -1].imshow(arrays["density"], origin="lower", extent=extent, cmap="viridis")
                axes[row, -1].set_title("density" if row == 0 else "")
            fig.tight_layout()
            written.append(save_figure(fig, out / f"flows_mle_{data_name}_{profile}.png", dpi=80))
    return written
