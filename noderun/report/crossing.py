"""Beyond the paper: the crossing experiment (ODE against augmented ODE, Dupont et al. 2019) as a table
from result rows, and as figures from the arrays each run saved under results_dir/crossing/<profile>/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noderun.report.aggregate import latest_per_cell, markdown, mean_std, unregularised
from noderun.report.plotting import pyplot, save_figure

TASK = "crossing"
DATASETS = {"crossing_1d": "1-D: g(-1) = 1, g(1) = -1", "crossing_2d": "2-D: disc inside a ring"}
MODELS = ("ode", "anode")
LABELS = {"ode": "ODE", "anode": "ANODE"}
COLORS = {"ode": "tab:blue", "anode": "tab:red"}
CLASS_COLORS = {-1: "tab:orange", 1: "tab:purple"}  # by target label

# What makes two rows the same cell: a rerun replaces the earlier row, never counts as another seed.
CELL_KEY = ["experiment", "dataset", "model", "augment_dim", "profile", "seed"]


def render_table(rows: pd.DataFrame) -> str:
    """Rows data set x model (ODE, then ANODE by augmented dimensions), mean ± std over seeds."""
    table = []
    for dataset in [d for d in DATASETS if d in set(rows["dataset"])] + sorted(set(rows["dataset"]) - set(DATASETS)):
        part = rows[rows["dataset"] == dataset]
        for (model, augment), cell in sorted(part.groupby(["model", "augment_dim"]),
                                             key=lambda item: (item[0][0] != "ode", item[0][1])):
            ok = cell[cell["status"] == "ok"]
            label = LABELS.get(model, model)
            if ok.empty:
                table.append([dataset, label, str(int(augment)), "-", "failed", "-", "-", "-", "-", "-",
                              f"0 of {len(cell)}"])
                continue
            table.append([
                dataset, label, str(int(augment)), f"{int(ok['params'].iloc[0]):,}",
                mean_std(ok["train_loss"], fmt=".4g", std_fmt=".2g"),
                mean_std(ok["test_loss"], fmt=".4g", std_fmt=".2g"), mean_std(ok["test_accuracy"], 1),
                mean_std(ok["nfe_forward"], 1), mean_std(ok["nfe_backward"], 1),
                mean_std(ok["time_per_iter_s"] * 1e3, 1),
                str(len(ok)) + (f" ({len(cell) - len(ok)} failed)" if len(ok) < len(cell) else ""),
            ])
    headers = ["Data", "Model", "aug. dims", "Params", "Train loss", "Test loss", "Test acc. %", "NFE fwd",
               "NFE bwd", "ms / iter", "seeds"]
    note = ("Huber (smooth L1) loss on the ±1 label, after training, on the whole training set and on held-out "
            "points; accuracy: the output has the label's sign. NFE per training iteration, mean of the last 10 % "
            "of iterations. 1-D: the output is the flow's own x(1) (an ODE flow keeps the order of the points, "
            "so its best loss is 0.5, every output 0); 2-D: a linear map of the final state.")
    return markdown(table, headers) + "\n\n" + note


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    rows = latest_per_cell(rows, CELL_KEY)
    if rows.empty:
        return []
    return [("Beyond the paper: ODE against augmented ODE (ANODE) on maps a flow cannot represent "
             "(Dupont et al. 2019)", render_table(rows))]


# ------------------------------------------------------------------------- figures


def _load(folder: Path, dataset: str, model: str):
    """The saved arrays of the lowest seed of a (data set, model) pair, or None."""
    paths = sorted(unregularised(folder.glob(f"{dataset}_{model}_a*_s*.npz")), key=lambda p: (int(p.stem.rsplit("_s", 1)[1]), p.name))
    return (np.load(paths[0]), paths[0]) if paths else (None, None)


def _seed(path: Path) -> str:
    return path.stem.rsplit("_s", 1)[1]


def _class_lines(ax, times, trajectories, labels, coordinate: int = 0) -> None:
    for i, label in enumerate(labels):
        ax.plot(times, trajectories[:, i, coordinate], color=CLASS_COLORS[int(np.sign(label))], lw=1.2)


def plot_1d(arrays: dict, path: Path, title: str) -> Path:
    """{"ode": npz, "anode": npz} of crossing_1d -> x(t) of both models and the ANODE's (x, a) path."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, model in zip(axes[:2], MODELS):
        data = arrays.get(model)
        if data is None:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(LABELS[model])
            continue
        _class_lines(ax, data["times"], data["trajectories"], data["plot_y"])
        ax.axhline(1, color="0.6", ls=":", lw=1)
        ax.axhline(-1, color="0.6", ls=":", lw=1)
        ax.set(xlabel="t", ylabel="x(t)", title=f"{LABELS[model]} (augmented dims: {int(data['augment_dim'])}): x(t)")
    ax = axes[2]
    data = arrays.get("anode")
    if data is not None and int(data["augment_dim"]) >= 1:
        traj, labels = data["trajectories"], data["plot_y"]
        for i, label in enumerate(labels):
            color = CLASS_COLORS[int(np.sign(label))]
            ax.plot(traj[:, i, 0], traj[:, i, 1], color=color, lw=1.2)
            ax.plot(traj[0, i, 0], traj[0, i, 1], "o", color=color, ms=4)
            ax.plot(traj[-1, i, 0], traj[-1, i, 1], "s", color=color, ms=4, mfc="none")
        ax.set(xlabel="x", ylabel="a (first augmented dim)", title="ANODE: path in (x, a), o start, □ end")
    else:
        ax.text(0.5, 0.5, "no ANODE run", ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].plot([], [], color=CLASS_COLORS[1], label="x(0) near -1, target +1")
    axes[0].plot([], [], color=CLASS_COLORS[-1], label="x(0) near +1, target -1")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _feature_plane(data) -> tuple[np.ndarray, str, str]:
    """Final states in 2-D: the state itself (2 dims), else its coordinate along the readout's weight
    and along the largest principal direction orthogonal to it."""
    features, weight = data["features"], data["readout_weight"]
    if features.shape[1] == 2 or weight.size == 0:
        return features[:, :2], "h1(1)", "h2(1)"
    w = weight / np.linalg.norm(weight)
    along = features @ w
    rest = features - np.outer(along, w)
    rest = rest - rest.mean(0)
    direction = np.linalg.svd(rest, full_matrices=False)[2][0]
    return np.stack([along, rest @ direction], 1), "along the readout weight", "largest orthogonal direction"


def plot_2d(arrays: dict, path: Path, title: str) -> Path:
    """{"ode": npz, "anode": npz} of crossing_2d -> trajectories in the data plane and the final features."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 9))
    for col, model in enumerate(MODELS):
        data = arrays.get(model)
        top, bottom = axes[0, col], axes[1, col]
        if data is None:
            for ax in (top, bottom):
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            top.set_title(LABELS[model])
            continue
        traj, labels = data["trajectories"], data["plot_y"]
        for i, label in enumerate(labels):
            color = CLASS_COLORS[int(np.sign(label))]
            top.plot(traj[:, i, 0], traj[:, i, 1], color=color, lw=0.8, alpha=0.8)
            top.plot(traj[0, i, 0], traj[0, i, 1], "o", color=color, ms=3)
        top.set_aspect("equal", adjustable="datalim")
        top.set(xlabel="x1", ylabel="x2",
                title=f"{LABELS[model]} (aug. dims {int(data['augment_dim'])}): paths in x1, x2")
        plane, xlabel, ylabel = _feature_plane(data)
        for label in (-1, 1):
            mask = np.sign(data["feature_labels"]) == label
            bottom.scatter(*plane[mask].T, s=3, color=CLASS_COLORS[label],
                           label="disc, target -1" if label < 0 else "ring, target +1")
        weight, bias = data["readout_weight"], data["readout_bias"]
        if weight.size:  # the readout's zero level: w.h + b = 0
            norm = np.linalg.norm(weight)
            if plane.shape[1] == 2 and data["features"].shape[1] == 2 and abs(weight[1]) > 1e-12:
                xs = np.linspace(*bottom.get_xlim(), 50)
                bottom.plot(xs, -(weight[0] * xs + bias[0]) / weight[1], color="k", lw=1, ls="--")
            elif data["features"].shape[1] > 2:
                bottom.axvline(-bias[0] / norm, color="k", lw=1, ls="--")
        bottom.set(xlabel=xlabel, ylabel=ylabel, title=f"{LABELS[model]}: final states (dashed: output 0)")
        bottom.legend(fontsize=7, markerscale=3)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values.astype(float)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_training(arrays: dict, path: Path, title: str) -> Path:
    """{(dataset, model): npz} -> training loss and forward / backward NFE per iteration."""
    plt = pyplot()
    datasets = [d for d in DATASETS if any(key[0] == d for key in arrays)]
    fig, axes = plt.subplots(2, len(datasets), figsize=(6 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        for model in MODELS:
            data = arrays.get((dataset, model))
            if data is None:
                continue
            loss, fwd, bwd = data["loss"], data["nfe_forward"], data["nfe_backward"]
            window = max(1, len(loss) // 50)
            label = f"{LABELS[model]} (aug. {int(data['augment_dim'])})"
            axes[0, col].plot(np.arange(len(loss)) + 1, loss, color=COLORS[model], lw=0.5, alpha=0.3)
            axes[0, col].plot(np.arange(len(_smooth(loss, window))) + window, _smooth(loss, window),
                              color=COLORS[model], lw=1.5, label=label)
            for counts, style, name in ((fwd, "-", "fwd"), (bwd, "--", "bwd")):
                axes[1, col].plot(np.arange(len(counts)) + 1, counts, color=COLORS[model], lw=0.5, ls=style, alpha=0.25)
                axes[1, col].plot(np.arange(len(_smooth(counts, window))) + window, _smooth(counts, window),
                                  color=COLORS[model], lw=1.5, ls=style, label=f"{label} {name}")
        axes[0, col].set(yscale="log", xlabel="iteration", ylabel="training loss (Huber)", title=DATASETS[dataset])
        axes[1, col].set(xlabel="iteration", ylabel="NFE per iteration (line: moving mean)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def figures(results_dir: Path) -> list[Path]:
    """Per profile: crossing_1d_<profile>.png, crossing_2d_<profile>.png, crossing_training_<profile>.png."""
    root = Path(results_dir) / "crossing"
    if not root.is_dir():
        return []
    out = Path(results_dir) / "figures"
    written = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        profile = folder.name
        loaded = {}
        seeds = {}
        for dataset in DATASETS:
            for model in MODELS:
                data, path = _load(folder, dataset, model)
                if data is not None:
                    loaded[dataset, model] = data
                    seeds[dataset, model] = _seed(path)
        for dataset, plot in (("crossing_1d", plot_1d), ("crossing_2d", plot_2d)):
            mine = {model: loaded[dataset, model] for model in MODELS if (dataset, model) in loaded}
            if mine:
                which = ", ".join(f"{LABELS[m]} seed {seeds[dataset, m]}" for m in mine)
                written.append(plot(mine, out / f"{dataset}_{profile}.png",
                                    f"{DATASETS[dataset]}: ODE against ANODE (profile={profile}; {which})"))
        if loaded:
            written.append(plot_training(loaded, out / f"crossing_training_{profile}.png",
                                         f"Crossing experiment: loss and NFE over training (profile={profile}, "
                                         "lowest seed of each)"))
    return written
