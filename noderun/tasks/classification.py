"""Image classification on MNIST: Table 1 (MLP, ResNet, RK-Net, ODE-Net) and the depth experiment.

The loop follows the small-and-fast style: the uint8 dataset lives on the training
device as one tensor, batches are `randperm` slices, augmentation is batched, and
nothing runs per sample in Python. Every run records test error, parameters, measured
activation memory, time per iteration and function evaluations (NFE).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from noderun.checkpoint import NoRunDirectory, RunDirectory, RunInterrupted, restore_rng_states, rng_states
from noderun.data.batching import epoch_permutation, random_crop, to_float
from noderun.data.mnist import load_mnist
from noderun.distributed import World
from noderun.errors import ConfigError
from noderun.models import MODEL_BUILDERS, build_model, ode_blocks
from noderun.plots import classification_figures
from noderun.profiling import SavedTensorMeter, device_name, resolve_device, synchronize
from noderun import results
from noderun.results import fit_slope, markdown, mean_std
from noderun.tasks import Task

# Table 1 of Chen et al. (2018), shown beside our measurements, never mixed with them.
PAPER_TABLE1 = {
    "mlp": {"label": "1-Layer MLP", "test_error": 1.60, "params_m": 0.24, "memory": "-", "time": "-"},
    "resnet": {"label": "ResNet", "test_error": 0.41, "params_m": 0.60, "memory": "O(L)", "time": "O(L)"},
    "rknet": {"label": "RK-Net", "test_error": 0.47, "params_m": 0.22, "memory": "O(L~)", "time": "O(L~)"},
    "odenet": {"label": "ODE-Net", "test_error": 0.42, "params_m": 0.22, "memory": "O(1)", "time": "O(L~)"},
}

COLUMNS = (
    "train_size",  # training images used per epoch
    "test_error",  # % on the test set after the last epoch
    "train_error",  # % on the augmented training batches of the last epoch
    "test_loss",  # mean cross-entropy on the test set
    "n_blocks",  # ResNet residual blocks (depth L); empty for other models
    "epoch_time_s",  # seconds of the last training epoch
    "batch_size",  # global batch (all processes together)
    "lr",  # initial learning rate
    "world_size",  # training processes (torchrun DDP); 1 without
)
NUMERIC_COLUMNS = ("train_size", "test_error", "train_error", "test_loss", "n_blocks", "epoch_time_s", "batch_size",
                   "lr", "world_size")


# --------------------------------------------------------------------------- checks


def require(condition: bool, key: str, value, accepted: str) -> None:
    """Raise ConfigError naming the key, its value and what is accepted."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid; {accepted}")


def validate_config(cfg: DictConfig) -> None:
    """Reject invalid values before any work, naming the key and what is accepted."""
    profile, solver = cfg.profile, cfg.solver
    require(profile.epochs >= 1, "profile.epochs", profile.epochs, "it must be an integer >= 1")
    require(profile.batch_size >= 1, "profile.batch_size", profile.batch_size, "it must be an integer >= 1")
    require(profile.eval_batch_size >= 1, "profile.eval_batch_size", profile.eval_batch_size, "it must be >= 1")
    require(math.isfinite(profile.lr) and profile.lr > 0, "profile.lr", profile.lr, "it must be a finite number > 0")
    require(0 <= profile.momentum < 1, "profile.momentum", profile.momentum, "it must be in [0, 1)")
    require(math.isfinite(profile.weight_decay) and profile.weight_decay >= 0, "profile.weight_decay",
            profile.weight_decay, "it must be a finite number >= 0")
    require(profile.lr_schedule in ("multistep", "cosine"), "profile.lr_schedule", profile.lr_schedule,
            "valid schedules: ['multistep', 'cosine']")
    require(math.isfinite(profile.lr_gamma) and profile.lr_gamma > 0, "profile.lr_gamma", profile.lr_gamma,
            "it must be a finite number > 0")
    for key in ("train_size", "test_size"):
        value = profile[key]
        require(value is None or value >= 1, f"profile.{key}", value, "it must be null (all) or an integer >= 1")
    world = World.from_environment()
    require(profile.batch_size % world.size == 0, "profile.batch_size", profile.batch_size,
            f"it is the global batch and must divide by the number of processes ({world.size})")
    if profile.train_size is not None:
        require(profile.train_size >= profile.batch_size, "profile.train_size", profile.train_size,
                f"it must be at least profile.batch_size={profile.batch_size}")
    require(cfg.model.name in MODEL_BUILDERS, "model", cfg.model.name,
            f"the classification task takes: {sorted(MODEL_BUILDERS)} (other models run with their experiment, "
            "e.g. experiment=latent_ode)")
    require(cfg.dataset.name == "mnist", "dataset.name", cfg.dataset.name, "the classification task takes: ['mnist']")
    require(cfg.dataset.crop_padding >= 0, "dataset.crop_padding", cfg.dataset.crop_padding, "it must be >= 0")


# --------------------------------------------------------------------- the loop


def _evaluate(model, images, labels, batch_size: int) -> tuple[int, float]:
    """(wrong predictions, summed cross-entropy) on uint8 images [N, 28, 28] with labels [N]."""
    model.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_float(images[start : start + batch_size]))
            target = labels[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            wrong += (logits.argmax(1) != target).sum().item()
    model.train()
    return wrong, loss_sum


def _make_scheduler(optimizer, profile, iters_per_epoch: int):
    """multistep: the paper's x0.1 at given epochs; cosine: per-iteration decay to 0 (short budgets)."""
    if profile.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=profile.epochs * iters_per_epoch)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(profile.lr_milestones),
                                                gamma=profile.lr_gamma)


def _stats_context(has_ode: bool):
    if not has_ode:
        return nullcontext(None)
    from noderun.ode import track_stats

    return track_stats()


def checkpoint_path(results_dir, experiment: str, model: str, profile: str, seed: int) -> Path:
    """Where a run's final weights and history go; a rerun of the same cell replaces them."""
    return Path(results_dir) / "checkpoints" / f"{experiment}-{model}-{profile}-seed{seed}.pt"


def save_checkpoint(cfg: DictConfig, model: torch.nn.Module, history: dict) -> Path:
    """Final weights, the resolved config and the training history, written atomically.

    The history holds per-epoch test/train error, loss and time, and the per-iteration
    forward/backward NFE of every epoch (lists of lists), for the training-curve plots.
    """
    path = checkpoint_path(cfg.results_dir, cfg.experiment_name, cfg.model.name, cfg.profile.name, cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "history": history,
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def describe(cfg: DictConfig) -> dict:
    """The columns that identify a run's cell, known before it runs (they also fill a failed row)."""
    from noderun.models import solver_kwargs

    has_ode = cfg.model.name in ("odenet", "rknet")
    adjoint = solver_kwargs(cfg.solver, default_adjoint=cfg.model.adjoint)["adjoint"] if has_ode else None
    train_size = min(cfg.profile.train_size or MNIST_TRAIN_SIZE, MNIST_TRAIN_SIZE)
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "epochs": cfg.profile.epochs,
        "train_size": train_size - train_size % cfg.profile.batch_size,
        "n_blocks": cfg.model.n_blocks if cfg.model.name == "resnet" else None,
        "method": cfg.solver.method if has_ode else None,
        "rtol": cfg.solver.rtol if has_ode else None,
        "atol": cfg.solver.atol if has_ode else None,
        "adjoint": adjoint,
        "batch_size": cfg.profile.batch_size,
        "lr": cfg.profile.lr,
        "world_size": World.from_environment().size,
    }


MNIST_TRAIN_SIZE = 60_000


def _fresh_state(cfg: DictConfig) -> dict:
    """Where a run starts: epoch 1, step 0, nothing measured yet."""
    return {
        "epoch": 1,  # the epoch in progress (1-based)
        "step": 0,  # steps of it already taken
        "order": None,  # int64 [train_size]: the epoch's permutation, drawn at its step 0
        "epoch_sums": {"loss": 0.0, "wrong": 0, "seen": 0, "elapsed_s": 0.0},
        "nfe_forward": [], "nfe_backward": [],  # per step of the epoch in progress
        # Per-epoch curves and per-iteration NFE, saved with the final weights for the plots.
        "history": {"epoch": [], "test_error": [], "train_error": [], "train_loss": [], "test_loss": [],
                    "epoch_time_s": [], "nfe_forward": [], "nfe_backward": []},
        "iteration_times": [],
        "memory_bytes": None, "cuda_peak_mib": None,
        "train_elapsed_s": 0.0,
    }


def train_classifier(cfg: DictConfig, log=print, run: RunDirectory | None = None) -> dict:
    """Train and evaluate one classifier; resumable at any step boundary (see noderun.checkpoint).

    The whole training state (weights, optimiser, scheduler, RNG generators, the epoch's
    permutation and position, running sums) is checkpointed at the end of every epoch and
    when Ctrl-C asks to stop, so a resumed run on CPU ends with bit-identical weights.
    """
    run = run or NoRunDirectory()
    profile = cfg.profile
    world = World.from_environment()  # one process, or this rank of a torchrun world
    device = world.device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    data = load_mnist(cfg.data_dir, log=log)
    train_images = data.train_images[: profile.train_size].to(device)
    train_labels = data.train_labels[: profile.train_size].to(device)
    test_images = data.test_images[: profile.test_size]
    test_labels = data.test_labels[: profile.test_size]
    test_count = len(test_images)
    # Under DDP each rank evaluates a contiguous part of the test set; the counts are summed.
    test_part = slice(world.rank * -(-test_count // world.size), (world.rank + 1) * -(-test_count // world.size))
    test_images, test_labels = test_images[test_part].to(device), test_labels[test_part].to(device)

    model = build_model(cfg.model, cfg.solver).to(device)
    net = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    has_ode = bool(ode_blocks(model))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(model.parameters(), lr=profile.lr, momentum=profile.momentum,
                                weight_decay=profile.weight_decay)
    iters_per_epoch = len(train_images) // profile.batch_size
    scheduler = _make_scheduler(optimizer, profile, iters_per_epoch)

    state = run.load()
    if state is None:
        state = _fresh_state(cfg)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"], generator)
        log(f"[noderun] resumed at epoch {state['epoch']}, step {state['step']}/{iters_per_epoch}")

    def checkpoint() -> None:
        run.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "rng": rng_states(generator)})

    log(f"[noderun] model={cfg.model.name} ({params:,} params) profile={profile.name} device={device} "
        f"epochs={profile.epochs} x {iters_per_epoch} iterations of {profile.batch_size}"
        + (f" (DDP: {world.size} processes x {profile.batch_size // world.size})" if world.distributed else "")
        + (f" solver={cfg.solver.method} rtol={cfg.solver.rtol:g} atol={cfg.solver.atol:g}" if has_ode else ""))

    progress = None
    if profile.progress and world.is_main:
        from tqdm import tqdm

        done = (state["epoch"] - 1) * iters_per_epoch + state["step"]
        progress = tqdm(total=profile.epochs * iters_per_epoch, initial=done, unit="it", dynamic_ncols=True,
                        leave=False)
    history, sums = state["history"], state["epoch_sums"]
    local_rows = world.shard(profile.batch_size)  # this rank's rows of every global batch
    stop_agreed = run.stop_requested  # after each step: whether any rank was asked to stop
    while state["epoch"] <= profile.epochs:
        epoch = state["epoch"]
        if state["step"] == 0:
            state["order"] = epoch_permutation(len(train_images), generator)
        segment_start = time.perf_counter()
        for step in range(state["step"], iters_per_epoch):
            if stop_agreed:
                state["epoch_sums"]["elapsed_s"] += time.perf_counter() - segment_start
                state["train_elapsed_s"] += time.perf_counter() - segment_start
                checkpoint()
                if progress is not None:
                    progress.close()
                raise RunInterrupted(f"interrupted at epoch {epoch}, step {step}: checkpoint saved in {run.path}")
            index = state["order"][step * profile.batch_size : (step + 1) * profile.batch_size]
            measure_memory = state["memory_bytes"] is None
            x = to_float(train_images[index])
            if cfg.model.augment:  # the whole global batch, so every rank's generator stays in step
                x = random_crop(x, cfg.dataset.crop_padding, generator)
            x, y = x[local_rows], train_labels[index][local_rows]
            meter = SavedTensorMeter() if measure_memory else nullcontext()
            if measure_memory and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            with _stats_context(has_ode) as stats:
                with meter:
                    logits = net(x)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            # One collective a step: the global batch's loss and errors, and any rank's stop request.
            loss_sum, wrong, stops = world.sum(
                [loss.item() * len(y), (logits.argmax(1) != y).sum().item(), float(run.stop_requested)], device)
            loss_value = loss_sum / profile.batch_size
            stop_agreed = stops > 0
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, step {step}")
            optimizer.step()
            if profile.lr_schedule == "cosine":
                scheduler.step()
            synchronize(device)
            if measure_memory:
                # The first step also pays for the hooks and one-time set-up: not timed.
                state["memory_bytes"] = meter.bytes
                if device.type == "cuda":
                    state["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                state["iteration_times"].append(time.perf_counter() - start)
            if stats is not None:
                state["nfe_forward"].append(stats.nfe_forward)
                state["nfe_backward"].append(stats.nfe_backward)
            sums["loss"] += loss_sum
            sums["wrong"] += int(wrong)
            sums["seen"] += profile.batch_size
            state["step"] = step + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}")
        if profile.lr_schedule == "multistep":
            scheduler.step()
        segment = time.perf_counter() - segment_start
        epoch_time = sums["elapsed_s"] + segment
        state["train_elapsed_s"] += segment
        test_wrong, test_loss_sum = world.sum(list(_evaluate(model, test_images, test_labels,
                                                             profile.eval_batch_size)), device)
        test_error, test_loss = 100.0 * test_wrong / test_count, test_loss_sum / test_count
        train_error = 100.0 * sums["wrong"] / sums["seen"]
        nfe_forward, nfe_backward = state["nfe_forward"], state["nfe_backward"]
        for key, value in (("epoch", epoch), ("test_error", test_error), ("train_error", train_error),
                           ("train_loss", sums["loss"] / sums["seen"]), ("test_loss", test_loss),
                           ("epoch_time_s", epoch_time), ("nfe_forward", nfe_forward),
                           ("nfe_backward", nfe_backward)):
            history[key].append(value)
        line = (f"epoch {epoch}/{profile.epochs} loss {sums['loss'] / sums['seen']:.4f} "
                f"train_err {train_error:.2f}% test_err {test_error:.2f}% time {epoch_time:.1f}s")
        if has_ode:
            line += (f" nfe_fwd {statistics.fmean(nfe_forward) if nfe_forward else 0.0:.1f}"
                     f" nfe_bwd {statistics.fmean(nfe_backward) if nfe_backward else 0.0:.1f}")
        log(line)
        state.update(epoch=epoch + 1, step=0, order=None, nfe_forward=[], nfe_backward=[],
                     epoch_sums={"loss": 0.0, "wrong": 0, "seen": 0, "elapsed_s": 0.0})
        sums = state["epoch_sums"]
        checkpoint()
    if progress is not None:
        progress.close()

    test_error, train_error, test_loss = (history[k][-1] for k in ("test_error", "train_error", "test_loss"))
    nfe_forward, nfe_backward = history["nfe_forward"][-1], history["nfe_backward"][-1]
    log(f"[noderun] {cfg.model.name}: test error {test_error:.2f}%")
    if world.is_main:
        save_checkpoint(cfg, model, history)
    iteration_times, memory_bytes = state["iteration_times"], state["memory_bytes"]
    return {
        **describe(cfg),
        "test_error": round(test_error, 4),
        "train_error": round(train_error, 4),
        "test_loss": round(test_loss, 6),
        "params": params,
        "nfe_forward": round(statistics.fmean(nfe_forward), 3) if nfe_forward else 0.0,
        "nfe_backward": round(statistics.fmean(nfe_backward), 3) if nfe_backward else 0.0,
        "memory_mib": round(memory_bytes / 2**20, 4) if memory_bytes is not None else None,
        "cuda_peak_mib": round(state["cuda_peak_mib"], 3) if state["cuda_peak_mib"] is not None else None,
        "time_per_iter_s": round(statistics.median(iteration_times), 5) if iteration_times else None,
        "epoch_time_s": round(history["epoch_time_s"][-1], 3),
        "train_time_s": round(state["train_elapsed_s"], 3),
        "device": device.type,
        "device_name": device_name(device),
    }


# ------------------------------------------------------------------------- tables


# What makes two rows the same cell: a rerun of a cell replaces the earlier row in the tables,
# so a repeated seed is never counted twice in a mean.
CELL_KEY = ["experiment", "model", "profile", "seed", "method", "rtol", "atol", "adjoint", "n_blocks",
            "train_size", "epochs"]


def latest_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """The most recent row of every cell (by timestamp)."""
    return results.latest_per_cell(frame, CELL_KEY)


def render_table1(frame: pd.DataFrame, profile: str) -> str:
    """Table 1 (MNIST) for one profile: our measurements beside the paper's values."""
    rows = []
    ok = latest_per_cell(frame[(frame["experiment"] == "table1") & (frame["profile"] == profile)])
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
            mean_std(finished["test_error"], 2),
            f"{paper['test_error']:.2f}",
            f"{finished['params'].iloc[0] / 1e6:.3f}",
            f"{paper['params_m']:.2f}",
            mean_std(finished["memory_mib"], 2),
            paper["memory"],
            mean_std(finished["time_per_iter_s"], 3),
            mean_std(finished["nfe_forward"], 1) + " / " + mean_std(finished["nfe_backward"], 1),
            paper["time"],
            str(len(finished)),
        ])
    headers = ["Model", "Test error %", "paper", "Params (M)", "paper", "Memory MiB", "paper",
               "s / iter", "NFE fwd / bwd", "paper time", "seeds"]
    return markdown(rows, headers)


def render_depth(frame: pd.DataFrame, profile: str) -> str:
    """Memory and time against depth L (ResNet) or evaluations L~ (RK-Net, ODE-Net), with fitted slopes."""
    runs = latest_per_cell(frame[(frame["experiment"] == "depth") & (frame["profile"] == profile)])
    runs = runs[runs["status"] == "ok"].copy()
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
        mem_slope = fit_slope(part["depth"], part["memory_mib"]) * 1024 * 1024
        if math.isfinite(mem_slope):
            mem_slope = round(mem_slope) + 0  # a flat fit prints as 0, not -0
        time_slope = fit_slope(part["depth"], part["time_per_iter_s"])
        spread = (part["memory_mib"].max() - part["memory_mib"].min()) / part["memory_mib"].mean() * 100
        slopes.append([PAPER_TABLE1[model]["label"], "block" if model == "resnet" else "evaluation",
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
    runs = latest_per_cell(runs)
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


def render(rows: pd.DataFrame, profile: str) -> list[tuple[str, str]]:
    sections = [("Table 1 (MNIST)", render_table1(rows, profile))]
    depth = render_depth(rows, profile)
    if not depth.startswith("("):
        sections.append(("Memory and time against depth", depth))
    backends = render_backends(rows, profile)
    if not backends.startswith("("):
        sections.append(("ODE-Net against the reference implementation", backends))
    return sections


TASK = Task(
    name="classification",
    validate=validate_config,
    run=train_classifier,
    columns=COLUMNS,
    numeric_columns=NUMERIC_COLUMNS,
    render=render,
    figures=classification_figures,
    describe=describe,
)
