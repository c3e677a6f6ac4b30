"""Result CSVs in, the paper's tables out.

Writing: every run appends exactly one row to ``<results_dir>/<experiment>.csv``. The
append takes an exclusive ``fcntl`` lock on the file, writes the header if the file is
empty, writes the whole row with a single ``write`` call and fsyncs, so processes of a
parallel multirun never interleave or tear rows. Columns are the fixed ``COLUMNS``
list; a file with another header is never appended to (the run says so and stops).

Reading: ``read_results`` loads every CSV under a folder with pandas, skipping (with a
warning naming file and line) rows that do not parse. ``render_table1`` and
``render_depth`` aggregate over seeds and render markdown with tabulate.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

COLUMNS = [
    "run_id",  # unique id of the run (timestamp + random suffix)
    "timestamp",  # ISO 8601 UTC time the row was written
    "experiment",  # the CSV's name: table1, depth, ...
    "status",  # ok, or failed: <reason>
    "model",
    "dataset",
    "profile",
    "seed",
    "epochs",
    "train_size",  # training images used per epoch
    "test_error",  # % on the test set after the last epoch
    "train_error",  # % on the augmented training batches of the last epoch
    "test_loss",
    "params",  # trainable parameters
    "n_blocks",  # ResNet residual blocks (depth L); empty for other models
    "method",  # ODE solver method; empty for models without an ODE block
    "rtol",
    "atol",
    "adjoint",  # True: adjoint gradients; False: backprop through the solver
    "nfe_forward",  # function evaluations per training iteration, forward pass, mean over the last epoch
    "nfe_backward",  # ... backward pass (adjoint solve); 0 when gradients are backpropagated
    "memory_mib",  # bytes saved for backward in one training step (saved_tensors_hooks), MiB
    "cuda_peak_mib",  # torch.cuda.max_memory_allocated over that step, MiB; empty on CPU
    "time_per_iter_s",  # median seconds per training iteration (forward, backward, update)
    "epoch_time_s",  # seconds of the last training epoch
    "train_time_s",  # seconds of all training epochs
    "device",  # cpu, cuda
    "device_name",  # CPU model or GPU name
    "torch_version",
    "git_commit",
    "config",  # the resolved config, JSON
]

# Table 1 of Chen et al. (2018), shown beside our measurements, never mixed with them.
PAPER_TABLE1 = {
    "mlp": {"label": "1-Layer MLP", "test_error": 1.60, "params_m": 0.24, "memory": "-", "time": "-"},
    "resnet": {"label": "ResNet", "test_error": 0.41, "params_m": 0.60, "memory": "O(L)", "time": "O(L)"},
    "rknet": {"label": "RK-Net", "test_error": 0.47, "params_m": 0.22, "memory": "O(L~)", "time": "O(L~)"},
    "odenet": {"label": "ODE-Net", "test_error": 0.42, "params_m": 0.22, "memory": "O(1)", "time": "O(L~)"},
}


class ResultsError(RuntimeError):
    """A result file cannot be written or read as asked."""


# ------------------------------------------------------------------------- writing


def format_row(row: dict) -> str:
    """One CSV line for `row` in COLUMNS order; unknown keys raise (a typo must not vanish)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ResultsError(f"unknown result columns {sorted(unknown)}; valid columns: {COLUMNS}")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return buffer.getvalue()


def _header_line() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(COLUMNS)
    return buffer.getvalue()


def check_writable(results_dir: str | os.PathLike) -> None:
    """Fail before any work if results_dir cannot be created or written."""
    folder = Path(results_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsError(f"results_dir={folder} cannot be created: {error.strerror}; choose another results_dir") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResultsError(f"results_dir={folder} is not writable; choose another results_dir")


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row under an exclusive lock: whole line, one write, fsync."""
    path = Path(path)
    line = format_row(row).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        header = _header_line().encode()
        if size == 0:
            line = header + line
        else:
            first = os.pread(fd, len(header), 0)
            if first != header:
                raise ResultsError(
                    f"{path} has a different header than this version of noderun writes; "
                    "move it aside or choose another results_dir"
                )
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock


# ------------------------------------------------------------------------- reading


def read_csv_checked(path: Path) -> pd.DataFrame:
    """Read one result CSV as strings, skipping (with a warning naming file and line) any row
    that is not a complete noderun row: wrong field count, torn by a crash, or foreign."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != COLUMNS:
            warnings.warn(f"{path}: not a noderun result file (unexpected header); skipped")
            return pd.DataFrame(columns=COLUMNS)
        good = []
        for record in reader:
            if len(record) != len(COLUMNS):
                warnings.warn(f"{path}:{reader.line_num}: skipping a malformed row "
                              f"({len(record)} fields, expected {len(COLUMNS)})")
                continue
            good.append(record)
    return pd.DataFrame(good, columns=COLUMNS, dtype=str)


def read_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All rows of all result CSVs under results_dir, numeric columns converted."""
    folder = Path(results_dir)
    frames = [read_csv_checked(p) for p in sorted(folder.glob("*.csv"))] if folder.exists() else []
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    numeric = [
        "seed", "epochs", "train_size", "test_error", "train_error", "test_loss", "params", "n_blocks",
        "rtol", "atol", "nfe_forward", "nfe_backward", "memory_mib", "cuda_peak_mib",
        "time_per_iter_s", "epoch_time_s", "train_time_s",
    ]
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


# ------------------------------------------------------------------------- rendering


def _mean_std(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def render_table1(frame: pd.DataFrame, profile: str) -> str:
    """Table 1 (MNIST) for one profile: our measurements beside the paper's values."""
    rows = []
    ok = frame[(frame["experiment"] == "table1") & (frame["profile"] == profile)]
    for model, paper in PAPER_TABLE1.items():
        runs = ok[ok["model"] == model]
        finished = runs[runs["status"] == "ok"]
        failed = runs[runs["status"] != "ok"]
        if finished.empty:
            status = "failed" if not failed.empty else "not run"
            rows.append([paper["label"], status, f"{paper['test_error']:.2f}", "-", f"{paper['params_m']:.2f}",
                         "-", paper["memory"], "-", "-", paper["time"], "-"])
            continue
        rows.append([
            paper["label"],
            _mean_std(finished["test_error"], 2),
            f"{paper['test_error']:.2f}",
            f"{finished['params'].iloc[0] / 1e6:.3f}",
            f"{paper['params_m']:.2f}",
            _mean_std(finished["memory_mib"], 2),
            paper["memory"],
            _mean_std(finished["time_per_iter_s"], 3),
            _mean_std(finished["nfe_forward"], 1) + " / " + _mean_std(finished["nfe_backward"], 1),
            paper["time"],
            str(len(finished)),
        ])
    headers = ["Model", "Test error %", "paper", "Params (M)", "paper", "Memory MiB", "paper",
               "s / iter", "NFE fwd / bwd", "paper time", "seeds"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _fit_slope(x: pd.Series, y: pd.Series) -> float:
    mask = x.notna() & y.notna()
    if mask.sum() < 2 or x[mask].nunique() < 2:
        return math.nan
    slope, _ = np.polyfit(x[mask].astype(float), y[mask].astype(float), 1)
    return float(slope)


def render_depth(frame: pd.DataFrame, profile: str) -> str:
    """Memory and time against depth L (ResNet) or evaluations L~ (RK-Net, ODE-Net), with fitted slopes."""
    runs = frame[(frame["experiment"] == "depth") & (frame["profile"] == profile) & (frame["status"] == "ok")].copy()
    if runs.empty:
        return "(depth experiment not run)"
    runs["depth"] = np.where(runs["model"] == "resnet", runs["n_blocks"], runs["nfe_forward"])
    rows, slopes = [], []
    for model in ("resnet", "rknet", "odenet"):
        part = runs[runs["model"] == model].sort_values("depth")
        if part.empty:
            continue
        for _, r in part.iterrows():
            setting = f"L={int(r['n_blocks'])}" if model == "resnet" else f"tol={r['rtol']:.0e}"
            rows.append([PAPER_TABLE1[model]["label"], setting, f"{r['depth']:.1f}", f"{r['nfe_backward']:.1f}",
                         f"{r['memory_mib']:.2f}", f"{r['time_per_iter_s']:.3f}"])
        mem_slope = _fit_slope(part["depth"], part["memory_mib"]) * 1024 * 1024
        time_slope = _fit_slope(part["depth"], part["time_per_iter_s"])
        spread = (part["memory_mib"].max() - part["memory_mib"].min()) / part["memory_mib"].mean() * 100
        slopes.append([PAPER_TABLE1[model]["label"], "block" if model == "resnet" else "evaluation",
                       f"{mem_slope:,.0f}", f"{spread:.1f}", f"{time_slope:.4f}"])
    table = tabulate(rows, headers=["Model", "setting", "L or L~ (fwd NFE)", "bwd NFE", "Memory MiB", "s / iter"],
                     tablefmt="github", disable_numparse=True)
    fit = tabulate(slopes, headers=["Model", "per", "bytes per unit (fit)", "memory spread %", "s per unit (fit)"],
                   tablefmt="github", disable_numparse=True)
    return table + "\n\n" + fit


def render_all(frame: pd.DataFrame, profile: str | None = None) -> str:
    """Every table, one section per profile present (or only `profile`)."""
    profiles = [profile] if profile else sorted(p for p in frame["profile"].dropna().unique() if p)
    if not profiles:
        return "No results yet: run `noderun train` or `make reproduce`.\n\n" + render_table1(frame, "quick")
    sections = []
    for name in profiles:
        machines = sorted(frame[frame["profile"] == name]["device_name"].dropna().unique())
        sections.append(f"## Table 1 (MNIST), profile={name}\n\nMeasured on: {', '.join(machines) or '-'}\n\n"
                        + render_table1(frame, name))
        depth = render_depth(frame, name)
        if not depth.startswith("("):
            sections.append(f"## Memory and time against depth, profile={name}\n\n{depth}")
    return "\n\n".join(sections) + "\n"
