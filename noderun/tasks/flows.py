"""Continuous normalizing flows: planar CNF against planar NF (Figures 4 and 5 of Chen et al. 2018).

Density matching (dataset=energy, Figure 4): fit q to p ∝ exp(-U) for the potentials U1, U2,
U3 of Rezende & Mohamed (noderun.data.densities) by minimising E_q[log q(z) + U(z)] (the
paper's loss, KL(q‖p) up to log Z) over samples of q; NF with K layers against CNF with M
hidden units. The row also records KL(q‖p) itself (log Z from a grid).

Maximum likelihood (dataset=two_circles or two_moons, Figure 5): CNF with M = 64 against an
NF of 64 one-unit layers, trained on fresh samples every iteration; test NLL in nats on a
held-out sample drawn with another seed.

The CNF trains with Adam, the NF with RMSprop (as in the paper). Iterations and learning
rates are per profile (model.iterations, model.lr); each run saves the arrays its figures
need under results_dir/flows/<profile>/ and `noderun plot` draws them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from noderun.checkpoint import NoRunDirectory, RunDirectory, RunInterrupted, restore_rng_states, rng_states
from noderun.data.densities import ENERGIES, TOY_DATASETS, energy, log_normalizer, sample_toy
from noderun.errors import ConfigError
from noderun.models.flows import PlanarCNF, PlanarNF, standard_normal_logprob
from noderun.profiling import cpu_threads, device_name, resolve_device
from noderun.results import latest_per_cell, markdown, mean_std
from noderun.tasks import Task

MODELS = ("planar_nf", "planar_cnf")
LR_SCHEDULES = ("constant", "cosine")
WIDTHS = (2, 8, 32)  # K (NF layers) and M (CNF hidden units) of Figure 4
SNAPSHOTS = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)  # fractions of the flow time shown in Figure 5
GRID = 100  # density images: GRID x GRID points on [-LIMIT, LIMIT]²
LIMIT = 4.0
LABELS = {"u1": "U1 (ring)", "u2": "U2 (wave)", "u3": "U3 (split)", "two_circles": "Two Circles",
          "two_moons": "Two Moons"}


# --------------------------------------------------------------------------- schemas


@dataclass
class FlowModelConfig:
    """Planar NF (width = K layers) or planar CNF (width = M hidden units)."""

    name: str = MISSING  # planar_nf or planar_cnf
    width: int = 8
    hidden: int = 32  # CNF hypernetwork hidden units
    t_end: float = 1.0  # CNF flow time
    trace: str = "exact"  # CNF divergence: exact (Σ of M terms) or hutchinson (one Rademacher probe per solve)
    batch_size: int = 256  # samples per iteration (of q for density matching, of data for max likelihood)
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 100, "paper": 10_000})
    lr: Dict[str, float] = field(default_factory=lambda: {"smoke": 1e-2, "quick": 1e-2, "paper": 1e-3})
    # constant, or cosine: lr annealed to 0 over the iterations (the paper does not say; at a constant
    # lr of 1e-2 the CNF's loss still jumped between iterations at the end of a quick run)
    lr_schedule: str = "cosine"
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default
    # Per-profile solver tolerance; an experiment uses it as the default of solver.rtol/atol by
    # interpolation (conf/experiment/density_cnf.yaml), so a command-line solver.rtol still wins.
    tolerance: Dict[str, float] = field(default_factory=dict)
    eval_samples: int = 10_000  # samples for the final loss / the NLL test set


@dataclass
class EnergyDatasetConfig:
    """Density matching target p ∝ exp(-U)."""

    name: str = "energy"
    target: str = "u1"  # u1, u2, u3 (Rezende & Mohamed 2015)


@dataclass
class Toy2DDatasetConfig:
    """Maximum likelihood data: fresh training samples every iteration, a fixed test sample."""

    name: str = MISSING  # two_circles or two_moons
    noise: float = 0.08
    test_seed: int = 12345  # the test sample's seed (training samples use the run's seed)


SCHEMAS = (("model", "flow", FlowModelConfig), ("dataset", "energy", EnergyDatasetConfig),
           ("dataset", "toy2d", Toy2DDatasetConfig))

COLUMNS = (
    "kind",  # density (Figure 4) or mle (Figure 5)
    "target",  # u1, u2, u3, two_circles, two_moons
    "width",  # K (NF layers) or M (CNF hidden units)
    "iterations",
    "batch_size",
    "lr",
    "trace",  # CNF: exact or hutchinson
    "loss",  # density: E_q[log q + U] on eval samples (Figure 4d); mle: final training NLL
    "kl",  # density: KL(q‖p) = loss + log Z, nats
    "test_nll",  # mle: -mean log p(x) on the test sample, nats
)
NUMERIC_COLUMNS = ("width", "iterations", "batch_size", "lr", "loss", "kl", "test_nll")


# ---------------------------------------------------------------------------- checks


def _require(condition: bool, key: str, value, accepted: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


def kind_of(cfg: DictConfig) -> str:
    return "density" if cfg.dataset.name == "energy" else "mle"


def validate_config(cfg: DictConfig) -> None:
    model, data, profile = cfg.model, cfg.dataset, cfg.profile.name
    _require(model.get("name") in MODELS, "model.name", model.get("name"), f"the flows task takes: {list(MODELS)}")
    _require(data.get("name") in ("energy",) + TOY_DATASETS, "dataset.name", data.get("name"),
             f"the flows task takes: {['energy', *TOY_DATASETS]}")
    if data.name == "energy":
        _require(data.target in ENERGIES, "dataset.target", data.target, f"valid targets: {list(ENERGIES)}")
    else:
        _require(data.noise >= 0, "dataset.noise", data.noise, "it must be >= 0")
    _require(model.width >= 1, "model.width", model.width, "it must be an integer >= 1")
    _require(model.hidden >= 1, "model.hidden", model.hidden, "it must be an integer >= 1")
    _require(model.threads is None or model.threads >= 1, "model.threads", model.threads,
             "it must be null (torch's default) or an integer >= 1")
    _require(model.t_end > 0, "model.t_end", model.t_end, "it must be > 0")
    _require(model.trace in ("exact", "hutchinson"), "model.trace", model.trace, "valid: ['exact', 'hutchinson']")
    _require(model.batch_size >= 1, "model.batch_size", model.batch_size, "it must be an integer >= 1")
    _require(model.eval_samples >= 1, "model.eval_samples", model.eval_samples, "it must be an integer >= 1")
    _require(profile in model.iterations, "model.iterations", dict(model.iterations),
             f"it needs an entry for profile {profile!r}")
    _require(model.iterations[profile] >= 1, f"model.iterations.{profile}", model.iterations[profile],
             "it must be an integer >= 1")
    _require(profile in model.lr, "model.lr", dict(model.lr), f"it needs an entry for profile {profile!r}")
    lr = model.lr[profile]
    _require(math.isfinite(lr) and lr > 0, f"model.lr.{profile}", lr, "it must be a finite number > 0")
    _require(model.lr_schedule in LR_SCHEDULES, "model.lr_schedule", model.lr_schedule,
             f"valid schedules: {list(LR_SCHEDULES)}")
    for name, tol in model.tolerance.items():
        _require(tol > 0, f"model.tolerance.{name}", tol, "it must be > 0")
    if model.name == "planar_cnf":
        from noderun.ode.methods import get_method

        if not get_method(cfg.solver.method).adaptive:
            _require(cfg.solver.step_size is not None, "solver.step_size", cfg.solver.step_size,
                     f"fixed-step method '{cfg.solver.method}' needs a step size > 0, e.g. solver.step_size=0.05")


# ------------------------------------------------------------------------ training


def _solver(cfg: DictConfig) -> dict:
    """odeint keyword arguments from the solver group."""
    solver = cfg.solver
    rtol, atol = float(solver.rtol), float(solver.atol)
    options = {"step_size": float(solver.step_size)} if solver.step_size else {"max_num_steps": int(solver.max_num_steps)}
    return {"method": solver.method, "rtol": rtol, "atol": atol, "options": options}


def build_flow(cfg: DictConfig):
    model = cfg.model
    if model.name == "planar_nf":
        return PlanarNF(model.width)
    adjoint = True if cfg.solver.adjoint is None else bool(cfg.solver.adjoint)
    return PlanarCNF(model.width, hidden=model.hidden, t_end=model.t_end, trace=model.trace, solver=_solver(cfg),
                     adjoint=adjoint)


def _density_loss(flow, target: str, n: int, generator, device) -> torch.Tensor:
    """E_q[log q(z) + U(z)] over n samples of q."""
    z0 = torch.randn(n, 2, generator=generator, device=device)
    if isinstance(flow, PlanarNF):
        z, logdet = flow(z0)
        logq = standard_normal_logprob(z0) - logdet
    else:
        z, logq = flow(z0)
    return (logq + energy(target, z)).mean()


def _log_prob(flow, x: torch.Tensor) -> torch.Tensor:
    if isinstance(flow, PlanarNF):
        z, logdet = flow(x)  # normalizing direction
        return standard_normal_logprob(z) + logdet
    return flow.log_prob(x)


def _grid(device) -> torch.Tensor:
    axis = torch.linspace(-LIMIT, LIMIT, GRID, device=device)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")  # image rows: z2, columns: z1
    return torch.stack([z1, z2], -1).reshape(-1, 2)


@torch.no_grad()
def _model_density_grid(flow, kind: str, device) -> np.ndarray:
    """The model's density on the grid, [GRID, GRID] (row = z2 from -LIMIT up)."""
    x = _grid(device)
    if isinstance(flow, PlanarNF) and kind == "density":
        z0 = flow.inverse(x)  # the NF maps base -> target here: log q(x) = log N(z0) - log|det|(z0)
        _, logdet = flow(z0)
        logq = standard_normal_logprob(z0) - logdet
    else:
        logq = _log_prob(flow, x)
    return logq.exp().reshape(GRID, GRID).cpu().numpy()


@torch.no_grad()
def _samples(flow, kind: str, n: int, generator, device) -> np.ndarray:
    z0 = torch.randn(n, 2, generator=generator, device=device)
    if isinstance(flow, PlanarNF):
        x = flow(z0)[0] if kind == "density" else flow.inverse(z0)
        return x.cpu().numpy()[None]
    return flow.trajectory(z0, SNAPSHOTS).cpu().numpy()  # [len(SNAPSHOTS), n, 2]


def artifact_path(results_dir, profile: str, kind: str, model: str, target: str, width: int, seed: int) -> Path:
    return Path(results_dir) / "flows" / profile / f"{kind}_{target}_{model}_w{width}_s{seed}.npz"


def train_flow(cfg: DictConfig, log=print, run: RunDirectory | None = None) -> dict:
    with cpu_threads(cfg.model.threads, resolve_device(cfg.device)):
        return _train_flow(cfg, log, run or NoRunDirectory())


def _train_flow(cfg: DictConfig, log, run: RunDirectory) -> dict:
    from noderun.ode import track_stats

    model_cfg, profile = cfg.model, cfg.profile.name
    kind = kind_of(cfg)
    target = cfg.dataset.target if kind == "density" else cfg.dataset.name
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    flow = build_flow(cfg).to(device)
    is_cnf = isinstance(flow, PlanarCNF)
    params = sum(p.numel() for p in flow.parameters())
    iterations, lr = int(model_cfg.iterations[profile]), float(model_cfg.lr[profile])
    optimizer = (torch.optim.Adam if is_cnf else torch.optim.RMSprop)(flow.parameters(), lr=lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
                 if model_cfg.lr_schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0))
    solver = flow.solver if is_cnf else None
    log(f"[noderun] flows/{kind}: {model_cfg.name} width={model_cfg.width} ({params:,} params) target={target} "
        f"profile={profile} iterations={iterations} lr={lr:g} ({model_cfg.lr_schedule}) batch={model_cfg.batch_size}"
        + (f" solver={solver['method']} rtol={solver['rtol']:g} atol={solver['atol']:g} trace={model_cfg.trace}"
           if is_cnf else ""))
    test_x = None
    if kind == "mle":
        test_x = sample_toy(target, model_cfg.eval_samples, torch.Generator().manual_seed(cfg.dataset.test_seed),
                            cfg.dataset.noise).to(device)
    data_generator = torch.Generator().manual_seed(cfg.seed)

    state = run.load() or {"step": 0, "times": [], "nfe_forward": [], "nfe_backward": [], "loss": math.nan,
                           "train_elapsed_s": 0.0}
    if "model" in state:
        flow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"], generator, data_generator)
        log(f"[noderun] resumed at iteration {state['step']}/{iterations}")
    times, nfe_f, nfe_b = state["times"], state["nfe_forward"], state["nfe_backward"]
    report_every = max(1, iterations // 10)  # also the checkpoint interval
    segment_start = time.perf_counter()

    def checkpoint() -> None:
        state["train_elapsed_s"] += time.perf_counter() - segment_start
        run.save({**state, "model": flow.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "rng": rng_states(generator, data_generator)})

    for step in range(state["step"] + 1, iterations + 1):
        if run.stop_requested:
            checkpoint()
            raise RunInterrupted(f"interrupted at iteration {step - 1}: checkpoint saved in {run.path}")
        start = time.perf_counter()
        with track_stats() as stats:
            if kind == "density":
                loss = _density_loss(flow, target, model_cfg.batch_size, generator, device)
            else:
                x = sample_toy(target, model_cfg.batch_size, data_generator, cfg.dataset.noise).to(device)
                loss = -_log_prob(flow, x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at iteration {step}")
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter() - start)
        nfe_f.append(stats.nfe_forward)
        nfe_b.append(stats.nfe_backward)
        state["loss"] = loss_value
        state["step"] = step
        if step % report_every == 0 or step == iterations:
            log(f"  it {step}/{iterations} loss {loss_value:.4f} {times[-1]:.3f}s/it"
                + (f" nfe {stats.nfe_forward}/{stats.nfe_backward}" if is_cnf else ""))
            checkpoint()
            segment_start = time.perf_counter()
    loss_value = state["loss"]
    train_time = state["train_elapsed_s"]

    eval_generator = torch.Generator(device=device).manual_seed(10_000 + cfg.seed)
    row_loss, kl, test_nll = None, None, None
    with torch.no_grad():
        if kind == "density":
            row_loss = float(_density_loss(flow, target, model_cfg.eval_samples, eval_generator, device))
            kl = row_loss + log_normalizer(target)
            log(f"[noderun] {model_cfg.name} width={model_cfg.width} {target}: loss {row_loss:.4f} KL {kl:.4f} nats")
        else:
            row_loss = loss_value
            test_nll = float(-_log_prob(flow, test_x).mean())
            log(f"[noderun] {model_cfg.name} width={model_cfg.width} {target}: test NLL {test_nll:.4f} nats")
        path = artifact_path(cfg.results_dir, profile, kind, model_cfg.name, target, model_cfg.width, cfg.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"density": _model_density_grid(flow, kind, device),
                  "samples": _samples(flow, kind, 2000, eval_generator, device)}
        if test_x is not None:
            arrays["data"] = test_x[:2000].cpu().numpy()
        np.savez_compressed(path, **arrays)

    tail = slice(len(times) // 2, None)  # the second half: the flow has settled
    return {
        "model": model_cfg.name,
        "dataset": target,
        "epochs": None,
        "params": params,
        "method": solver["method"] if is_cnf else None,
        "rtol": solver["rtol"] if is_cnf else None,
        "atol": solver["atol"] if is_cnf else None,
        "adjoint": flow.adjoint if is_cnf else None,
        "nfe_forward": round(statistics.fmean(nfe_f[tail]), 3),
        "nfe_backward": round(statistics.fmean(nfe_b[tail]), 3),
        "time_per_iter_s": round(statistics.median(times[1:] or times), 5),
        "train_time_s": round(train_time, 3),
        "device": device.type,
        "device_name": device_name(device),
        "kind": kind,
        "target": target,
        "width": model_cfg.width,
        "iterations": iterations,
        "batch_size": model_cfg.batch_size,
        "lr": lr,
        "trace": model_cfg.trace if is_cnf else None,
        "loss": round(row_loss, 5),
        "kl": round(kl, 5) if kl is not None else None,
        "test_nll": round(test_nll, 5) if test_nll is not None else None,
    }


# -------------------------------------------------------------------------- tables


def describe(cfg: DictConfig) -> dict:
    """The columns that identify a run's cell, known before it runs (they also fill a failed row)."""
    kind = kind_of(cfg)
    is_cnf = cfg.model.name == "planar_cnf"
    solver = _solver(cfg) if is_cnf else None
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.target if kind == "density" else cfg.dataset.name,
        "kind": kind,
        "target": cfg.dataset.target if kind == "density" else cfg.dataset.name,
        "width": cfg.model.width,
        "iterations": int(cfg.model.iterations[cfg.profile.name]),
        "batch_size": cfg.model.batch_size,
        "lr": float(cfg.model.lr[cfg.profile.name]),
        "trace": cfg.model.trace if is_cnf else None,
        "method": solver["method"] if is_cnf else None,
        "rtol": solver["rtol"] if is_cnf else None,
        "atol": solver["atol"] if is_cnf else None,
    }


def _cell(part: pd.DataFrame, column: str, digits: int) -> str:
    """Mean ± std of the finished runs of a cell; 'failed' when its only runs failed."""
    ok = part[part["status"] == "ok"]
    if ok.empty and not part.empty:
        return "failed"
    return mean_std(ok[column], digits)


def render_density(rows: pd.DataFrame) -> str:
    """Figure 4d as a table: loss per target, NF K and CNF M ∈ {2, 8, 32}; CNF < NF count."""
    every = rows[rows["kind"] == "density"]
    runs = every[every["status"] == "ok"]
    widths = sorted(set(WIDTHS) | set(runs["width"].dropna().astype(int)))
    table, wins, cells = [], 0, 0
    for target in ENERGIES:
        line = [LABELS[target]]
        means = {}
        for model in MODELS:
            for width in widths:
                part = runs[(runs["target"] == target) & (runs["model"] == model) & (runs["width"] == width)]
                tried = every[(every["target"] == target) & (every["model"] == model) & (every["width"] == width)]
                line.append(_cell(tried, "loss", 3))
                if not part.empty:
                    means[model, width] = part["loss"].mean()
        for width in widths:
            if ("planar_nf", width) in means and ("planar_cnf", width) in means:
                cells += 1
                wins += means["planar_cnf", width] < means["planar_nf", width]
        table.append(line)
    headers = ["Target"] + [f"NF K={w}" for w in widths] + [f"CNF M={w}" for w in widths]
    text = markdown(table, headers)
    text += (f"\n\nLoss E_q[log q(z) + U(z)] (nats; KL(q‖p) minus log Z, lower is better). "
             f"CNF < NF at equal K = M in {wins} of {cells} cells with both measured.")
    return text


def render_mle(rows: pd.DataFrame) -> str:
    every = rows[rows["kind"] == "mle"]
    runs = every[every["status"] == "ok"]
    table = []
    for data in TOY_DATASETS:
        part = runs[runs["target"] == data]
        nf, cnf = part[part["model"] == "planar_nf"], part[part["model"] == "planar_cnf"]
        tried = every[every["target"] == data]
        width = lambda p: str(int(p["width"].iloc[0])) if not p.empty else "-"  # noqa: E731
        better = "-"
        if not nf.empty and not cnf.empty:
            better = "CNF" if cnf["test_nll"].mean() < nf["test_nll"].mean() else "NF"
        table.append([LABELS[data], _cell(tried[tried["model"] == "planar_nf"], "test_nll", 3), width(nf),
                      _cell(tried[tried["model"] == "planar_cnf"], "test_nll", 3), width(cnf), better])
    text = markdown(table, ["Data", "NF test NLL", "K", "CNF test NLL", "M", "lower"])
    return text + "\n\nTest NLL in nats per 2-D point (lower is better)."


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    rows = latest_per_cell(rows, ["experiment", "kind", "model", "target", "width", "seed", "profile"])
    sections = []
    if (rows["kind"] == "density").any():
        sections.append(("Figure 4: density matching (planar NF vs planar CNF)", render_density(rows)))
    if (rows["kind"] == "mle").any():
        sections.append(("Figure 5: maximum likelihood (planar NF vs planar CNF)", render_mle(rows)))
    return sections


# ------------------------------------------------------------------------- figures


def _load(folder: Path, kind: str, target: str, model: str, width: int):
    paths = sorted(folder.glob(f"{kind}_{target}_{model}_w{width}_s*.npz"))
    return np.load(paths[0]) if paths else None


def _target_density(target: str) -> np.ndarray:
    u = energy(target, _grid("cpu").double())
    return torch.exp(-u).reshape(GRID, GRID).numpy()


def figures(results_dir: Path) -> list[Path]:
    from noderun.plots import pyplot, save_figure

    plt = pyplot()

    written = []
    root = Path(results_dir) / "flows"
    if not root.is_dir():
        return written
    out = Path(results_dir) / "figures"
    extent = (-LIMIT, LIMIT, -LIMIT, LIMIT)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        profile = folder.name
        if list(folder.glob("density_*.npz")):
            fig, axes = plt.subplots(len(ENERGIES), 7, figsize=(14, 2 * len(ENERGIES)), squeeze=False)
            for row, target in enumerate(ENERGIES):
                axes[row, 0].imshow(_target_density(target), origin="lower", extent=extent, cmap="viridis")
                axes[row, 0].set_ylabel(LABELS[target])
                for col, (model, width) in enumerate([(m, w) for m in MODELS for w in WIDTHS], start=1):
                    data = _load(folder, "density", target, model, width)
                    if data is not None:
                        axes[row, col].imshow(data["density"], origin="lower", extent=extent, cmap="viridis")
                    else:
                        axes[row, col].text(0.5, 0.5, "not run", ha="center", va="center",
                                            transform=axes[row, col].transAxes)
                    if row == 0:
                        axes[row, col].set_title(("NF K" if model == "planar_nf" else "CNF M") + f"={width}")
                axes[row, 0].set_title("Target" if row == 0 else "")
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
            fig.tight_layout()
            written.append(save_figure(fig, out / f"flows_density_{profile}.png", dpi=80))
        for data_name in TOY_DATASETS:
            cnf = next(iter(sorted(folder.glob(f"mle_{data_name}_planar_cnf_w*_s*.npz"))), None)
            nf = next(iter(sorted(folder.glob(f"mle_{data_name}_planar_nf_w*_s*.npz"))), None)
            if cnf is None and nf is None:
                continue
            fig, axes = plt.subplots(2, len(SNAPSHOTS) + 2, figsize=(2.2 * (len(SNAPSHOTS) + 2), 4.6), squeeze=False)
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlim(-LIMIT, LIMIT)
                ax.set_ylim(-LIMIT, LIMIT)
                ax.set_aspect("equal")
            for row, (label, path) in enumerate((("CNF", cnf), ("NF", nf))):
                axes[row, 0].set_ylabel(label)
                if path is None:
                    axes[row, 0].text(0, 0, "not run", ha="center", va="center")
                    continue
                arrays = np.load(path)
                axes[row, 0].scatter(*arrays["data"].T, s=1, c="k")
                axes[row, 0].set_title("data" if row == 0 else "")
                samples = arrays["samples"]
                if label == "CNF":
                    for col, fraction in enumerate(SNAPSHOTS, start=1):
                        axes[row, col].scatter(*samples[col - 1].T, s=1, c="tab:blue")
                        axes[row, col].set_title(f"t = {fraction:.0%}")
                else:
                    axes[row, len(SNAPSHOTS)].scatter(*samples[0].T, s=1, c="tab:orange")
                    axes[row, len(SNAPSHOTS)].set_title("NF samples")
                axes[row, -1].imshow(arrays["density"], origin="lower", extent=extent, cmap="viridis")
                axes[row, -1].set_title("density" if row == 0 else "")
            fig.tight_layout()
            written.append(save_figure(fig, out / f"flows_mle_{data_name}_{profile}.png", dpi=80))
    return written


TASK = Task(
    name="flows",
    validate=validate_config,
    run=train_flow,
    describe=describe,
    columns=COLUMNS,
    numeric_columns=NUMERIC_COLUMNS,
    render=render,
    figures=figures,
    schemas=SCHEMAS,
)
