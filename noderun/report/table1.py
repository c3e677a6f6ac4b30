"""Table 1, the depth experiment and the reference comparison, and their figures, from result rows.

Tables: Table 1 (MNIST) beside the paper's values; memory and time against depth with fitted
slopes; the ODE-Net against the reference implementation. Figures: test error per epoch of
every Table 1 model and Figure 3 (d), forward NFE through training, from the final-weights
files' histories; memory and time against depth from depth.csv.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from noderun.report.aggregate import fit_line, latest_per_cell, markdown, mean_std, profile_rows
from noderun.report.plotting import pyplot, save_figure

TASK = "classification"

# Table 1 of Chen et al. (2018), shown beside our measurements, never mixed with them.
PAPER_TABLE1 = {
    "mlp": {"label": "1-Layer MLP", "test_error": 1.60, "params_m": 0.24, "memory": "-", "time": "-"},
    "resnet": {"label": "ResNet", "test_error": 0.41, "params_m": 0.60, "memory": "O(L)", "time": "O(L)"},
    "rknet": {"label": "RK-Net", "test_error": 0.47, "params_m": 0.22, "memory": "O(L~)", "time": "O(L~)"},
    "odenet": {"label": "ODE-Net", "test_error": 0.42, "params_m": 0.22, "memory": "O(1)", "time": "O(L~)"},
}

# Rows beyond the paper, shown after the paper's four when they have Table 1 runs, with '-' for the paper's values.
BEYOND_TABLE1 = {
    "anode": {"label": "ANODE (beyond the paper)"},  # Dupont et al. 2019: the ODE-Net with an augmented state
}

LABELS = {model: entry["label"] for model, entry in {**PAPER_TABLE1, **BEYOND_TABLE1}.items()}
COLORS = {"mlp": "tab:gray", "resnet": "tab:green", "rknet": "tab:orange", "odenet": "tab:blue", "anode": "tab:red"}

# ------------------------------------------------------------------------- tables


# What makes two rows the same cell: a rerun of a cell replaces the earlier row in the tables,
# so a repeated seed is never counted twice in a mean.
CELL_KEY = ["experiment", "model", "profile", "seed", "method", "rtol", "atol", "adjoint", "n_blocks",
            "train_size", "epochs"]


def latest_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The most recent row of every cell (by timestamp)."""
    return latest_per_cell(frame, CELL_KEY)


# The fast profile is a protocol for the conv nets: its Table 1 takes the MLP row from the paper
# profile, whose 160 epochs of the MLP take minutes on a CPU.
BORROWED = {"fast": {"mlp": "paper"}}

NOTE_MLP = ("The paper's 1.60 % for the 1-layer MLP (cited to LeCun et al. 1998) is the error of an "
            "800-hidden-unit network (Simard et al. 2003); the 0.24M parameters it lists are a 300-unit "
            "network's, which is what runs here.")


def rows_for(frame: pd.DataFrame, profile: str) -> pd.DataFrame:
    """The rows a profile's tables draw on: its own, and the rows it borrows from another profile."""
    mask = frame["profile"] == profile
    for model, other in BORROWED.get(profile, {}).items():
        mask |= (frame["profile"] == other) & (frame["model"] == model) & (frame["experiment"] == "table1")
    return frame[mask]


def render_table1(frame: pd.DataFrame, profile: str) -> str:
    """Table 1 (MNIST) for one profile: our measurements beside the paper's values, then the rows beyond the
    paper (ANODE) that have runs, with '-' for the paper's values."""
    rows, notes = [], []
    table1_models = set(frame.loc[frame["experiment"] == "table1", "model"]) if len(frame) else set()
    beyond = {model: {"test_error": None, "params_m": None, "memory": "-", "time": "-", **entry}
              for model, entry in BEYOND_TABLE1.items() if model in table1_models}
    for model, paper in {**PAPER_TABLE1, **beyond}.items():
        paper_error = "-" if paper["test_error"] is None else f"{paper['test_error']:.2f}"
        paper_params = "-" if paper["params_m"] is None else f"{paper['params_m']:.2f}"
        source = BORROWED.get(profile, {}).get(model, profile)
        runs = latest_cells(frame[(frame["experiment"] == "table1") & (frame["profile"] == source)
                                  & (frame["model"] == model)])
        finished = runs[runs["status"] == "ok"]
        failed = runs[runs["status"] != "ok"]
        label = paper["label"] + (f" ({source})" if source != profile else "")
        if source != profile:
            notes.append(f"{paper['label']}: the row of profile={source}.")
        if finished.empty:
            status = "failed" if not failed.empty else "not run"
            rows.append([label, status, paper_error, "-", paper_params,
                         "-", paper["memory"], "-", "-", paper["time"], "-", "-", "-"])
            continue
        precision = sorted(set(finished["precision"].fillna("32").astype(str))) if "precision" in finished else ["32"]
        rows.append([
            label,
            mean_std(finished["test_error"], 2),
            paper_error,
            f"{finished['params'].iloc[0] / 1e6:.3f}",
            paper_params,
            mean_std(finished["memory_mib"], 2),
            paper["memory"],
            mean_std(finished["time_per_iter_s"], 3),
            mean_std(finished["nfe_forward"], 1) + " / " + mean_std(finished["nfe_backward"], 1),
            paper["time"],
            mean_std(finished["train_time_s"] / 60, 1),
            ", ".join(precision),
            str(len(finished)),
        ])
    headers = ["Model", "Test error %", "paper", "Params (M)", "paper", "Memory MiB", "paper",
               "s / iter", "NFE fwd / bwd", "paper time", "train min", "precision", "seeds"]
    return markdown(rows, headers) + "\n\n" + " ".join(notes + [NOTE_MLP])


def render_depth(frame: pd.DataFrame, profile: str) -> str:
    """Memory and time against depth L (ResNet) or evaluations L~ (RK-Net, ODE-Net), with fitted slopes."""
    runs = latest_cells(frame[(frame["experiment"] == "depth") & (frame["profile"] == profile)])
    runs = runs[runs["status"] == "ok"].copy()
    if runs.empty:
        return "(depth experiment not run)"
    runs["depth"] = np.where(runs["model"] == "resnet", runs["n_blocks"], runs["nfe_forward"])
    rows, slopes = [], []
    for model in ("resnet", "rknet", "odenet", "anode"):
        part = runs[runs["model"] == model].sort_values("depth")
        if part.empty:
            continue
        for _, r in part.iterrows():
            setting = f"L={int(r['n_blocks'])}" if model == "resnet" else f"tol={r['rtol']:.0e}"
            rows.append([LABELS[model], setting, f"{r['depth']:.1f}", f"{r['nfe_backward']:.1f}",
                         f"{r['memory_mib']:.2f}", f"{r['time_per_iter_s']:.3f}"])
        mem_slope = fit_line(part["depth"], part["memory_mib"])[0] * 1024 * 1024
        if math.isfinite(mem_slope):
            mem_slope = round(mem_slope) + 0  # a flat fit prints as 0, not -0
        time_slope = fit_line(part["depth"], part["time_per_iter_s"])[0]
        spread = (part["memory_mib"].max() - part["memory_mib"].min()) / part["memory_mib"].mean() * 100
        slopes.append([LABELS[model], "block" if model == "resnet" else "evaluation",
                       f"{mem_slope:,.0f}", f"{spread:.1f}", f"{time_slope:.4f}"])
    table = markdown(rows, ["Model", "setting", "L or L~ (fwd NFE)", "bwd NFE", "Memory MiB", "s / iter"])
    fit = markdown(slopes, ["Model", "per", "bytes per unit (fit)", "memory spread %", "s per unit (fit)"])
    return table + "\n\n" + fit


def _variant(config_json) -> tuple[str, str]:
    """(solver backend, time channel) of a row's resolved config; defaults for rows that predate them."""
    try:
        config = json.loads(config_json)
    except (TypeError, ValueError):
        config = {}
    return (config.get("solver", {}).get("backend", "native"), config.get("model", {}).get("time_channel", "exact"))


def render_backends(frame: pd.DataFrame, profile: str) -> str:
    """The ODE-Net of Table 1 beside the same training run on another solver backend or time channel.

    The reference network as published is `experiment_name=reference model.time_channel=concat
    solver.backend=torchdiffeq`; its rows live in reference.csv and never enter Table 1.
    """
    runs = frame[frame["experiment"].isin(["table1", "reference"]) & (frame["profile"] == profile)
                 & (frame["model"] == "odenet")]
    runs = latest_cells(runs)
    runs = runs[runs["status"] == "ok"]
    if runs.empty or not (runs["experiment"] == "reference").any():
        return ("(no reference rows: noderun train model=odenet model.time_channel=concat "
                "solver.backend=torchdiffeq experiment_name=reference)")
    runs = runs.assign(variant=[_variant(c) for c in runs["config"]])
    rows = []
    for (backend, channel), part in sorted(runs.groupby("variant"), key=lambda item: item[0] != ("native", "exact")):
        rows.append([backend, channel, mean_std(part["test_error"], 2),
                     mean_std(part["nfe_forward"], 1) + " / " + mean_std(part["nfe_backward"], 1),
                     mean_std(part["memory_mib"], 2), ", ".join(str(int(s)) for s in sorted(part["seed"]))])
    note = ("Training time is compared in `make bench` (interleaved in one process); the s / iter of "
            "separate runs depend on what else shared the machine.")
    return markdown(rows, ["solver backend", "time channel", "Test error %", "NFE fwd / bwd", "Memory MiB",
                           "seeds"]) + "\n\n" + note


# The training settings a fast-profile ablation row may change, as they appear in its config.
SETTINGS = (("epochs", "epochs"), ("lr_schedule", "schedule"), ("warmup_epochs", "warm-up"),
            ("nesterov", "Nesterov"), ("weight_decay", "weight decay"), ("label_smoothing", "label smoothing"),
            ("ema_decay", "EMA"))


def render_settings(frame: pd.DataFrame, profile: str) -> str:
    """Every finished run of Table 1 and of `experiment_name=<profile>_ablation` on this profile, with its
    training settings: what each setting does to the test error and the minutes of training."""
    # one row per distinct configuration: ablation rows differ only in settings that CELL_KEY does not name
    runs = latest_per_cell(frame[frame["experiment"].isin(["table1", f"{profile}_ablation"])
                                 & (frame["profile"] == profile)], ["experiment", "config"])
    runs = runs[runs["status"] == "ok"]
    if runs.empty or not (runs["experiment"] == f"{profile}_ablation").any():
        return f"(no rows of experiment_name={profile}_ablation)"
    rows = []
    for _, r in runs.sort_values(["model", "experiment", "timestamp"]).iterrows():
        config = json.loads(r["config"])
        settings = [str(config["profile"].get(key)) for key, _ in SETTINGS]
        rows.append([LABELS.get(r["model"], r["model"]), r["experiment"], str(r.get("precision") or "32"), *settings,
                     f"{r['test_error']:.2f}", f"{r['train_time_s'] / 60:.1f}",
                     f"{r['nfe_forward']:.1f} / {r['nfe_backward']:.1f}", str(int(r["seed"]))])
    return markdown(rows, ["Model", "experiment", "precision", *[label for _, label in SETTINGS], "Test error %",
                           "train min", "NFE fwd / bwd (last 10 %)", "seed"])


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    sections = [("Table 1 (MNIST)", render_table1(rows, profile))]
    settings = render_settings(rows, profile)
    if not settings.startswith("("):
        sections.append(("Table 1 settings: test error and minutes", settings))
    depth = render_depth(rows, profile)
    if not depth.startswith("("):
        sections.append(("Memory and time against depth", depth))
    backends = render_backends(rows, profile)
    if not backends.startswith("("):
        sections.append(("ODE-Net against the reference implementation", backends))
    return sections



# ------------------------------------------------------------------------ figures


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
        for col, models in enumerate((("resnet",), ("rknet", "odenet", "anode"))):
            ax = axes[row][col]
            for model in models:
                part = data[data["model"] == model]
                x = part["n_blocks"] if model == "resnet" else part["nfe_forward"]
                if part.empty:
                    continue
                ax.scatter(x, part[column], color=COLORS[model], label=LABELS[model], zorder=3)
                slope, intercept = fit_line(x, part[column])
                if math.isfinite(slope):
                    grid = np.linspace(np.nanmin(x), np.nanmax(x), 50)
                    ax.plot(grid, slope * grid + intercept, color=COLORS[model], lw=1, ls="--", alpha=0.8)
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


def figures(results_dir: Path) -> list[Path]:
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
    for profile, rows in sorted(profile_rows(results_dir, "depth", CELL_KEY).items()):
        written.append(plot_depth(rows, out / f"depth_{profile}.png",
                                  f"Memory and time against depth (profile={profile})"))
    return written


