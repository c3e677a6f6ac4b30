"""The paper's tables and figures from result rows: what `noderun table` and `noderun plot` print and draw.

One module per experiment family, each with `TASK` (the `task` column of its rows),
`render(rows, profile) -> [(title, markdown)]` and `figures(results_dir) -> [PNG paths]`; a
family whose tables also draw on other profiles' rows says which with `rows_for(rows, profile)`.
Reporting reads result CSVs (noderun.results) and the files runs saved; it never imports
the training code, and matplotlib only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from noderun.report import crossing, figure3, flows, regularization, table1, table2
from noderun.report.aggregate import is_regularised

SECTIONS = (table1, figure3, table2, flows, crossing)  # in the order of the paper, then beyond it


def render_all(frame: pd.DataFrame, profile: str | None = None) -> str:
    """Every family's tables, one section per profile present (or only `profile`).

    With no results at all, Table 1 is shown with every row 'not run'. The paper's tables take the
    unregularised runs only; runs with a regularizer get their own section, beside the unregularised
    runs of the same settings (noderun.report.regularization).
    """
    with_regularizer = is_regularised(frame)
    regularised, frame = frame[with_regularizer], frame[~with_regularizer]
    everything = pd.concat([frame, regularised])
    profiles = [profile] if profile else sorted(p for p in everything["profile"].dropna().unique() if p)
    if everything.empty or not profiles:
        title, text = table1.render(frame, profile or "quick")[0]
        return f"No results yet: run `noderun train` or `make reproduce`.\n\n## {title}\n\n{text}\n"
    sections = []
    for name in profiles:
        rows = frame[frame["profile"] == name]
        machines = ", ".join(sorted(rows["device_name"].dropna().unique())) or "-"
        for family in SECTIONS:
            family_rows = rows[rows["task"] == family.TASK]
            if hasattr(family, "rows_for"):  # a family whose tables also draw on another profile's rows
                family_rows = family.rows_for(frame[frame["task"] == family.TASK], name)
            if family_rows.empty:
                continue
            for title, text in family.render(family_rows, name):
                sections.append(f"## {title}, profile={name}\n\nMeasured on: {machines}\n\n{text}")
        if len(regularised):
            part = pd.concat([rows, regularised[regularised["profile"] == name]])
            for title, text in regularization.render(part, name):
                sections.append(f"## {title}, profile={name}\n\n{text}")
    return "\n\n".join(sections) + "\n"


def write_figures(results_dir: str | Path) -> list[Path]:
    """Every family's figures (PNG) under results_dir/figures, from what is there; the paths written."""
    written = []
    for family in SECTIONS:
        written += family.figures(Path(results_dir))
    return written
