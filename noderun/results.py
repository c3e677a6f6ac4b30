"""Result CSVs: the common columns, writing rows, reading them back (noderun.report renders them).

Writing: every run appends exactly one row to ``<results_dir>/<experiment>.csv``. The
append takes an exclusive ``fcntl`` lock on the file, writes the header if the file is
empty, writes the whole row with a single ``write`` call and fsyncs, so processes of a
parallel multirun never interleave or tear rows. A file's columns are ``COMMON_COLUMNS`` (the
fields of ``RunRecord``) followed by its task's own columns (``Task.columns``); a file with
another header is never appended to (the run says so and stops).

Reading: ``read_results`` loads every CSV under a folder with pandas, skipping (with a
warning naming file and line) rows that do not parse. This module imports neither the
tasks nor any plotting code.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import pandas as pd

@dataclass
class RunRecord:
    """The columns every result row starts with, whatever the task, each with one definition.

    noderun.runner fills them the same way for every task; the task's `describe` fills the ones
    that name its cell (model, dataset, epochs and, where an ODE is solved, the solver's).
    """

    run_id: str = ""  # unique id of the run (timestamp + random suffix), kept across resumes
    timestamp: str = ""  # ISO 8601 UTC time the row was written
    experiment: str = ""  # the CSV's name: table1, depth, ...
    task: str = ""  # classification, figure3, spirals, flows (noderun.tasks)
    status: str = ""  # ok, or failed: <reason>
    model: Optional[str] = None
    dataset: Optional[str] = None
    profile: str = ""
    seed: int = 0
    epochs: Optional[int] = None  # training epochs; empty for tasks that count iterations
    params: Optional[int] = None  # trainable parameters
    method: Optional[str] = None  # ODE solver method; empty for models without an ODE
    rtol: Optional[float] = None
    atol: Optional[float] = None
    adjoint: Optional[bool] = None  # True: adjoint gradients; False: backprop through the solver
    # Function evaluations of the ODE per training iteration, forward pass, mean over the last 10 % of
    # training iterations (at least one): the trained model's count, which grows during training.
    # 0 for models without an ODE. An evaluation-only task (figure3): mean per evaluated batch.
    nfe_forward: Optional[float] = None
    nfe_backward: Optional[float] = None  # ... backward pass (adjoint solve); 0 when gradients are backpropagated
    # regularizer=rnode (noderun.models.regularization): "rnode" with its weights; "none" without
    regularizer: Optional[str] = None
    # its terms per training iteration (batch means, summed over the iteration's solves), mean over the last
    # 10 % of training iterations as the NFE: ∫‖f‖² dt and the Hutchinson estimate of ∫‖∂f/∂z‖²_F dt
    reg_kinetic: Optional[float] = None
    reg_jacobian: Optional[float] = None
    memory_mib: Optional[float] = None  # bytes saved for backward in the first training step (saved_tensors_hooks), MiB
    cuda_peak_mib: Optional[float] = None  # torch.cuda.max_memory_allocated over that step, MiB; empty on CPU
    # median seconds of a training iteration (forward, backward, update; device synchronised),
    # over every iteration but the first, which also pays for one-time set-up
    time_per_iter_s: Optional[float] = None
    train_time_s: Optional[float] = None  # seconds of all training steps (evaluation and checkpoints not included)
    device: str = ""  # cpu, cuda
    device_name: str = ""  # CPU model (with torch's threads) or GPU name
    precision: str = ""  # 32 (float32, no TF32) or bf16-mixed
    torch_version: str = ""
    git_commit: str = ""  # the commit the run started from; +dirty with local changes
    config: str = ""  # the resolved config, JSON


COMMON_COLUMNS = [f.name for f in fields(RunRecord)]
NUMERIC_COMMON = [f.name for f in fields(RunRecord) if f.type in ("int", "float", "Optional[int]", "Optional[float]")]


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
        if header is None or header[: len(COMMON_COLUMNS)] != COMMON_COLUMNS:
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


def read_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All rows of all result CSVs under results_dir, numeric columns converted.

    Numeric: the numeric common columns, and every other column whose values all read as numbers
    (a task's own columns; text columns such as `config` or `reference` stay text)."""
    folder = Path(results_dir)
    frames = [read_csv_checked(p) for p in sorted(folder.glob("*.csv"))] if folder.exists() else []
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COMMON_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    for column in frame.columns:
        if column in NUMERIC_COMMON:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        elif column not in COMMON_COLUMNS:
            text = frame[column].replace("", None)
            converted = pd.to_numeric(text, errors="coerce")
            if converted.notna().sum() == text.notna().sum():
                frame[column] = converted
    return frame
