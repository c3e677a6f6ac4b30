"""Runs trained with a regularizer (regularizer=rnode) beside the unregularised runs of the same settings.

A cell is every setting of a run but the regularizer, the seed and the keys that cannot change a result
(results_dir, logger, ...) and the experiment name, so `experiment_name=table1_rnode` runs compare with
Table 1's. Each cell lists its unregularised runs (when there are any) and each regularizer setting with
the task's own score, the NFE at the end of training, the training minutes, the regularizer's terms and,
against the unregularised runs of the same seeds on the same machine, the ratios of NFE and minutes.
Classification runs with a validation set (dataset.val_size > 0: a weight sweep) score by their
validation error, so that a weight is chosen without the test set. The paper's tables
never include regularised rows (noderun.report.render_all).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from noderun.checkpoint import drop_non_identity
from noderun.report.aggregate import finished, is_regularised, latest_per_cell, markdown, mean_std

# Keys of `config` that do not name a cell here: the regularizer, the seed, the experiment name and the keys
# that cannot change a result (those a run's key leaves out).
NOT_THE_CELL = ("regularizer", "seed", "experiment_name")
# The score of each task's rows: (column, label); flows rows score by their kind.
SCORES = {"classification": ("test_error", "test error %"), "spirals": ("test_rmse", "test RMSE"),
          "crossing": ("test_loss", "test loss"), "flows": (None, "loss / test NLL")}


def recorded_config(config_text) -> dict | None:
    """A row's recorded config as a dict (None when it is missing or does not parse)."""
    try:
        config = json.loads(config_text)
    except (TypeError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def cell_key(config_text) -> str:
    """The config of a row as JSON without the keys that NOT_THE_CELL names ('' when it does not parse)."""
    config = recorded_config(config_text)
    if config is None:
        return ""
    for key in NOT_THE_CELL:
        config.pop(key, None)
    return json.dumps(drop_non_identity(config), sort_keys=True)


def validates(row) -> bool:
    """A classification row trained with a validation set held out (a sweep: it scores on that set)."""
    value = pd.to_numeric(row.get("val_size"), errors="coerce")
    return row["task"] == "classification" and value == value and value > 0


def score_of(row) -> float:
    column = SCORES.get(row["task"], (None, ""))[0]
    if row["task"] == "flows":
        column = "loss" if row.get("kind") == "density" else "test_nll"
    if validates(row):
        column = "val_error"
    value = row.get(column) if column else None
    return float(value) if value is not None and value == value else np.nan


def describe(row) -> str:
    """The settings that tell the cells of one table apart, as a reader names them."""
    parts = [str(row["model"]), str(row.get("dataset") or "")]
    if validates(row):
        parts.append(f"validation {int(float(row['val_size']))} images")
    for column in ("target", "width", "n_obs"):
        value = row.get(column)
        if value is not None and value == value and str(value) != "":
            parts.append(f"{column} {value:g}" if isinstance(value, float) else f"{column} {value}")
    rtol, atol = row.get("rtol"), row.get("atol")
    if rtol is not None and rtol == rtol and str(rtol) != "":  # cells of one model can differ only in tolerance
        parts.append(f"tol {float(rtol):g}" if rtol == atol else f"rtol {float(rtol):g} atol {float(atol):g}")
    solver = (recorded_config(row.get("config")) or {}).get("solver")
    first_step = solver.get("first_step") if isinstance(solver, dict) else None
    if first_step is not None:
        parts.append(f"first step {float(first_step):g}")
    return ", ".join(p for p in parts if p)


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    """One table of every cell that has regularised runs; [] when none has."""
    rows = finished(rows).copy()
    if rows.empty or not is_regularised(rows).any():
        return []
    rows["cell"] = [cell_key(text) for text in rows["config"]]
    rows["regularizer"] = rows["regularizer"].fillna("none").astype(str).replace({"": "none", "nan": "none"})
    rows = latest_per_cell(rows, ["cell", "regularizer", "seed"])
    rows["score"] = [score_of(row) for _, row in rows.iterrows()]
    lines = []
    for cell in rows.loc[is_regularised(rows), "cell"].unique():
        part = rows[rows["cell"] == cell]
        plain = part[part["regularizer"] == "none"]
        for setting in ["none", *sorted(set(part["regularizer"]) - {"none"})]:
            runs = part[part["regularizer"] == setting]
            if runs.empty:
                continue
            # Seeds whose latest runs of both settings ran on the same machine: minutes compare only there.
            shared = sorted(set(zip(runs["seed"], runs["device_name"])) & set(zip(plain["seed"], plain["device_name"])))
            ratios = ["-", "-"]
            if setting != "none" and shared:
                mine = runs.set_index(["seed", "device_name"]).loc[shared]
                base = plain.set_index(["seed", "device_name"]).loc[shared]
                ratios = [f"{mine[c].astype(float).mean() / base[c].astype(float).mean():.2f}"
                          for c in ("nfe_forward", "train_time_s")]
            first = runs.iloc[0]
            label = "validation error %" if validates(first) else SCORES.get(first["task"], (None, "score"))[1]
            lines.append([describe(first), setting, label,
                          mean_std(runs["score"], 4),
                          f"{mean_std(runs['nfe_forward'].astype(float), 1)} / "
                          f"{mean_std(runs['nfe_backward'].astype(float), 1)}",
                          mean_std(runs["train_time_s"].astype(float) / 60, 1),
                          mean_std(pd.to_numeric(runs["reg_kinetic"], errors="coerce"), fmt=".3g"),
                          mean_std(pd.to_numeric(runs["reg_jacobian"], errors="coerce"), fmt=".3g"),
                          *ratios, ",".join(str(int(s)) for s in sorted(runs["seed"])),
                          "; ".join(sorted(set(runs["device_name"].astype(str))))])
    table = markdown(lines, ["Cell", "regularizer", "score", "value", "NFE fwd / bwd", "train min",
                             "∫‖f‖² dt", "∫‖∂f/∂z‖²_F dt", "NFE fwd ÷ none", "minutes ÷ none", "seeds", "machine"])
    note = ("Each cell: every setting of its runs but the regularizer and the seed (and the experiment name). "
            "NFE at the end of training (mean of its last 10 % of iterations); the ratios compare the means "
            "over the seeds both settings ran on the same machine (the rows' device_name); '-' where none did.")
    return [("Regularisation (RNODE, Finlay et al. 2020) against none", f"{table}\n\n{note}")]
