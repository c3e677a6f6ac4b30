"""Image classification on MNIST: Table 1 (MLP, ResNet, RK-Net, ODE-Net; ANODE beyond the paper), the depth
experiment.

The uint8 dataset lives on the training device as one tensor, batches are `randperm`
slices, augmentation is batched, and nothing runs per sample in Python. After every epoch
the whole test set is evaluated (and the validation set, when dataset.val_size holds out the last
training images); the run keeps the final weights and the per-epoch history
(with every iteration's NFE) in ``<results_dir>/checkpoints/`` for the figures.
"""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from noderun.checkpoint import atomic_write_bytes
from noderun.config import Unread, schema_keys
from noderun.data.batching import epoch_permutation, random_crop, to_float
from noderun.data.mnist import load_mnist
from noderun.distributed import World
from noderun.models import MODELS, build_model
from noderun.models.regularization import artifact_suffix
from noderun.models.solver import SolverSpec
from noderun.tasks.base import EpochSummary, Task, require

MNIST_TRAIN_SIZE = 60_000
LR_SCHEDULES = ("multistep", "cosine", "linear")


def final_weights_path(results_dir, experiment: str, model: str, profile: str, seed: int, suffix: str = "") -> Path:
    """Where a run's final weights and history go; a rerun of the same cell replaces them. suffix: a
    regularised run's (noderun.models.regularization.artifact_suffix)."""
    return Path(results_dir) / "checkpoints" / f"{experiment}-{model}-{profile}-seed{seed}{suffix}.pt"


def evaluate(model, images, labels, batch_size: int, autocast=nullcontext) -> tuple[int, float]:
    """(wrong predictions, summed cross-entropy) on uint8 images [N, 28, 28] with labels [N]."""
    model.eval()
    wrong, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            with autocast():
                logits = model(to_float(images[start : start + batch_size])).float()
            target = labels[start : start + batch_size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            wrong += (logits.argmax(1) != target).sum().item()
    model.train()
    return wrong, loss_sum


class ClassificationTask(Task):
    name = "classification"
    distributed = True
    precisions = ("32", "bf16-mixed")
    tally_names = ("samples", "wrong")
    columns = (
        "train_size",  # training images used per epoch
        "test_error",  # % on the test set after the last epoch
        "train_error",  # % on the augmented training batches of the last epoch
        "test_loss",  # mean cross-entropy on the test set
        "n_blocks",  # ResNet residual blocks (depth L); empty for other models
        "epoch_time_s",  # seconds of the last training epoch
        "batch_size",  # global batch (all processes together)
        "lr",  # initial learning rate
        "world_size",  # training processes (torchrun); 1 without
        "val_size",  # training images held out as the validation set (the last ones); 0: none
        "val_error",  # % on the validation set after the last epoch; empty without one
        "val_loss",  # mean cross-entropy on the validation set; empty without one
    )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        profile = cfg.profile
        require(profile.epochs >= 1, "profile.epochs", profile.epochs, "it must be an integer >= 1")
        require(profile.batch_size >= 1, "profile.batch_size", profile.batch_size, "it must be an integer >= 1")
        require(profile.eval_batch_size >= 1, "profile.eval_batch_size", profile.eval_batch_size, "it must be >= 1")
        require(math.isfinite(profile.lr) and profile.lr > 0, "profile.lr", profile.lr,
                "it must be a finite number > 0")
        require(0 <= profile.momentum < 1, "profile.momentum", profile.momentum, "it must be in [0, 1)")
        require(math.isfinite(profile.weight_decay) and profile.weight_decay >= 0, "profile.weight_decay",
                profile.weight_decay, "it must be a finite number >= 0")
        require(profile.lr_schedule in LR_SCHEDULES, "profile.lr_schedule", profile.lr_schedule,
                f"valid schedules: {list(LR_SCHEDULES)}")
        require(math.isfinite(profile.lr_gamma) and profile.lr_gamma > 0, "profile.lr_gamma", profile.lr_gamma,
                "it must be a finite number > 0")
        require(math.isfinite(profile.warmup_epochs) and 0 <= profile.warmup_epochs < profile.epochs,
                "profile.warmup_epochs", profile.warmup_epochs, f"it must be in [0, profile.epochs={profile.epochs})")
        require(profile.warmup_epochs == 0 or profile.lr_schedule != "multistep", "profile.warmup_epochs",
                profile.warmup_epochs, "a warm-up goes with profile.lr_schedule=cosine or linear")
        require(not profile.nesterov or profile.momentum > 0, "profile.nesterov", profile.nesterov,
                "Nesterov momentum needs profile.momentum > 0")
        require(0 <= profile.label_smoothing < 1, "profile.label_smoothing", profile.label_smoothing,
                "it must be in [0, 1)")
        require(profile.ema_decay is None or 0 < profile.ema_decay < 1, "profile.ema_decay", profile.ema_decay,
                "it must be null (no average) or in (0, 1)")
        for key in ("train_size", "test_size"):
            value = profile[key]
            require(value is None or value >= 1, f"profile.{key}", value, "it must be null (all) or an integer >= 1")
        world = World.from_environment()
        require(profile.batch_size % world.size == 0, "profile.batch_size", profile.batch_size,
                f"it is the global batch and must divide by the number of processes ({world.size})")
        if profile.train_size is not None:
            require(profile.train_size >= profile.batch_size, "profile.train_size", profile.train_size,
                    f"it must be at least profile.batch_size={profile.batch_size}")
        require(cfg.model.name in MODELS, "model", cfg.model.name,
                f"the classification task takes: {sorted(MODELS)} (other models run with their experiment, "
                "e.g. experiment=latent_ode)")
        augment = cfg.model.get("augment_channels", 0)
        if cfg.model.name == "anode":
            require(augment >= 1, "model.augment_channels", augment,
                    "model=anode takes an integer >= 1 (0 channels is the ODE-Net: model=odenet)")
        else:
            require(augment == 0, "model.augment_channels", augment, "it applies to model=anode only; leave it 0")
        require(cfg.dataset.name == "mnist", "dataset.name", cfg.dataset.name,
                "the classification task takes: ['mnist']")
        require(profile.batch_size <= MNIST_TRAIN_SIZE, "profile.batch_size", profile.batch_size,
                f"it must be at most MNIST's {MNIST_TRAIN_SIZE} training images")
        val_size = cfg.dataset.val_size
        require(0 <= val_size <= MNIST_TRAIN_SIZE - profile.batch_size, "dataset.val_size", val_size,
                f"it must be an integer in [0, {MNIST_TRAIN_SIZE - profile.batch_size}] (training images held "
                f"out, leaving at least profile.batch_size={profile.batch_size} to train on)")
        if profile.train_size is not None:
            require(profile.train_size <= MNIST_TRAIN_SIZE - val_size, "profile.train_size", profile.train_size,
                    f"with dataset.val_size={val_size} at most {MNIST_TRAIN_SIZE - val_size} training images remain")
        require(cfg.dataset.crop_padding >= 0, "dataset.crop_padding", cfg.dataset.crop_padding, "it must be >= 0")
        SolverSpec.from_config(cfg.solver, default_adjoint=cfg.model.adjoint)

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        name, profile = cfg.model.name, cfg.profile
        entry = MODELS[name]
        unread = super().unread(cfg)
        model_keys = tuple(k for k in schema_keys("model", name) if k != "name" and k not in entry.reads)
        unread.append(Unread("model", model_keys, f"on model={name}; it reads model.{', model.'.join(entry.reads)}",
                             option=name))
        if not entry.has_ode_block:
            unread.append(Unread("solver", schema_keys("solver"), f"on model={name}, which has no ODE block; drop "
                                 "the solver options", option="dopri5"))
        if not cfg.model.augment:
            unread.append(Unread("dataset", ("crop_padding",), "with model.augment=false (no random crops); set "
                                 "model.augment=true or drop it", option="mnist"))
        if profile.lr_schedule != "multistep":
            unread.append(Unread("profile", ("lr_milestones", "lr_gamma"), f"with profile.lr_schedule="
                                 f"{profile.lr_schedule}: only multistep reads it", option=profile.name))
        return unread

    @classmethod
    def trains_ode(cls, cfg: DictConfig) -> bool:
        return MODELS[cfg.model.name].has_ode_block

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        has_ode = MODELS[cfg.model.name].has_ode_block
        solver = SolverSpec.from_config(cfg.solver, default_adjoint=cfg.model.adjoint).describe() if has_ode else {}
        available = MNIST_TRAIN_SIZE - cfg.dataset.val_size
        train_size = min(cfg.profile.train_size or available, available)
        return {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "epochs": cfg.profile.epochs,
            **solver,
            "train_size": train_size - train_size % cfg.profile.batch_size,
            "n_blocks": cfg.model.n_blocks if cfg.model.name == "resnet" else None,
            "batch_size": cfg.profile.batch_size,
            "lr": cfg.profile.lr,
            "world_size": World.from_environment().size,
            "val_size": cfg.dataset.val_size,
        }

    def __init__(self, cfg: DictConfig, **env) -> None:
        super().__init__(cfg, **env)
        profile, world, device = cfg.profile, self.world, self.device
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.generators = (self.generator,)
        # one process fetches MNIST while the others wait, then every process reads the verified files
        data = world.main_first(lambda: load_mnist(cfg.data_dir, log=self.log))
        # The validation set is the last val_size training images, the same for every seed; training draws
        # from the images before them only.
        kept = MNIST_TRAIN_SIZE - cfg.dataset.val_size
        self.train_images = data.train_images[:kept][: profile.train_size].to(device)
        self.train_labels = data.train_labels[:kept][: profile.train_size].to(device)
        test_images, test_labels = data.test_images[: profile.test_size], data.test_labels[: profile.test_size]
        # Under torchrun each rank evaluates a contiguous part of the test (and validation) set; the counts
        # are summed.
        self.test_count = len(test_images)
        self.test_images, self.test_labels = self.rank_part(test_images, test_labels)
        self.val_count = cfg.dataset.val_size
        self.val_images, self.val_labels = self.rank_part(data.train_images[kept:], data.train_labels[kept:])

        self.solver = SolverSpec.from_config(cfg.solver, default_adjoint=cfg.model.adjoint)
        self.model = build_model(cfg.model, self.solver).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=profile.lr, momentum=profile.momentum,
                                         weight_decay=profile.weight_decay, nesterov=profile.nesterov)
        self.epochs = profile.epochs
        self.steps_per_epoch = len(self.train_images) // profile.batch_size
        self.scheduler = self.make_scheduler()
        if profile.lr_schedule == "multistep":
            self.scheduler_interval = "epoch"
        # Evaluated (and saved as the final weights) instead of the trained weights when set.
        self.ema = None
        if profile.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(profile.ema_decay),
                                     use_buffers=True)
        if cfg.precision == "bf16-mixed":  # autocast; the ODE blocks keep their states in float32
            self.autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16)
        else:
            self.autocast = nullcontext
        self.local_rows = world.shard(profile.batch_size)  # this rank's rows of every global batch
        self.order = None  # int64 [train_size]: the epoch's permutation
        # Per-epoch curves and per-iteration NFE, saved with the final weights for the figures.
        self.history = self.empty_history()

    @staticmethod
    def empty_history() -> dict:
        return {"epoch": [], "test_error": [], "train_error": [], "train_loss": [], "test_loss": [],
                "val_error": [], "val_loss": [], "epoch_time_s": [], "nfe_forward": [], "nfe_backward": []}

    def rank_part(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's contiguous share of an evaluation set, on the device (the whole set without torchrun)."""
        world = self.world
        part = -(-len(images) // world.size)
        rows = slice(world.rank * part, (world.rank + 1) * part)
        return images[rows].to(self.device), labels[rows].to(self.device)

    def evaluate_on(self, images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[float, float]:
        """(error %, mean cross-entropy) of the evaluated weights on an evaluation set of `count` images
        summed over the processes."""
        wrong, loss_sum = self.world.sum(list(evaluate(self.evaluated_model, images, labels,
                                                       self.cfg.profile.eval_batch_size, self.autocast)),
                                         self.device)
        return 100.0 * wrong / count, loss_sum / count

    def make_scheduler(self):
        """multistep: the paper's x lr_gamma at the given epochs. cosine or linear: per iteration to 0
        (short budgets), after a linear warm-up from 0 over profile.warmup_epochs."""
        profile, optimizer = self.cfg.profile, self.optimizer
        sched = torch.optim.lr_scheduler
        if profile.lr_schedule == "multistep":
            return sched.MultiStepLR(optimizer, milestones=list(profile.lr_milestones), gamma=profile.lr_gamma)
        total = profile.epochs * self.steps_per_epoch
        warmup = round(profile.warmup_epochs * self.steps_per_epoch)
        if profile.lr_schedule == "cosine":
            decay = sched.CosineAnnealingLR(optimizer, T_max=total - warmup)
        else:
            decay = sched.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / (total - warmup)))
        if warmup == 0:
            return decay
        rise = sched.LambdaLR(optimizer, lambda step: (step + 1) / (warmup + 1))
        return sched.SequentialLR(optimizer, [rise, decay], milestones=[warmup])

    def summary(self) -> str:
        cfg, world = self.cfg, self.world
        text = f"model={cfg.model.name} batch={cfg.profile.batch_size}"
        if world.distributed:
            text += f" (torchrun: {world.size} processes x {cfg.profile.batch_size // world.size})"
        if MODELS[cfg.model.name].has_ode_block:
            text += f" solver={self.solver.method} rtol={self.solver.rtol:g} atol={self.solver.atol:g}"
        return text

    def start_epoch(self, epoch: int) -> None:
        self.order = epoch_permutation(len(self.train_images), self.generator)

    def batch(self, step: int):
        size = self.cfg.profile.batch_size
        index = self.order[step * size : (step + 1) * size]
        x = to_float(self.train_images[index])
        if self.cfg.model.augment:  # the whole global batch, so every rank's generator stays in step
            x = random_crop(x, self.cfg.dataset.crop_padding, self.generator)
        return x[self.local_rows], self.train_labels[index][self.local_rows]

    def loss(self, batch):
        x, y = batch
        with self.autocast():
            logits = self.model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.profile.label_smoothing)
        return loss, {"samples": len(y), "wrong": (logits.argmax(1) != y).sum().item()}

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights the test error is measured on: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, summary: EpochSummary) -> str:
        test_error, test_loss = self.evaluate_on(self.test_images, self.test_labels, self.test_count)
        val_error = val_loss = None
        if self.val_count:
            val_error, val_loss = self.evaluate_on(self.val_images, self.val_labels, self.val_count)
        seen = summary.tallies["samples"]
        train_error, train_loss = 100.0 * summary.tallies["wrong"] / seen, summary.loss_sum / seen
        for key, value in (("epoch", summary.epoch), ("test_error", test_error), ("train_error", train_error),
                           ("train_loss", train_loss), ("test_loss", test_loss), ("val_error", val_error),
                           ("val_loss", val_loss),
                           ("epoch_time_s", summary.elapsed_s), ("nfe_forward", summary.nfe_forward),
                           ("nfe_backward", summary.nfe_backward)):
            self.history[key].append(value)
        self.epoch_metrics = {"test_error": test_error, "train_error": train_error, "train_loss": train_loss,
                              "test_loss": test_loss}
        if self.val_count:
            self.epoch_metrics.update(val_error=val_error, val_loss=val_loss)
        line = (f"epoch {summary.epoch}/{self.epochs} loss {train_loss:.4f} train_err {train_error:.2f}% "
                f"test_err {test_error:.2f}% ")
        if self.val_count:
            line += f"val_err {val_error:.2f}% "
        line += f"time {summary.elapsed_s:.1f}s"
        if summary.nfe_forward and MODELS[self.cfg.model.name].has_ode_block:
            line += (f" nfe_fwd {statistics.fmean(summary.nfe_forward):.1f}"
                     f" nfe_bwd {statistics.fmean(summary.nfe_backward):.1f}")
        return line

    def finish(self, final_loss: float) -> dict:
        history, cfg = self.history, self.cfg
        self.log(f"[noderun] {cfg.model.name}: test error {history['test_error'][-1]:.2f}%")
        if self.world.is_main:
            self.save_final_weights()
        return {
            "test_error": round(history["test_error"][-1], 4),
            "train_error": round(history["train_error"][-1], 4),
            "test_loss": round(history["test_loss"][-1], 6),
            "epoch_time_s": round(history["epoch_time_s"][-1], 3),
            "val_error": round(history["val_error"][-1], 4) if self.val_count else None,
            "val_loss": round(history["val_loss"][-1], 6) if self.val_count else None,
        }

    def save_final_weights(self) -> Path:
        """Final weights, the resolved config and the training history, written atomically."""
        import io

        cfg = self.cfg
        path = final_weights_path(cfg.results_dir, cfg.experiment_name, cfg.model.name, cfg.profile.name, cfg.seed,
                                  artifact_suffix(cfg.get("regularizer")))
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        weights = self.evaluated_model.state_dict()
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in weights.items()},
                    "config": OmegaConf.to_container(cfg, resolve=True), "history": self.history}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def state_dict(self) -> dict:
        return {"order": self.order, "history": self.history, "ema": self.ema.state_dict() if self.ema else None}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint's history may predate the validation lists: they are filled with None for its epochs.
        epochs = len(state["history"]["epoch"])
        self.order = state["order"]
        self.history = {key: [None] * epochs for key in self.empty_history()} | state["history"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
