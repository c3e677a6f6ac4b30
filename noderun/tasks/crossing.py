"""Beyond the paper: functions an ODE flow cannot represent, and augmented ODEs (Dupont, Doucet & Teh 2019).

Regression of a ±1 label (noderun.data.crossing) by the flow of an ODE (noderun.models.crossing):
plain (model=crossing_ode, model.augment_dim=0) or augmented with model.augment_dim zero
dimensions (model=crossing_anode; by default the data set's anode_augment_dim: 1 for crossing_1d,
enough for a half turn that swaps the two classes, 5 for crossing_2d, Dupont et al.'s setting).
Dynamics: a time-dependent MLP on the state, solved with `SolverSpec` (dopri5 at 1e-3, adjoint: the ODE-Net's settings and Dupont et al.'s). Loss: the
Huber (smooth L1) loss of Dupont et al., trained with Adam on minibatches of a fixed training set
(reshuffled whenever it is used up) for model.iterations[profile] steps.

Evaluation: the loss on the whole training set (train_loss) and on a held-out test set drawn with
dataset.test_seed (test_loss), and the test accuracy (% of test points whose output has the sign of
their label). The runner's nfe_forward / nfe_backward are the NFE per training iteration averaged
over the last 10 % of the iterations. Each run saves the arrays its figures need (trajectories of a
few inputs for t in [0, 1], the final states of test points, the readout, per-iteration loss and
NFE) under results_dir/crossing/<profile>/; `noderun plot` draws them (noderun.report.crossing).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from noderun.config import Unread
from noderun.data.crossing import sample
from noderun.models.crossing import READOUTS, CrossingODE
from noderun.models.regularization import artifact_suffix
from noderun.models.solver import SolverSpec
from noderun.tasks.base import EpochSummary, Task, artifacts_folder, require

MODELS = ("crossing_ode", "crossing_anode")
DATASETS = ("crossing_1d", "crossing_2d")
TRAJECTORY_TIMES = 41  # points of each saved trajectory over [0, 1]
SAVED_FEATURES = 1000  # test points whose final state is saved for the figure


def artifact_path(results_dir, profile: str, dataset: str, model: str, augment_dim: int, seed: int,
                  suffix: str = "", experiment: str | None = None) -> Path:
    """suffix: a regularised run's (noderun.models.regularization.artifact_suffix). experiment: the run's
    experiment_name (the figure's own: crossing; noderun.tasks.base.artifacts_folder)."""
    folder = artifacts_folder(results_dir, "crossing", profile, experiment, "crossing")
    return folder / f"{dataset}_{model}_a{augment_dim}_s{seed}{suffix}.npz"


def model_label(augment_dim: int) -> str:
    """The row's model: ode for the plain ODE, anode for an augmented one."""
    return "anode" if augment_dim > 0 else "ode"


def plot_inputs(dataset_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs whose trajectories the figure shows: (x [P, D], y [P, 1])."""
    if dataset_cfg.name == "crossing_1d":
        w = float(dataset_cfg.half_width)
        offsets = torch.linspace(-w, w, 5) if w > 0 else torch.zeros(1)
        x = torch.cat([-1 + offsets, 1 + offsets]).unsqueeze(1)
        return x, -torch.sign(x)
    x, y = sample(dataset_cfg, 400, int(dataset_cfg.test_seed) + 1)
    keep = torch.cat([torch.nonzero(y[:, 0] < 0)[:16, 0], torch.nonzero(y[:, 0] > 0)[:24, 0]])
    return x[keep], y[keep]


class CrossingTask(Task):
    name = "crossing"
    profile_budget = "set model.iterations.<profile>, model.lr.<profile> and model.batch_size instead"
    columns = (
        "augment_dim",  # zero dimensions appended to the ODE state (0: the plain ODE)
        "hidden",  # units of the dynamics' hidden layers
        "readout",  # state (the flow's own first coordinate) or linear (a linear map of the state)
        "iterations",
        "batch_size",
        "lr",
        "train_loss",  # Huber loss on the whole training set after training
        "test_loss",  # ... on the test set
        "test_accuracy",  # % of test points whose output has the sign of their label
    )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        model, data, profile = cfg.model, cfg.dataset, cfg.profile.name
        require(model.get("name") in MODELS, "model.name", model.get("name"),
                f"the crossing task takes: {list(MODELS)}")
        require(data.get("name") in DATASETS, "dataset.name", data.get("name"),
                f"the crossing task takes: {list(DATASETS)}")
        require(model.augment_dim >= 0, "model.augment_dim", model.augment_dim,
                "it must be an integer >= 0 (0: the plain ODE)")
        for key in ("hidden", "batch_size"):
            require(model[key] >= 1, f"model.{key}", model[key], "it must be an integer >= 1")
        require(model.threads is None or model.threads >= 1, "model.threads", model.threads,
                "it must be null (torch's default) or an integer >= 1")
        for key in ("iterations", "lr"):
            require(profile in model[key], f"model.{key}", dict(model[key]),
                    f"it needs an entry for profile {profile!r}")
        require(model.iterations[profile] >= 1, f"model.iterations.{profile}", model.iterations[profile],
                "it must be an integer >= 1")
        lr = model.lr[profile]
        require(math.isfinite(lr) and lr > 0, f"model.lr.{profile}", lr, "it must be a finite number > 0")
        for key in ("n_train", "n_test"):
            require(data[key] >= 2, f"dataset.{key}", data[key], "it must be an integer >= 2 (both classes)")
        require(model.batch_size <= data.n_train, "model.batch_size", model.batch_size,
                f"it must be at most dataset.n_train={data.n_train}")
        require(data.readout in READOUTS, "dataset.readout", data.readout, f"valid: {list(READOUTS)}")
        require(data.anode_augment_dim >= 1, "dataset.anode_augment_dim", data.anode_augment_dim,
                "it must be an integer >= 1")
        if data.name == "crossing_1d":
            require(0 <= data.half_width < 1, "dataset.half_width", data.half_width,
                    "it must be in [0, 1): the two classes' intervals must not meet")
        else:
            require(data.readout == "linear", "dataset.readout", data.readout,
                    "crossing_2d reads a 2-D state out with readout=linear")
            require(0 < data.inner_radius < data.outer_min < data.outer_max, "dataset.inner_radius",
                    data.inner_radius, f"it needs 0 < inner_radius < outer_min={data.outer_min} "
                                       f"< outer_max={data.outer_max}")
            require(0 < data.inner_fraction < 1, "dataset.inner_fraction", data.inner_fraction,
                    "it must be in (0, 1)")
        SolverSpec.from_config(cfg.solver, default_adjoint=model.adjoint)

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        unread = super().unread(cfg)
        model, data = cfg.model, cfg.dataset
        # model=crossing_anode takes its augment_dim from the data set's anode_augment_dim, unless set itself
        if not (model.name == "crossing_anode" and model.augment_dim == data.anode_augment_dim):
            unread.append(Unread("dataset", ("anode_augment_dim",), f"with model={model.name} model.augment_dim="
                                 f"{model.augment_dim} (it is model=crossing_anode's default augment_dim); set "
                                 "model.augment_dim instead", option=data.name))
        return unread

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        m, profile = cfg.model, cfg.profile.name
        solver = SolverSpec.from_config(cfg.solver, default_adjoint=m.adjoint)
        return {
            "model": model_label(m.augment_dim), "dataset": cfg.dataset.name, **solver.describe(),
            "augment_dim": m.augment_dim, "hidden": m.hidden, "readout": cfg.dataset.readout,
            "iterations": int(m.iterations[profile]), "batch_size": m.batch_size, "lr": float(m.lr[profile]),
        }

    @classmethod
    def cpu_threads(cls, cfg: DictConfig):
        return cfg.model.threads

    def __init__(self, cfg: DictConfig, **env) -> None:
        super().__init__(cfg, **env)
        m, data, device = cfg.model, cfg.dataset, self.device
        self.generator = torch.Generator().manual_seed(cfg.seed)  # minibatch order
        self.generators = (self.generator,)
        self.train_x, self.train_y = (t.to(device) for t in sample(data, data.n_train, data.seed))
        self.test_x, self.test_y = (t.to(device) for t in sample(data, data.n_test, data.test_seed))
        self.solver = SolverSpec.from_config(cfg.solver, default_adjoint=m.adjoint)
        self.model = CrossingODE(self.train_x.shape[1], m.augment_dim, m.hidden, data.readout, self.solver).to(device)
        self.steps_per_epoch = int(m.iterations[cfg.profile.name])
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(m.lr[cfg.profile.name]))
        self.order, self.position = None, 0  # the current pass over the training set
        self.losses: list[float] = []  # per training iteration
        self.nfe = {"nfe_forward": [], "nfe_backward": []}  # per training iteration, from the runner

    def summary(self) -> str:
        m, s = self.cfg.model, self.solver
        return (f"crossing: {self.cfg.dataset.name} {model_label(m.augment_dim)} augment_dim={m.augment_dim} "
                f"hidden={m.hidden} readout={self.cfg.dataset.readout} lr={self.optimizer.defaults['lr']:g} "
                f"batch={m.batch_size} solver={s.method} rtol={s.rtol:g} atol={s.atol:g} adjoint={s.adjoint}")

    def batch(self, step: int):
        size, n = self.cfg.model.batch_size, len(self.train_x)
        if self.order is None or self.position + size > n:  # a new pass: reshuffle (the rest of the last is dropped)
            self.order, self.position = torch.randperm(n, generator=self.generator), 0
        index = self.order[self.position : self.position + size].to(self.device)
        self.position += size
        return self.train_x[index], self.train_y[index]

    def loss(self, batch):
        x, y = batch
        loss = F.smooth_l1_loss(self.model(x), y)
        self.losses.append(loss.item())
        return loss, {}

    def end_epoch(self, summary: EpochSummary):
        self.nfe["nfe_forward"] += list(summary.nfe_forward)
        self.nfe["nfe_backward"] += list(summary.nfe_backward)
        return None

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(Huber loss, % of outputs with the sign of the label), without a graph."""
        with torch.no_grad():
            out = self.model.readout(self.model.flow(x, adjoint=False))
        return F.smooth_l1_loss(out, y).item(), 100.0 * (torch.sign(out) == y).float().mean().item()

    def finish(self, final_loss: float) -> dict:
        cfg, m, model = self.cfg, self.cfg.model, self.model
        train_loss, _ = self.evaluate(self.train_x, self.train_y)
        test_loss, accuracy = self.evaluate(self.test_x, self.test_y)
        row = {"train_loss": round(train_loss, 6), "test_loss": round(test_loss, 6),
               "test_accuracy": round(accuracy, 3)}
        self.log(f"[noderun] crossing {cfg.dataset.name} {model_label(m.augment_dim)} (augment_dim={m.augment_dim}): "
                 f"train loss {train_loss:.4f} test loss {test_loss:.4f} test accuracy {accuracy:.1f}%")
        x, y = plot_inputs(cfg.dataset)
        times = torch.linspace(0.0, 1.0, TRAJECTORY_TIMES)
        features_x, features_y = self.test_x[:SAVED_FEATURES], self.test_y[:SAVED_FEATURES]
        with torch.no_grad():
            trajectories = model.trajectory(x.to(self.device), times.to(self.device))
            features = model.flow(features_x, adjoint=False)
            outputs = model.readout(features)
        weight = model.linear.weight[0] if model.linear is not None else torch.zeros(0)
        bias = model.linear.bias if model.linear is not None else torch.zeros(0)
        arrays = {
            "times": times.numpy(), "plot_x": x.numpy(), "plot_y": y[:, 0].numpy(),
            "trajectories": trajectories.cpu().numpy(),
            "features": features.cpu().numpy(), "feature_labels": features_y[:, 0].cpu().numpy(),
            "outputs": outputs[:, 0].cpu().numpy(),
            "readout_weight": weight.detach().cpu().numpy(), "readout_bias": bias.detach().cpu().numpy(),
            "loss": np.asarray(self.losses, dtype=np.float32),
            "nfe_forward": np.asarray(self.nfe["nfe_forward"], dtype=np.int32),
            "nfe_backward": np.asarray(self.nfe["nfe_backward"], dtype=np.int32),
            "data_dim": np.int32(model.data_dim), "augment_dim": np.int32(model.augment_dim),
        }
        path = artifact_path(cfg.results_dir, cfg.profile.name, cfg.dataset.name, model_label(m.augment_dim),
                             m.augment_dim, cfg.seed, artifact_suffix(cfg.get("regularizer")), cfg.experiment_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return row

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position, "losses": self.losses, "nfe": self.nfe}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position = state["order"], state["position"]
        self.losses, self.nfe = list(state["losses"]), state["nfe"]
