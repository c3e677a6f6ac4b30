"""Aggregating result rows for the tables: the latest row of a cell, mean ± std over seeds, fits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate


def latest_per_cell(frame: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """The most recent row (by timestamp) of every cell: a rerun of a cell, with the same or other
    settings, replaces the earlier row in the tables and is never counted twice in a mean.

    cell: the columns naming a table cell and a seed (e.g. model, target, width, seed, profile).
    """
    ordered = frame.sort_values("timestamp", kind="stable") if "timestamp" in frame else frame
    return ordered.drop_duplicates(subset=[c for c in cell if c in ordered], keep="last")


def is_regularised(frame: pd.DataFrame) -> pd.Series:
    """Rows of runs trained with a regularizer (the `regularizer` column other than none; rows written before
    the column existed count as none)."""
    if "regularizer" not in frame:
        return pd.Series(False, index=frame.index)
    label = frame["regularizer"].astype(str).str.strip()
    return ~label.isin(("none", "", "nan", "None"))


def unregularised(paths) -> list:
    """The saved files of unregularised runs, sorted: a regularised run's names carry '_rnode'
    (noderun.models.regularization.artifact_suffix), and the paper's figures are drawn without them."""
    return sorted(p for p in paths if "_rnode" not in p.name)


def finished(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def mean_std(values: pd.Series, digits: int = 0, *, fmt: str | None = None, std_fmt: str | None = None) -> str:
    """'m ± s' over seeds (sample std), the single value for one seed, '-' for none.

    digits: decimals of both; or fmt / std_fmt: format specs of the mean (and single value) and of
    the std (e.g. ".4g" and ".2g" for values spanning orders of magnitude)."""
    fmt = fmt or f".{digits}f"
    std_fmt = std_fmt or fmt
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:{fmt}}"
    return f"{values.mean():{fmt}} ± {values.std(ddof=1):{std_fmt}}"


def fit_line(x, y) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line of y on x; NaNs with fewer than two distinct x.

    A slope that is zero up to rounding (e.g. the ODE-Net's memory against NFE) is returned as 0.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    if abs(slope) < 1e-12 * max(1.0, float(np.abs(y[ok]).max())):
        slope = 0.0
    return float(slope), float(intercept)


def is_true(series: pd.Series) -> pd.Series:
    """A boolean column as read from CSV text (True, true, 1)."""
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def markdown(rows: list[list], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def profile_rows(results_dir, experiment: str, cell: list[str]) -> dict[str, pd.DataFrame]:
    """The finished rows of one experiment per profile, the latest of each cell (a rerun replaces)."""
    from noderun.results import read_results

    frame = read_results(results_dir)
    if frame.empty:
        return {}
    frame = frame[~is_regularised(frame)]
    rows = finished(latest_per_cell(frame[frame["experiment"] == experiment], cell))
    return {str(profile): part for profile, part in rows.groupby("profile") if len(part)}
