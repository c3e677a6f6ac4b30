"""Figure 3 (a)-(c), the tolerance sweep of the trained ODE-Net, as tables and a figure from result rows.

Rows of `model=anode` (beyond the paper: the Table 1 ANODE swept the same way) get their own tables and figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from noderun.report.aggregate import finished, is_true, latest_per_cell, markdown, mean_std, profile_rows
from noderun.report.plotting import pyplot, save_figure

TASK = "figure3"

# What makes two rows the same cell: a rerun replaces the earlier row, never counts as another seed.
CELL_KEY = ["experiment", "model", "profile", "seed", "method", "rtol", "atol", "seminorm", "test_size", "batch_size"]
# The swept models: the paper's ODE-Net, and beyond the paper the ANODE (rows without a model are the ODE-Net's).
MODELS = {"odenet": "ODE-Net", "anode": "ANODE (beyond the paper)"}


def model_of(frame: pd.DataFrame) -> pd.Series:
    """The swept model of every row; odenet where the column is missing or empty."""
    if "model" not in frame:
        return pd.Series("odenet", index=frame.index)
    return frame["model"].replace("", None).fillna("odenet")


def render(frame: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    runs = finished(latest_per_cell(frame[(frame["experiment"] == "figure3") & (frame["profile"] == profile)],
                                    CELL_KEY))
    sections = []
    for model, label in MODELS.items():
        sections += _render_model(runs[model_of(runs) == model], label)
    return sections


def _render_model(runs: pd.DataFrame, label: str) -> list[tuple[str, str]]:
    sections = []
    for seminorm in (False, True):
        part = runs[is_true(runs["seminorm"]) == seminorm]
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
        title = f"Figure 3 (a)-(c): tolerance sweep of the trained {label}, {'seminorm' if seminorm else 'full norm'}"
        sections.append((title, table + "\n\n" + note))
    return sections



def plot_nfe_sweep(frame: pd.DataFrame, path: Path, title: str = "Figure 3 (a)-(c)") -> Path:
    """Rows of figure3.csv (one profile) -> three panels against forward NFE per batch.

    Needs columns seminorm, rtol, nfe_forward, nfe_backward, ode_error, forward_time_s;
    several seeds of one (seminorm, rtol) are averaged.
    """
    plt = pyplot()
    data = frame.copy()
    data["seminorm"] = is_true(data["seminorm"])
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


def figures(results_dir: Path) -> list[Path]:
    """Figure 3 (a)-(c) per profile from figure3.csv (the ANODE's rows, if any, in figure3abc_anode_<profile>.png)."""
    out = Path(results_dir) / "figures"
    written = []
    for profile, rows in sorted(profile_rows(results_dir, "figure3", CELL_KEY).items()):
        for model, label in MODELS.items():
            part = rows[model_of(rows) == model]
            if len(part):
                name = f"figure3abc_{profile}.png" if model == "odenet" else f"figure3abc_{model}_{profile}.png"
                written.append(plot_nfe_sweep(part, out / name,
                                              f"Figure 3 (a)-(c): trained {label} over tolerances (profile={profile})"))
    return written
