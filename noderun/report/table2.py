"""Table 2 (latent ODE against RNN on spirals) and the Figure 8 panels, from result rows and saved predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noderun.report.aggregate import latest_per_cell, markdown, mean_std
from noderun.report.plotting import pyplot, save_figure

TASK = "spirals"

# Table 2 of Chen et al. (2018): predictive RMSE on the test set, shown beside ours.
PAPER_TABLE2 = {
    "rnn": {"label": "RNN", 30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {"label": "Latent ODE", 30: 0.1642, 50: 0.1502, 100: 0.1346},
}
N_OBS = (30, 50, 100)
MODELS = tuple(PAPER_TABLE2)


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
