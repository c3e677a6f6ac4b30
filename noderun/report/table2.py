"""Table 2 (latent ODE against RNN on spirals), its reference points and figures, from result rows
and saved predictions.

Three trained methods, each its own row: the RNN (the paper's baseline), the latent ODE trained
on the ELBO alone (the paper's method, `model.consistency=0`) and the latent ODE with noderun's
suffix-consistency term (one row per weight). Beside them, reference forecasts computed here on
the same test trajectories by the same RMSE code (noderun.data.spiral_references): an oracle that
knows the spiral family, the last observation held, and a straight line. The normalised column
divides each RMSE by the RMS of the targets, which makes numbers comparable across data scales;
the paper's absolute numbers come from a setup it does not fully state (docs/experiments/spirals.md).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from noderun.config import SpiralsDatasetConfig
from noderun.report.aggregate import latest_per_cell, markdown, mean_std
from noderun.report.plotting import pyplot, save_figure

TASK = "spirals"

# Table 2 of Chen et al. (2018): predictive RMSE on the test set, shown beside ours.
PAPER_TABLE2 = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode_elbo": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}
N_OBS = (30, 50, 100)
MAIN_NOISE = SpiralsDatasetConfig.noise_std  # the dataset config's noise: the main table's
MAIN_EXPERIMENT = "table2"
ABLATION_EXPERIMENT = "table2_ablation"
SPREAD_N_OBS = 50  # the column whose spread is split into the data's and the training's
# `variant` (with_methods) tells the ELBO-only latent ODE from the same with two-layer dynamics
CELL = ["experiment", "variant", "model", "consistency", "noise_std", "n_obs", "seed", "data_seed", "train_coverage", "n_val",
        "profile"]
REFERENCES = (
    ("oracle", "Oracle: spiral family known, start and direction fitted (reference)"),
    ("last", "Last observation held (reference)"),
    ("linear", "Straight line through the last 20% of observations (reference)"),
)
# Columns of the current protocol with the values rows written before they existed stand for.
PROTOCOL_DEFAULTS = {"train_coverage": "same", "n_val": 0, "data_seed": 0, "restarts": 1, "val_loss": np.nan,
                     "best_iteration": np.nan, "test_frac_above_1": np.nan}


def variant_of(row) -> str:
    """rnn, latent_ode_elbo (consistency 0: the paper's objective), latent_ode_elbo_dyn2 (the same with the
    two-hidden-layer dynamics of torchdiffeq's public example) or latent_ode:<weight>."""
    if row["model"] != "latent_ode":
        return str(row["model"])
    weight = float(row["consistency"])
    if weight == 0 and _config_value(row.get("config"), "model", "dyn_layers", 1) == 2:
        return "latent_ode_elbo_dyn2"
    return "latent_ode_elbo" if weight == 0 else f"latent_ode:{weight:g}"


def method_label(method: str) -> str:
    if method == "rnn":
        return "RNN (paper's baseline)"
    if method == "latent_ode_elbo":
        return "Latent ODE, ELBO only (paper's method)"
    if method == "latent_ode_elbo_dyn2":
        return "Latent ODE, ELBO only, two-layer dynamics (torchdiffeq's example)"
    return f"Latent ODE + suffix consistency, weight {method.split(':', 1)[1]} (noderun)"


def method_order(method: str) -> tuple:
    fixed = {"rnn": (0, 0.0), "latent_ode_elbo": (1, 0.0), "latent_ode_elbo_dyn2": (1, 1.0)}
    return fixed[method] if method in fixed else (2, float(method.split(":")[-1]))


def _config_value(text, section: str, key: str, default):
    try:
        return json.loads(text)[section].get(key, default)
    except (TypeError, ValueError, KeyError, AttributeError):
        return default


def with_methods(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a `variant` column (`method` names the solver) and the protocol columns filled for rows
    written before they existed. Latent ODE rows without a consistency weight in their config trained another
    latent ODE (no suffix term, absolute-time recognition) and are left out."""
    frame = frame.copy()
    for column in ("consistency", "config", "experiment"):
        if column not in frame:
            frame[column] = MAIN_EXPERIMENT if column == "experiment" else np.nan
    for column, value in PROTOCOL_DEFAULTS.items():
        frame[column] = frame[column].fillna(value) if column in frame else value
    missing = frame["consistency"].isna() & (frame["model"] == "latent_ode")
    frame.loc[missing, "consistency"] = [_config_consistency(text) for text in frame.loc[missing, "config"]]
    frame = frame[~((frame["model"] == "latent_ode") & frame["consistency"].isna())]
    frame["variant"] = [variant_of(row) for _, row in frame.iterrows()]
    return frame


def _config_consistency(text) -> float:
    try:
        value = json.loads(text)["model"].get("consistency")
    except (TypeError, ValueError, KeyError):
        return np.nan
    return np.nan if value is None else float(value)


def is_current(frame: pd.DataFrame) -> pd.Series:
    """Rows of the current protocol: training windows cover the test forecasts' angles, a validation split."""
    return (frame["train_coverage"] == "forecast") & (frame["n_val"].astype(float) > 0)


def main_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 2's rows: its experiment, the current protocol, each seed drawing its own data."""
    return frame[(frame["experiment"] == MAIN_EXPERIMENT) & is_current(frame)
                 & (frame["data_seed"].astype(float) == frame["seed"].astype(float))]


# ------------------------------------------------------------------ reference points


@lru_cache(maxsize=64)
def reference_scores(dataset_json: str) -> dict[str, float]:
    """RMSE of each reference forecast, and the targets' RMS, on the test split of one dataset config
    (its seed set)."""
    import torch
    from omegaconf import OmegaConf

    from noderun.data.spiral_references import (last_observation_forecast, linear_forecast, oracle_forecast,
                                                target_rms)
    from noderun.data.spirals import rmse, spirals_from_config

    dataset = OmegaConf.merge(OmegaConf.structured(SpiralsDatasetConfig), json.loads(dataset_json))
    test = spirals_from_config(dataset).test
    truth = test.extrapolation_truth
    with torch.no_grad():
        oracle = oracle_forecast(test, a=dataset.a, b=dataset.b, theta_min=dataset.theta_min,
                                 theta_max=dataset.theta_max, n_base=dataset.n_base)
        return {"oracle": rmse(oracle, truth), "last": rmse(last_observation_forecast(test), truth),
                "linear": rmse(linear_forecast(test), truth), "target_rms": target_rms(test)}


def cell_references(runs: pd.DataFrame) -> dict[str, float] | None:
    """Reference scores for the test sets of a cell's runs: their mean over the data seeds the runs used
    (each from the dataset of its latest row)."""
    if runs.empty:
        return None
    scores = []
    for data_seed, part in runs.sort_values("timestamp").groupby("data_seed"):
        try:
            dataset = json.loads(part.iloc[-1]["config"])["dataset"]
        except (TypeError, ValueError, KeyError):
            continue
        dataset["seed"] = int(float(data_seed))
        scores.append(reference_scores(json.dumps(dataset, sort_keys=True)))
    if not scores:
        return None
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


# ------------------------------------------------------------------------ tables


def _cells(frame: pd.DataFrame, noise: float) -> dict[tuple[str, int], pd.DataFrame]:
    part = frame[np.isclose(frame["noise_std"].astype(float), noise)]
    return {(variant, int(n)): rows for (variant, n), rows in part.groupby(["variant", "n_obs"])}


def render_table2(frame: pd.DataFrame, noise: float = MAIN_NOISE) -> str:
    """Methods and references x n_obs: mean ± std of the test RMSE over seeds, the paper's value,
    the RMSE over the targets' RMS, and the seeds."""
    cells = _cells(frame, noise)
    methods = sorted({m for m, _ in cells} | {"rnn", "latent_ode_elbo"}, key=method_order)
    references = {n: cell_references(pd.concat([r for (m, k), r in cells.items() if k == n]))
                  for n in N_OBS if any(k == n for _, k in cells)}
    headers = ["Method", *(f"n={n}" for n in N_OBS), "paper 30 / 50 / 100", "÷ target RMS 30 / 50 / 100", "seeds"]
    rows = []
    for method in methods:
        row, normalised, seeds = [method_label(method)], [], []
        for n in N_OBS:
            runs = cells.get((method, n), pd.DataFrame())
            ok = runs[runs["status"] == "ok"] if not runs.empty else runs
            if ok.empty:
                row.append("failed" if not runs.empty else "not run")
                normalised.append("-")
                seeds.append("0")
                continue
            row.append(mean_std(ok["test_rmse"], 4))
            scale = references.get(n)
            normalised.append(f"{ok['test_rmse'].mean() / scale['target_rms']:.3f}" if scale else "-")
            seeds.append(str(len(ok)))
        paper = PAPER_TABLE2.get(method)
        row.append(" / ".join(f"{paper[n]:.4f}" for n in N_OBS) if paper else "-")
        row += [" / ".join(normalised), "/".join(seeds)]
        rows.append(row)
    for key, label in REFERENCES:
        values = [references.get(n) for n in N_OBS]
        row = [label, *(f"{v[key]:.4f}" if v else "-" for v in values), "-",
               " / ".join(f"{v[key] / v['target_rms']:.3f}" if v else "-" for v in values), "-"]
        rows.append(row)
    return markdown(rows, headers)


def render_typical(frame: pd.DataFrame, noise: float = MAIN_NOISE) -> str:
    """The typical trajectory and the runaways: per method and n_obs, the median per-trajectory RMSE and
    the share of test trajectories whose own RMSE exceeds 1 (mean over seeds)."""
    cells = _cells(frame[frame["status"] == "ok"], noise)
    methods = sorted({m for m, _ in cells}, key=method_order)
    rows = []
    for method in methods:
        medians, runaways = [], []
        for n in N_OBS:
            runs = cells.get((method, n))
            medians.append(mean_std(runs["test_rmse_median"], 4) if runs is not None else "-")
            share = runs["test_frac_above_1"].dropna() if runs is not None else pd.Series(dtype=float)
            runaways.append(f"{100 * share.mean():.1f} %" if len(share) else "-")
        rows.append([method_label(method), *medians, *runaways])
    if not rows:
        return ""
    return markdown(rows, ["Method", *(f"median n={n}" for n in N_OBS), *(f"RMSE > 1, n={n}" for n in N_OBS)])


COMPARED = (("latent_ode_elbo", "latent ODE (ELBO only)"),
            ("latent_ode_elbo_dyn2", "latent ODE (ELBO only, two-layer dynamics)"))


def render_comparison(frame: pd.DataFrame, noise: float = MAIN_NOISE) -> str:
    """The paper's model (and the same with two-layer dynamics) against the RNN, column by column: mean
    RMSE, ratio, which is lower, on how many shared seeds, and the median trajectory."""
    cells = _cells(frame[frame["status"] == "ok"], noise)
    lines = []
    for variant, name in COMPARED:
        for n in N_OBS:
            ode, rnn = cells.get((variant, n)), cells.get(("rnn", n))
            if ode is None or rnn is None:
                continue
            a, b = ode["test_rmse"].mean(), rnn["test_rmse"].mean()
            paired = ode[["seed", "test_rmse"]].merge(rnn[["seed", "test_rmse"]], on="seed",
                                                      suffixes=("_ode", "_rnn"))
            wins, shared = int((paired["test_rmse_ode"] < paired["test_rmse_rnn"]).sum()), len(paired)
            verdict = "lower" if a < b else "higher"
            lines.append(f"- n={n}: {name} {a:.4f} against RNN {b:.4f}: {a / b:.2f}x, {verdict}; "
                         f"lower on {wins} of {shared} shared seeds; median trajectory "
                         f"{ode['test_rmse_median'].mean():.4f} against {rnn['test_rmse_median'].mean():.4f}")
    return "\n".join(lines)


def render_tolerance(frame: pd.DataFrame) -> str:
    """The latent ODE's solver, and how much the test RMSE moves when re-solved at 1e-7."""
    ode = frame[(frame["model"] == "latent_ode") & (frame["status"] == "ok")]
    if ode.empty:
        return ""
    solvers = sorted({f"{m} at rtol {r:g}, atol {a:g}" for m, r, a in zip(ode["method"], ode["rtol"], ode["atol"])})
    text = f"The latent ODE trains and extrapolates with {', '.join(solvers)}."
    tight = ode.dropna(subset=["test_rmse_tight"]) if "test_rmse_tight" in ode else ode.iloc[:0]
    if not tight.empty:
        change = (tight["test_rmse_tight"] - tight["test_rmse"]).abs()
        relative = change / tight["test_rmse"]
        text += (f" Re-solved at rtol = atol = 1e-7, the test RMSE of {len(tight)} runs changes by at most "
                 f"{change.max():.2g} ({100 * relative.max():.2g}% of it; median {change.median():.2g}).")
    return text


def render_noise(frame: pd.DataFrame) -> str:
    """Each method and reference at every noise level that was run, at the n_obs those runs used."""
    noises = sorted({float(v) for v in frame["noise_std"].dropna()})
    others = [v for v in noises if not np.isclose(v, MAIN_NOISE)]
    if not others:
        return ""
    columns = [MAIN_NOISE, *others]
    ns = sorted({int(n) for n in frame[np.isclose(frame["noise_std"].astype(float), others[0])]["n_obs"]})
    per_noise = {v: _cells(frame[frame["status"] == "ok"], v) for v in columns}
    headers = ["Method", "n_obs", *(f"noise {v:g}" for v in columns), *(f"÷ target RMS, {v:g}" for v in columns),
               "seeds"]
    rows = []
    for n in ns:
        methods = sorted({m for v in others for m, k in per_noise[v] if k == n}, key=method_order)
        refs = {v: cell_references(pd.concat([r for (m, k), r in per_noise[v].items() if k == n] or [pd.DataFrame()]))
                for v in columns}
        for method in methods:
            runs = [per_noise[v].get((method, n)) for v in columns]
            rmse = [mean_std(r["test_rmse"], 4) if r is not None else "not run" for r in runs]
            scaled = [f"{r['test_rmse'].mean() / refs[v]['target_rms']:.3f}" if r is not None and refs[v] else "-"
                      for r, v in zip(runs, columns)]
            rows.append([method_label(method), str(n), *rmse, *scaled,
                         " / ".join(str(len(r)) if r is not None else "0" for r in runs)])
        for key, label in REFERENCES[:2]:
            rows.append([label, str(n), *(f"{refs[v][key]:.4f}" if refs[v] else "-" for v in columns),
                         *(f"{refs[v][key] / refs[v]['target_rms']:.3f}" if refs[v] else "-" for v in columns), "-"])
    return markdown(rows, headers)


def render_spread(frame: pd.DataFrame, n_obs: int = SPREAD_N_OBS) -> str:
    """Where the spread over seeds comes from, at one n_obs: the data (training seed 0, data seeds varied),
    the training (data seed 0, training seeds varied), and both (each seed drawing its own data, Table 2)."""
    current = frame[(frame["experiment"] == MAIN_EXPERIMENT) & is_current(frame) & (frame["status"] == "ok")
                    & (frame["n_obs"] == n_obs) & np.isclose(frame["noise_std"].astype(float), MAIN_NOISE)]
    data_seed, seed = current["data_seed"].astype(float), current["seed"].astype(float)
    by_data, by_training = current[seed == 0], current[data_seed == 0]
    if by_data["data_seed"].nunique() < 2 or by_training["seed"].nunique() < 2:
        return ""
    both = current[data_seed == seed]
    rows = []
    for method in sorted(current["variant"].unique(), key=method_order):
        cells = [part[part["variant"] == method] for part in (by_data, by_training, both)]
        rows.append([method_label(method), *(f"{mean_std(c['test_rmse'], 4)} ({len(c)})" for c in cells)])
    return markdown(rows, ["Method", "data seeds varied, training seed 0", "training seeds varied, data seed 0",
                           "both (Table 2)"])


def render_protocols(frame: pd.DataFrame) -> str:
    """The earlier protocol (training windows drawn as the test ones, no validation split, data seed 0 for
    every seed) beside the current one, per method and n_obs."""
    table = frame[(frame["experiment"] == MAIN_EXPERIMENT) & (frame["status"] == "ok")
                  & np.isclose(frame["noise_std"].astype(float), MAIN_NOISE)]
    earlier = table[(table["train_coverage"] == "same") & (table["n_val"].astype(float) == 0)]
    current = main_rows(table)
    if earlier.empty or current.empty:
        return ""
    rows = []
    for method in sorted(set(earlier["variant"]) | set(current["variant"]), key=method_order):
        cells = []
        for part in (earlier, current):
            runs = part[part["variant"] == method]
            cells.append(" / ".join(f"{runs[runs['n_obs'] == n]['test_rmse'].mean():.3f}"
                                    if (runs["n_obs"] == n).any() else "-" for n in N_OBS))
        rows.append([method_label(method), *cells])
    return markdown(rows, ["Method", "earlier protocol, RMSE 30 / 50 / 100", "current protocol, RMSE 30 / 50 / 100"])


# The settings an ablation row may change, as `config` spells them: (section, key, label).
ABLATION_SETTINGS = (
    ("dataset", "train_coverage", "training windows"), ("dataset", "n_val", "validation"),
    ("model", "restarts", "restarts"), ("model", "kl_warmup", "KL warm-up"), ("model", "obs_std", "obs std"),
    ("model", "lr", "lr"), ("model", "lr_min", "lr_min"), ("model", "iterations", "iterations"),
    ("model", "dyn_layers", "dynamics layers"), ("solver", "rtol", "rtol"), ("solver", "atol", "atol"),
)


def _setting(config_text: str, profile: str, reference: dict) -> str:
    """How a row's config differs from `reference` in ABLATION_SETTINGS ("current protocol" where it does not)."""
    try:
        config = json.loads(config_text)
    except (TypeError, ValueError):
        return "?"
    changed = []
    for section, key, label in ABLATION_SETTINGS:
        value = config.get(section, {}).get(key)
        if key == "iterations" and isinstance(value, dict):
            value = value.get(profile)
        if value != reference.get((section, key)):
            changed.append(f"{label} {value}")
    return ", ".join(changed) or "current protocol"


def render_ablation(frame: pd.DataFrame, profile: str) -> str:
    """Each setting tried on experiment_name=table2_ablation against the current protocol's Table 2 rows of
    the same n_obs and seeds: mean ± std of the test RMSE, the median trajectory, the share of runaways, the
    validation loss the selection saw, and minutes of training."""
    ablation = frame[(frame["experiment"] == ABLATION_EXPERIMENT) & (frame["status"] == "ok")]
    if ablation.empty:
        return ""
    # a change of the dynamics is a setting of the paper's model here, compared with its protocol rows
    ablation = ablation.assign(variant=ablation["variant"].replace({"latent_ode_elbo_dyn2": "latent_ode_elbo"}))
    main = main_rows(frame[frame["status"] == "ok"])
    rows = []
    for (method, n), part in ablation.groupby(["variant", "n_obs"]):
        seeds = set(part["seed"])
        base = main[(main["variant"] == method) & (main["n_obs"] == n) & main["seed"].isin(seeds)
                    & np.isclose(main["noise_std"].astype(float), MAIN_NOISE)]
        if base.empty:
            continue
        config = json.loads(base.iloc[0]["config"])
        reference = {(section, key): (config[section].get(key) if key != "iterations"
                                      else config[section][key].get(profile))
                     for section, key, _ in ABLATION_SETTINGS}
        groups = [("current protocol", base)] + sorted(
            part.assign(setting=[_setting(c, profile, reference) for c in part["config"]]).groupby("setting"))
        for setting, runs in groups:
            share = runs["test_frac_above_1"].dropna()
            rows.append([method_label(method), str(int(n)), setting, str(len(runs)), mean_std(runs["test_rmse"], 3),
                         mean_std(runs["test_rmse_median"], 3), f"{100 * share.mean():.0f} %" if len(share) else "-",
                         mean_std(runs["val_loss"].dropna(), 2), mean_std(runs["train_time_s"] / 60, 1)])
    if not rows:
        return ""
    return markdown(rows, ["Method", "n_obs", "setting", "seeds", "test RMSE", "median trajectory", "RMSE > 1",
                           "validation loss", "train min"])


def render_details(frame: pd.DataFrame) -> str:
    runs = frame[(frame["status"] == "ok") & np.isclose(frame["noise_std"].astype(float), MAIN_NOISE)]
    rows = []
    for method in sorted(runs["variant"].unique(), key=method_order):
        for n in N_OBS:
            ok = runs[(runs["variant"] == method) & (runs["n_obs"] == n)]
            if ok.empty:
                continue
            rows.append([method_label(method), str(n), str(int(ok["params"].iloc[0])), mean_std(ok["iterations"], 0),
                         mean_std(ok["best_iteration"].dropna(), 0), mean_std(ok["time_per_iter_s"], 4),
                         mean_std(ok["nfe_forward"], 1) + " / " + mean_std(ok["nfe_backward"], 1),
                         mean_std(ok["train_time_s"], 1), mean_std(ok["final_loss"], 2),
                         mean_std(ok["val_loss"].dropna(), 2), f"{ok['test_rmse'].max():.4f}"])
    if not rows:
        return ""
    return markdown(rows, ["Method", "n_obs", "params", "iterations", "selected iteration", "s / iter",
                           "NFE fwd / bwd", "train s", "final loss", "validation loss", "worst seed's RMSE"])


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    rows = with_methods(rows)
    ablation = rows["experiment"] == ABLATION_EXPERIMENT  # its cells differ in settings the CELL columns do not name
    every = pd.concat([latest_per_cell(rows[~ablation], CELL), latest_per_cell(rows[ablation], [*CELL, "config"])])
    frame = main_rows(every)
    sections = [("Table 2 (spirals, predictive RMSE on the extrapolation window, noise "
                 f"{MAIN_NOISE:g})", render_table2(frame))]
    for title, text in (
        ("Table 2: the typical trajectory and the runaways", render_typical(frame)),
        ("Table 2: the paper's model against the RNN, and the solver tolerance",
         "\n\n".join(t for t in (render_comparison(frame), render_tolerance(frame)) if t)),
        ("Table 2: sensitivity to the observation noise", render_noise(frame)),
        (f"Table 2: the spread over seeds from the data and from training, n_obs={SPREAD_N_OBS}",
         render_spread(every)),
        ("Table 2: the earlier protocol against the current one", render_protocols(every)),
        ("Table 2 ablation: one setting changed at a time", render_ablation(every, profile)),
        ("Table 2 runs", render_details(frame)),
    ):
        if text:
            sections.append((title, text))
    return sections


# ------------------------------------------------------------------------ figures

PREDICTIONS = re.compile(r"^(?P<profile>.+)_n(?P<n_obs>\d+)_noise(?P<noise>[0-9.e-]+)_(?P<label>[a-z_]+)_seed(?P<seed>\d+)"
                         r"_data(?P<data>\d+)$")
STYLES = {  # label of the saved predictions: legend name and colour of its extrapolation
    "latent_ode_elbo": ("latent ODE, ELBO only (paper)", "tab:purple"),
    "latent_ode_elbo_dyn2": ("latent ODE, ELBO only, two-layer dynamics", "tab:blue"),
    "latent_ode": ("latent ODE + consistency (noderun)", "tab:red"),
    "rnn": ("RNN", "tab:green"),
}


def saved_predictions(results_dir: Path, experiment: str = "table2") -> dict[tuple[str, int, float, str], dict[int, Path]]:
    """The prediction files of Table 2's runs whose seed drew their data (results_dir/spirals/<experiment>/):
    (profile, n_obs, noise, label) -> {seed: path}."""
    folder = Path(results_dir) / "spirals" / experiment
    found: dict = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        match = PREDICTIONS.match(path.stem)
        if match is None or path.name.endswith(".tmp.npz") or match["seed"] != match["data"]:
            continue
        key = (match["profile"], int(match["n_obs"]), float(match["noise"]), match["label"])
        found.setdefault(key, {})[int(match["seed"])] = path
    return found


def _draw_trajectory(ax, truth, obs_values, n_steps, predictions) -> None:
    """One panel: the true curve, the observations, and each label's forecast [T, 2] (NaN where none)."""
    ax.plot(truth[:, 0], truth[:, 1], color="0.75", lw=1, ls="--", label="ground truth")
    # a forecast saved on the extrapolation window only gets NaN on the observation window in front
    predictions = {label: np.concatenate([np.full((len(truth) - len(pred), 2), np.nan), pred])
                   for label, pred in predictions.items()}
    ax.scatter(obs_values[:, 0], obs_values[:, 1], s=6, color="k", label="observations", zorder=3)
    for label, pred in predictions.items():
        name, colour = STYLES.get(label, (label, "tab:gray"))
        if label.startswith("latent_ode"):
            ax.plot(pred[:n_steps, 0], pred[:n_steps, 1], color=colour, lw=1, alpha=0.5)
        ax.plot(pred[n_steps - 1 :, 0], pred[n_steps - 1 :, 1], color=colour, lw=1.5, label=name)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])


def figures(results_dir: Path) -> list[Path]:
    """Per profile and n_obs (noise MAIN_NOISE), like the paper's Figure 8: the first test
    trajectories with each method's forecast (the lowest seed of each); per profile, the paper's
    model's worst trajectories and the distribution of per-trajectory RMSE over all seeds."""
    found = {key: seeds for key, seeds in saved_predictions(results_dir).items() if np.isclose(key[2], MAIN_NOISE)}
    if not found:
        return []
    plt = pyplot()
    out_dir = Path(results_dir) / "figures"
    written = []
    panels = sorted({(profile, n) for profile, n, _, _ in found})
    for profile, n_obs in panels:
        loaded = {label: np.load(seeds[min(seeds)]) for (p, n, _, label), seeds in found.items()
                  if (p, n) == (profile, n_obs)}
        loaded = dict(sorted(loaded.items(), key=lambda item: list(STYLES).index(item[0])
                             if item[0] in STYLES else len(STYLES)))
        reference = next(iter(loaded.values()))
        count = reference["truth"].shape[0]
        fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.6), squeeze=False)
        for i, ax in enumerate(axes[0]):
            _draw_trajectory(ax, reference["truth"][i], reference["obs_values"][i], int(reference["n_steps"]),
                             {label: data["pred"][i] for label, data in loaded.items()})
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        fig.suptitle(f"Spirals, {n_obs} observations (profile={profile}; faint: reconstruction)", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        written.append(save_figure(fig, out_dir / f"spirals_{profile}_n{n_obs}.png"))
    for profile in sorted({p for p, _ in panels}):
        path = _runaway_figure(plt, {k: v for k, v in found.items() if k[0] == profile}, profile, out_dir)
        if path is not None:
            written.append(path)
    return written


def _runaway_figure(plt, found, profile: str, out_dir: Path) -> Path | None:
    """Rows n_obs: per-trajectory RMSE histograms (every seed of each label that saved them), then
    the worst test trajectories of the paper's model (its lowest seed)."""
    elbo = {n: seeds for (_, n, _, label), seeds in found.items() if label == "latent_ode_elbo"}
    if not elbo:
        return None
    ns = sorted(elbo)
    worst = np.load(elbo[ns[0]][min(elbo[ns[0]])])
    if "worst_pred" not in worst:
        return None
    count = worst["worst_pred"].shape[0]
    fig, axes = plt.subplots(len(ns), count + 1, figsize=(3.0 * (count + 1), 3.0 * len(ns)), squeeze=False)
    for row, n in enumerate(ns):
        ax = axes[row][0]
        bins = np.logspace(-2, 1, 40)
        for (_, k, _, label), seeds in sorted(found.items()):
            if k != n:
                continue
            values = [np.load(path)["trajectory_rmse"] for path in seeds.values() if "trajectory_rmse" in np.load(path)]
            if values:
                name, colour = STYLES.get(label, (label, "tab:gray"))
                ax.hist(np.concatenate(values), bins=bins, histtype="step", color=colour,
                        label=f"{name} ({len(values)} seeds)")
        ax.set_xscale("log")
        ax.set_xlabel("per-trajectory RMSE")
        ax.set_title(f"n={n}: test trajectories", fontsize=9)
        ax.legend(fontsize=6)
        data = np.load(elbo[n][min(elbo[n])])
        for i in range(count):
            ax = axes[row][i + 1]
            _draw_trajectory(ax, data["worst_truth"][i], data["worst_obs_values"][i], int(data["n_steps"]),
                             {"latent_ode_elbo": data["worst_pred"][i]})
            ax.set_title(f"RMSE {data['trajectory_rmse'][data['worst_index'][i]]:.2f}", fontsize=9)
    fig.suptitle(f"Latent ODE, ELBO only: its worst test trajectories (lowest seed), profile={profile}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, out_dir / f"spirals_{profile}_runaways.png")
