"""`train(cfg) -> dict`: one training run, one result row. The CLI only wraps it.

The classification loop follows the small-and-fast style: the uint8 dataset lives on the
training device as one tensor, batches are `randperm` slices, augmentation is batched,
and nothing runs per sample in Python. Every run records test error, parameters,
measured activation memory, time per iteration and function evaluations (NFE), and
appends one row to ``<results_dir>/<experiment_name>.csv``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from noderun.data.batching import epoch_batches, random_crop, to_float
from noderun.data.mnist import load_mnist
from noderun.errors import ConfigError
from noderun.models import build_model, ode_blocks
from noderun.profiling import SavedTensorMeter, device_name, git_commit, synchronize
from noderun.results import append_row, check_writable

VALID_TASKS = ("classification",)


# --------------------------------------------------------------------------- checks


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def validate_config(cfg: DictConfig) -> None:
    """Reject invalid values before any work, naming the key and what is accepted."""
    profile, solver = cfg.profile, cfg.solver

    def require(condition: bool, key: str, value, accepted: str) -> None:
        if not condition:
            raise ConfigError(f"{key}={value!r} is invalid; {accepted}")

    require(cfg.task in VALID_TASKS, "task", cfg.task, f"valid tasks: {list(VALID_TASKS)}")
    require(profile.epochs >= 1, "profile.epochs", profile.epochs, "it must be an integer >= 1")
    require(profile.batch_size >= 1, "profile.batch_size", profile.batch_size, "it must be an integer >= 1")
    require(profile.eval_batch_size >= 1, "profile.eval_batch_size", profile.eval_batch_size, "it must be >= 1")
    require(math.isfinite(profile.lr) and profile.lr > 0, "profile.lr", profile.lr, "it must be a finite number > 0")
    require(0 <= profile.momentum < 1, "profile.momentum", profile.momentum, "it must be in [0, 1)")
    require(profile.weight_decay >= 0, "profile.weight_decay", profile.weight_decay, "it must be >= 0")
    require(profile.lr_gamma > 0, "profile.lr_gamma", profile.lr_gamma, "it must be > 0")
    for key in ("train_size", "test_size"):
        value = profile[key]
        require(value is None or value >= 1, f"profile.{key}", value, "it must be null (all) or an integer >= 1")
    if profile.train_size is not None:
        require(profile.train_size >= profile.batch_size, "profile.train_size", profile.train_size,
                f"it must be at least profile.batch_size={profile.batch_size}")
    require(solver.rtol > 0, "solver.rtol", solver.rtol, "it must be > 0")
    require(solver.atol > 0, "solver.atol", solver.atol, "it must be > 0")
    require(solver.max_num_steps >= 1, "solver.max_num_steps", solver.max_num_steps, "it must be >= 1")
    require(solver.backend in ("native", "torchdiffeq"), "solver.backend", solver.backend,
            "valid backends: ['native', 'torchdiffeq']")
    from noderun.ode.methods import METHODS  # the solver library's registry is the one source of truth

    require(solver.method in METHODS, "solver.method", solver.method, f"valid methods: {sorted(METHODS)}")
    require(cfg.dataset.name == "mnist", "dataset.name", cfg.dataset.name, "the classification task takes: ['mnist']")
    require(cfg.dataset.crop_padding >= 0, "dataset.crop_padding", cfg.dataset.crop_padding, "it must be >= 0")


# --------------------------------------------------------------------- the loop


def _evaluate(model, images, labels, batch_size: int) -> tuple[float, float]:
    """(error %, mean cross-entropy) on uint8 images [N, 28, 28] with labels [N]."""
    model.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_float(images[start : start + batch_size]))
            target = labels[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            wrong += (logits.argmax(1) != target).sum().item()
    model.train()
    return 100.0 * wrong / len(images), loss_sum / len(images)


def _stats_context(has_ode: bool):
    if not has_ode:
        return nullcontext(None)
    from noderun.ode import track_stats

    return track_stats()


def train_classifier(cfg: DictConfig, log=print) -> dict:
    profile = cfg.profile
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    data = load_mnist(cfg.data_dir, log=log)
    train_images = data.train_images[: profile.train_size].to(device)
    train_labels = data.train_labels[: profile.train_size].to(device)
    test_images = data.test_images[: profile.test_size].to(device)
    test_labels = data.test_labels[: profile.test_size].to(device)

    model = build_model(cfg.model, cfg.solver).to(device)
    has_ode = bool(ode_blocks(model))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(model.parameters(), lr=profile.lr, momentum=profile.momentum,
                                weight_decay=profile.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(profile.lr_milestones),
                                                     gamma=profile.lr_gamma)
    iters_per_epoch = len(train_images) // profile.batch_size
    log(f"[noderun] model={cfg.model.name} ({params:,} params) profile={profile.name} device={device} "
        f"epochs={profile.epochs} x {iters_per_epoch} iterations of {profile.batch_size}"
        + (f" solver={cfg.solver.method} rtol={cfg.solver.rtol:g} atol={cfg.solver.atol:g}" if has_ode else ""))

    progress = None
    if profile.progress:
        from tqdm import tqdm

        progress = tqdm(total=profile.epochs * iters_per_epoch, unit="it", dynamic_ncols=True, leave=False)

    memory_bytes, cuda_peak = None, None
    iteration_times: list[float] = []
    train_start = time.perf_counter()
    epoch_time = 0.0
    for epoch in range(1, profile.epochs + 1):
        epoch_start = time.perf_counter()
        loss_sum, wrong, seen = 0.0, 0, 0
        nfe_forward, nfe_backward = [], []
        for step, index in enumerate(epoch_batches(len(train_images), profile.batch_size, generator)):
            measure_memory = epoch == 1 and step == 0
            x = to_float(train_images[index])
            if cfg.dataset.augment:
                x = random_crop(x, cfg.dataset.crop_padding, generator)
            y = train_labels[index]
            meter = SavedTensorMeter() if measure_memory else nullcontext()
            if measure_memory and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            with _stats_context(has_ode) as stats:
                with meter:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            synchronize(device)
            if measure_memory:
                # The first step also pays for the hooks and one-time set-up: not timed.
                memory_bytes = meter.bytes
                if device.type == "cuda":
                    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                iteration_times.append(time.perf_counter() - start)
            if stats is not None:
                nfe_forward.append(stats.nfe_forward)
                nfe_backward.append(stats.nfe_backward)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, step {step}")
            loss_sum += loss_value * len(y)
            wrong += (logits.argmax(1) != y).sum().item()
            seen += len(y)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}")
        scheduler.step()
        epoch_time = time.perf_counter() - epoch_start
        test_error, test_loss = _evaluate(model, test_images, test_labels, profile.eval_batch_size)
        train_error = 100.0 * wrong / seen
        mean_nfe_f = statistics.fmean(nfe_forward) if nfe_forward else 0.0
        mean_nfe_b = statistics.fmean(nfe_backward) if nfe_backward else 0.0
        line = (f"epoch {epoch}/{profile.epochs} loss {loss_sum / seen:.4f} train_err {train_error:.2f}% "
                f"test_err {test_error:.2f}% time {epoch_time:.1f}s")
        if has_ode:
            line += f" nfe_fwd {mean_nfe_f:.1f} nfe_bwd {mean_nfe_b:.1f}"
        (progress.write if progress is not None else log)(line)
    if progress is not None:
        progress.close()
    train_time = time.perf_counter() - train_start

    solver = cfg.solver
    block = ode_blocks(model)[0] if has_ode else None
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "epochs": profile.epochs,
        "train_size": len(train_images),
        "test_error": round(test_error, 4),
        "train_error": round(train_error, 4),
        "test_loss": round(test_loss, 6),
        "params": params,
        "n_blocks": cfg.model.n_blocks if cfg.model.name == "resnet" else None,
        "method": solver.method if has_ode else None,
        "rtol": solver.rtol if has_ode else None,
        "atol": solver.atol if has_ode else None,
        "adjoint": block.adjoint if has_ode else None,
        "nfe_forward": round(mean_nfe_f, 3),
        "nfe_backward": round(mean_nfe_b, 3),
        "memory_mib": round(memory_bytes / 2**20, 4) if memory_bytes is not None else None,
        "cuda_peak_mib": round(cuda_peak, 3) if cuda_peak is not None else None,
        "time_per_iter_s": round(statistics.median(iteration_times), 5) if iteration_times else None,
        "epoch_time_s": round(epoch_time, 3),
        "train_time_s": round(train_time, 3),
        "device": device.type,
        "device_name": device_name(device),
    }


TASKS = {"classification": train_classifier}


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def train(cfg: DictConfig, log=print) -> dict:
    """Run one experiment described by a composed config; append and return its result row."""
    validate_config(cfg)
    check_writable(cfg.results_dir)
    run_id = new_run_id()
    metrics = TASKS[cfg.task](cfg, log=log)
    row = {
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "experiment": cfg.experiment_name,
        "status": "ok",
        "profile": cfg.profile.name,
        "seed": cfg.seed,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
        **metrics,
    }
    path = Path(cfg.results_dir) / f"{cfg.experiment_name}.csv"
    append_row(path, row)
    log(f"[noderun] test error {row['test_error']:.2f}% -> {path} (run {run_id})")
    return row
