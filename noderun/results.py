"""Result CSVs in, the paper's tables out.

Writing: every run appends exactly one row to ``<results_dir>/<experiment>.csv``. The
append takes an exclusive ``fcntl`` lock on the file, writes the header if the file is
empty, writes the whole row with a single ``write`` call and fsyncs, so processes of a
parallel multirun never interleave or tear rows. A file's columns are ``COMMON_COLUMNS``
followed by its task's own columns (``noderun.tasks``); a file with another header is
never appended to (the run says so and stops).

Reading: ``read_results`` loads every CSV under a folder with pandas, skipping (with a
warning naming file and line) rows that do not parse. ``render_all`` asks each task to
render its tables (aggregated over seeds, markdown via tabulate) for each profile.
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

# Columns every result file starts with, whatever the task.
COMMON_COLUMNS = [
    "run_id",  # unique id of the run (timestamp + random suffix)
    "timestamp",  # ISO 8601 UTC time the row was written
    "experiment",  # the CSV's name: table1, depth, ...
    "task",  # classification, ... (noderun.tasks)
    "status",  # ok, or failed: <reason>
    "model",
    "dataset",
    "profile",
    "seed",
    "epochs",
    "params",  # trainable parameters
    "method",  # ODE solver method; empty for models without an ODE block
    "rtol",
    "atol",
    "adjoint",  # True: adjoint gradients; False: backprop through the solver
    "nfe_forward",  # function evaluations per training iteration, forward pass, mean over the last epoch
    "nfe_backward",  # ... backward pass (adjoint solve); 0 when gradients are backpropagated
    "memory_mib",  # bytes saved for backward in one training step (saved_tensors_hooks), MiB
    "cuda_peak_mib",  # torch.cuda.max_memory_allocated over that step, MiB; empty on CPU
    "time_per_iter_s",  # median seconds per training iteration (forward, backward, update)
    "train_time_s",  # seconds of all training
    "device",  # cpu, cuda
    "device_name",  # CPU model or GPU name
    "torch_version",
    "git_commit",
    "config",  # the resolved config, JSON
]

NUMERIC_COMMON = ["seed", "epochs", "params", "rtol", "atol", "nfe_forward", "nfe_backward", "memory_mib",
                  "cuda_peak_mib", "time_per_iter_s", "train_time_s"]


class ResultsError(RuntimeError):
    """A result file cannot be written or read as asked."""


# ------------------------------------------------------------------------- writing


def _csv_line(values: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def format_row(row: dict, columns: list[str]) -> str:
    """One CSV line for `row` in `columns` order; unknown keys raise (a typo must not vanish)."""
    unknown = set(row) - set(columns)
    if unknown:
        raise ResultsError(f"unknown result columns {sorted(unknown)}; valid columns: {columns}")
    return _csv_line(["" if row.get(c) is None else row.get(c) for c in columns])


def check_writable(results_dir: str | os.PathLike) -> None:
    """Fail before any work if results_dir cannot be created or written."""
    folder = Path(results_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsError(f"results_dir={folder} cannot be created: {error.strerror}; choose another results_dir") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResultsError(f"results_dir={folder} is not writable; choose another results_dir")


def append_row(path: str | os.PathLike, row: dict, columns: list[str], unique_key: str | None = None) -> bool:
    """Append one row under an exclusive lock: whole line, one write, fsync.

    unique_key: a column (run_id) whose value must not be in the file yet; if it is, nothing is
    appended. Returns whether the row was appended.
    """
    path = Path(path)
    line = format_row(row, columns).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        header = _csv_line(columns).encode()
        if size == 0:
            line = header + line
        else:
            first = os.pread(fd, len(header), 0)
            if first != header:
                raise ResultsError(
                    f"{path} has a different header than this version of noderun writes; "
                    "move it aside or choose another results_dir"
                )
            if unique_key is not None and _has_value(fd, columns.index(unique_key), str(row[unique_key])):
                return False
        os.write(fd, line)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # also releases the lock


def _has_value(fd: int, column: int, value: str) -> bool:
    """Whether any complete row of the open CSV has `value` in `column`."""
    content = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    try:
        return any(len(record) > column and record[column] == value for record in csv.reader(io.StringIO(content)))
    except csv.Error:  # a damaged file: fall back to a plain search (a false "present" only skips a duplicate)
        return value in content


# ------------------------------------------------------------------------- reading


def read_csv_checked(path: Path) -> pd.DataFrame:
    """Read one result CSV as strings, skipping (with a warning naming file and line) any row
    that is not a complete noderun row: wrong field count, torn by a crash, or foreign."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header not in [COMMON_COLUMNS + list(task.columns) for task in _tasks().values()]:
            warnings.warn(f"{path}: not a noderun result file (unexpected header); skipped")
            return pd.DataFrame(columns=COMMON_COLUMNS)
        good = []
        for record in reader:
            if len(record) != len(header):
                warnings.warn(f"{path}:{reader.line_num}: skipping a malformed row "
                              f"({len(record)} fields, expected {len(header)})")
                continue
            good.append(record)
    return pd.DataFrame(good, columns=header, dtype=str)


def _tasks() -> dict:
    from noderun.tasks import TASKS  # tasks import this module: resolve the registry lazily

    return TASKS


def read_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All rows of all result CSVs under results_dir, numeric columns converted."""
    folder = Path(results_dir)
    frames = [read_csv_checked(p) for p in sorted(folder.glob("*.csv"))] if folder.exists() else []
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COMMON_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    numeric = NUMERIC_COMMON + [c for task in _tasks().values() for c in task.numeric_columns]
    for column in numeric:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


# ------------------------------------------------------------------------- rendering


def latest_per_cell(frame: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """The most recent row (by timestamp) of every cell: a rerun of a cell, with the same or other
    settings, replaces the earlier row in the tables and is never counted twice in a mean.

    cell: the columns naming a table cell and a seed (e.g. model, target, width, seed, profile).
    """
    ordered = frame.sort_values("timestamp", kind="stable") if "timestamp" in frame else frame
    return ordered.drop_duplicates(subset=[c for c in cell if c in ordered], keep="last")


def mean_std(values: pd.Series, digits: int) -> str:
    """'m ± s' over seeds (sample std), the single value for one seed, '-' for none."""
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def fit_slope(x: pd.Series, y: pd.Series) -> float:
    """Least-squares slope of y against x; NaN with fewer than two distinct x."""
    mask = x.notna() & y.notna()
    if mask.sum() < 2 or x[mask].nunique() < 2:
        return math.nan
    slope, _ = np.polyfit(x[mask].astype(float), y[mask].astype(float), 1)
    return float(slope)


def markdown(rows: list[list], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def render_all(frame: pd.DataFrame, profile: str | None = None) -> str:
    """Every task's tables, one section per profile present (or only `profile`).

    With no results at all, Table 1 is shown with every row 'not run'.
    """
    tasks = _tasks()
    profiles = [profile] if profile else sorted(p for p in frame["profile"].dropna().unique() if p)
    if frame.empty or not profiles:
        title, text = tasks["classification"].render(frame, profile or "quick")[0]
        return f"No results yet: run `noderun train` or `make reproduce`.\n\n## {title}\n\n{text}\n"
    sections = []
    for name in profiles:
        rows = frame[frame["profile"] == name]
        machines = ", ".join(sorted(rows["device_name"].dropna().unique())) or "-"
        for task_name, task in tasks.items():
            task_rows = rows[rows["task"] == task_name]
            if task_rows.empty:
                continue
            for title, text in task.render(task_rows, name):
                sections.append(f"## {title}, profile={name}\n\nMeasured on: {machines}\n\n{text}")
    return "\n\n".join(sections) + "\n"
