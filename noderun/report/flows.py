"""Figures 4 and 5 (planar NF against planar CNF) as tables from result rows, and as figures from the
arrays each flow run saved under results_dir/flows/<profile>/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noderun.data.densities import ENERGIES, GRID, LIMIT, SNAPSHOTS, TOY_DATASETS, density_grid, energy
from noderun.report.aggregate import is_regularised, latest_per_cell, markdown, mean_std, unregularised
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


def _runs(rows: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    every = rows[rows["kind"] == kind].copy()
    for column in ("kl", "true_nll", "excess_nll"):  # columns rows of earlier versions may lack
        if column not in every:
            every[column] = np.nan
    return every, every[every["status"] == "ok"]


def render_density(rows: pd.DataFrame) -> str:
    """Figure 4d as a table: loss (and KL) per target, NF K and CNF M ∈ {2, 8, 32}, mean ± std over seeds;
    in how many cells the CNF's mean is below the NF's, and whether the CNF's loss grows with its width."""
    every, runs = _runs(rows, "density")
    widths = sorted(set(WIDTHS) | set(runs["width"].dropna().astype(int)))
    table, kls, wins, cells, worse = [], [], 0, 0, []
    for target in ENERGIES:
        line, kl_line = [LABELS[target]], [LABELS[target]]
        stats = {}
        for model in MODELS:
            for width in widths:
                cell = (runs["target"] == target) & (runs["model"] == model) & (runs["width"] == width)
                tried = every[(every["target"] == target) & (every["model"] == model) & (every["width"] == width)]
                line.append(_cell(tried, "loss", 3))
                kl_line.append(_cell(tried, "kl", 3))
                if cell.any():
                    stats[model, width] = (runs[cell]["loss"].mean(), runs[cell]["loss"].std(ddof=1))
        for width in widths:
            if ("planar_nf", width) in stats and ("planar_cnf", width) in stats:
                cells += 1
                wins += stats["planar_cnf", width][0] < stats["planar_nf", width][0]
        cnf = [stats["planar_cnf", w] for w in widths if ("planar_cnf", w) in stats]
        for (small, small_std), (large, large_std) in zip(cnf, cnf[1:]):
            spread = np.nanmax([small_std, large_std, 0.0])
            if large > small + spread:  # wider is worse by more than one std
                worse.append(LABELS[target])
        table.append(line)
        kls.append(kl_line)
    headers = ["Target"] + [f"NF K={w}" for w in widths] + [f"CNF M={w}" for w in widths]
    text = markdown(table, headers)
    text += ("\n\nLoss E_q[log q(z) + U(z)] (nats; KL(q‖p) minus log Z, lower is better), mean ± std over seeds. "
             f"CNF mean < NF mean at equal K = M in {wins} of {cells} cells with both measured. "
             + ("The CNF's loss grows with its width by more than one std on: " + ", ".join(sorted(set(worse))) + "."
                if worse else "The CNF's loss never grows with its width by more than one std."))
    text += "\n\nKL(q‖p) in nats (the loss plus log Z, Z from a grid; 0 is a perfect match):\n\n" + markdown(kls, headers)
    return text


def render_mle(rows: pd.DataFrame) -> str:
    every, runs = _runs(rows, "mle")
    table = []
    has_excess = runs["excess_nll"].notna().any()
    for data in TOY_DATASETS:
        part = runs[runs["target"] == data]
        nf, cnf = part[part["model"] == "planar_nf"], part[part["model"] == "planar_cnf"]
        tried = every[every["target"] == data]
        width = lambda p: str(int(p["width"].iloc[0])) if not p.empty else "-"  # noqa: E731
        better = "-"
        if not nf.empty and not cnf.empty:
            better = "CNF" if cnf["test_nll"].mean() < nf["test_nll"].mean() else "NF"
        line = [LABELS[data], _cell(tried[tried["model"] == "planar_nf"], "test_nll", 3), width(nf),
                _cell(tried[tried["model"] == "planar_cnf"], "test_nll", 3), width(cnf), better]
        if has_excess:
            floor = part["true_nll"].dropna()
            ratio = (cnf["excess_nll"].mean() / nf["excess_nll"].mean()
                     if not nf.empty and not cnf.empty and nf["excess_nll"].notna().any() else float("nan"))
            line += [f"{floor.mean():.3f}" if len(floor) else "-",
                     _cell(tried[tried["model"] == "planar_nf"], "excess_nll", 3),
                     _cell(tried[tried["model"] == "planar_cnf"], "excess_nll", 3),
                     "-" if np.isnan(ratio) else f"{ratio:.2f}"]
        table.append(line)
    headers = ["Data", "NF test NLL", "K", "CNF test NLL", "M", "lower"]
    if has_excess:
        headers += ["data's own NLL", "NF excess", "CNF excess", "CNF / NF excess"]
    text = markdown(table, headers)
    return text + ("\n\nTest NLL in nats per 2-D point (lower is better), mean ± std over seeds; the excess is the "
                   "NLL above the data's own density's on the same test sample, the floor no flow can go below.")


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
    paths = unregularised(folder.glob(f"{kind}_{target}_{model}_w{width}_s*.npz"))
    return np.load(paths[0]) if paths else None


def _target_density(target: str) -> np.ndarray:
    u = energy(target, density_grid().double())
    return torch.exp(-u).reshape(GRID, GRID).numpy()


def density_errorbars(results_dir: Path, plt) -> list[Path]:
    """Figure 4's companion per profile: the loss of each cell, mean ± std over seeds, NF (K) against CNF
    (M) at each width, one panel per target."""
    from noderun.results import read_results

    frame = read_results(results_dir)
    if frame.empty or "kind" not in frame:
        return []
    frame = frame[~is_regularised(frame)]
    rows = latest_per_cell(frame[(frame["task"] == TASK) & (frame["kind"] == "density")],
                           ["experiment", "kind", "model", "target", "width", "seed", "profile"])
    rows = rows[rows["status"] == "ok"]
    written = []
    for profile, part in rows.groupby("profile"):
        fig, axes = plt.subplots(1, len(ENERGIES), figsize=(4 * len(ENERGIES), 3.2), squeeze=False)
        for ax, target in zip(axes[0], ENERGIES):
            for model, colour, label in (("planar_nf", "tab:orange", "NF, K layers"),
                                         ("planar_cnf", "tab:blue", "CNF, M units")):
                cell = part[(part["target"] == target) & (part["model"] == model)]
                stats = cell.groupby("width")["loss"].agg(["mean", "std", "count"]).reset_index()
                if stats.empty:
                    continue
                ax.errorbar(stats["width"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                            color=colour, label=f"{label} ({int(stats['count'].min())}+ seeds)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(WIDTHS, [str(w) for w in WIDTHS])
            ax.set_xlabel("width (K = M)")
            ax.set_title(LABELS[target], fontsize=10)
        axes[0][0].set_ylabel("loss E_q[log q + U] (nats)")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"Figure 4: loss per cell, mean ± std over seeds (profile={profile})", fontsize=10)
        fig.tight_layout()
        written.append(save_figure(fig, Path(results_dir) / "figures" / f"flows_density_errorbars_{profile}.png"))
    return written


def figures(results_dir: Path) -> list[Path]:
    plt = pyplot()

    written = density_errorbars(Path(results_dir), plt)
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
            cnf = next(iter(unregularised(folder.glob(f"mle_{data_name}_planar_cnf_w*_s*.npz"))), None)
            nf = next(iter(unregularised(folder.glob(f"mle_{data_name}_planar_nf_w*_s*.npz"))), None)
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
