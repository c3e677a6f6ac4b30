"""Continuous normalizing flows: planar CNF against planar NF (Figures 4 and 5 of Chen et al. 2018).

Density matching (dataset=energy, Figure 4): fit q to p ∝ exp(-U) for the potentials U1, U2,
U3 of Rezende & Mohamed (noderun.data.densities) by minimising E_q[log q(z) + U(z)] (the
paper's loss, KL(q‖p) up to log Z) over samples of q; NF with K layers against CNF with M
hidden units. The row also records KL(q‖p) itself (log Z from a grid).

Maximum likelihood (dataset=two_circles or two_moons, Figure 5): CNF with M = 64 against an
NF of 64 one-unit layers, trained on fresh samples every iteration; test NLL in nats on a
held-out sample drawn with another seed, beside the data's own density's NLL on the same sample
(noderun.data.densities.toy_log_prob), the floor no flow can go below, and the excess over it.

The CNF trains with Adam, the NF with RMSprop (as in the paper). Iterations and learning
rates are per profile (model.iterations, model.lr); each run saves the arrays its figures
need under results_dir/flows/<profile>/ and `noderun plot` draws them.

This is the smallest task, and the example of what a task writes: checks, the columns that
name its cell, the model and optimiser, a batch, its loss, and the final evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from noderun.config import Unread, schema_keys
from noderun.data.densities import (ENERGIES, GRID, SNAPSHOTS, TOY_DATASETS, density_grid, energy, log_normalizer,
                                    sample_toy, toy_log_prob)
from noderun.models.flows import PlanarCNF, PlanarNF
from noderun.models.regularization import artifact_suffix
from noderun.models.solver import SolverSpec
from noderun.tasks.base import Task, artifacts_folder, require

MODELS = ("planar_nf", "planar_cnf")
LR_SCHEDULES = ("constant", "cosine")


def artifact_path(results_dir, profile: str, kind: str, model: str, target: str, width: int, seed: int,
                  suffix: str = "", experiment: str | None = None) -> Path:
    """suffix: a regularised run's (noderun.models.regularization.artifact_suffix). experiment: the run's
    experiment_name (Figure 4's and 5's own: flows_density, flows_mle; noderun.tasks.base.artifacts_folder)."""
    folder = artifacts_folder(results_dir, "flows", profile, experiment, f"flows_{kind}")
    return folder / f"{kind}_{target}_{model}_w{width}_s{seed}{suffix}.npz"


def kind_of(cfg: DictConfig) -> str:
    """density (Figure 4) or mle (Figure 5)."""
    return "density" if cfg.dataset.name == "energy" else "mle"


def target_of(cfg: DictConfig) -> str:
    return cfg.dataset.target if kind_of(cfg) == "density" else cfg.dataset.name


class FlowsTask(Task):
    name = "flows"
    profile_budget = ("set model.iterations.<profile>, model.lr.<profile> and model.batch_size (samples per "
                      "iteration) instead")
    columns = (
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
        "true_nll",  # mle: the data's own density's NLL on the same test sample (the floor), nats
        "excess_nll",  # mle: test_nll - true_nll, nats
    )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        model, data, profile = cfg.model, cfg.dataset, cfg.profile.name
        require(model.get("name") in MODELS, "model.name", model.get("name"), f"the flows task takes: {list(MODELS)}")
        require(data.get("name") in ("energy",) + TOY_DATASETS, "dataset.name", data.get("name"),
                f"the flows task takes: {['energy', *TOY_DATASETS]}")
        if data.name == "energy":
            require(data.target in ENERGIES, "dataset.target", data.target, f"valid targets: {list(ENERGIES)}")
        else:
            require(data.noise >= 0, "dataset.noise", data.noise, "it must be >= 0")
        for key in ("width", "hidden", "batch_size", "eval_samples"):
            require(model[key] >= 1, f"model.{key}", model[key], "it must be an integer >= 1")
        require(model.threads is None or model.threads >= 1, "model.threads", model.threads,
                "it must be null (torch's default) or an integer >= 1")
        require(model.t_end > 0, "model.t_end", model.t_end, "it must be > 0")
        require(model.trace in ("exact", "hutchinson"), "model.trace", model.trace, "valid: ['exact', 'hutchinson']")
        for key in ("iterations", "lr"):
            require(profile in model[key], f"model.{key}", dict(model[key]), f"it needs an entry for profile {profile!r}")
        require(model.iterations[profile] >= 1, f"model.iterations.{profile}", model.iterations[profile],
                "it must be an integer >= 1")
        lr = model.lr[profile]
        require(math.isfinite(lr) and lr > 0, f"model.lr.{profile}", lr, "it must be a finite number > 0")
        require(model.lr_schedule in LR_SCHEDULES, "model.lr_schedule", model.lr_schedule,
                f"valid schedules: {list(LR_SCHEDULES)}")
        for name, tol in model.tolerance.items():
            require(tol > 0, f"model.tolerance.{name}", tol, "it must be > 0")
        SolverSpec.from_config(cfg.solver, default_adjoint=True)

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        unread = super().unread(cfg)
        if cfg.model.name == "planar_nf":
            unread.append(Unread("model", ("hidden", "t_end", "trace", "tolerance"), "on model=planar_nf (they "
                                 "configure the planar CNF); drop it", option="planar_nf"))
            unread.append(Unread("solver", schema_keys("solver"), "on model=planar_nf, which has no ODE; drop the "
                                 "solver options", option="dopri5"))
        return unread

    @classmethod
    def trains_ode(cls, cfg: DictConfig) -> bool:
        return cfg.model.name == "planar_cnf"

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        is_cnf = cfg.model.name == "planar_cnf"
        solver = SolverSpec.from_config(cfg.solver, default_adjoint=True).describe() if is_cnf else {}
        return {
            "model": cfg.model.name, "dataset": target_of(cfg), **solver, "kind": kind_of(cfg),
            "target": target_of(cfg), "width": cfg.model.width,
            "iterations": int(cfg.model.iterations[cfg.profile.name]), "batch_size": cfg.model.batch_size,
            "lr": float(cfg.model.lr[cfg.profile.name]), "trace": cfg.model.trace if is_cnf else None,
        }

    @classmethod
    def cpu_threads(cls, cfg: DictConfig):
        return cfg.model.threads

    def __init__(self, cfg: DictConfig, **env) -> None:
        super().__init__(cfg, **env)
        m, profile, device = cfg.model, cfg.profile.name, self.device
        self.kind, self.target = kind_of(cfg), target_of(cfg)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)  # base samples
        self.data_generator = torch.Generator().manual_seed(cfg.seed)  # training data (maximum likelihood)
        self.generators = (self.generator, self.data_generator)
        if m.name == "planar_nf":
            # density matching pushes base samples to the target; maximum likelihood normalizes data
            flow = PlanarNF(m.width, direction="generative" if self.kind == "density" else "normalizing")
            optimizer = torch.optim.RMSprop
        else:
            flow = PlanarCNF(m.width, hidden=m.hidden, t_end=m.t_end, trace=m.trace,
                             solver=SolverSpec.from_config(cfg.solver, default_adjoint=True))
            optimizer = torch.optim.Adam
        self.model = flow.to(device)
        iterations, lr = int(m.iterations[profile]), float(m.lr[profile])
        self.steps_per_epoch = iterations
        self.optimizer = optimizer(self.model.parameters(), lr=lr)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=iterations)
                          if m.lr_schedule == "cosine" else None)
        self.test_x = None
        if self.kind == "mle":
            test_generator = torch.Generator().manual_seed(cfg.dataset.test_seed)
            self.test_x = sample_toy(self.target, m.eval_samples, test_generator, cfg.dataset.noise).to(device)

    def summary(self) -> str:
        m = self.cfg.model
        text = (f"flows/{self.kind}: model={m.name} width={m.width} target={self.target} "
                f"lr={self.optimizer.defaults['lr']:g} ({m.lr_schedule}) batch={m.batch_size}")
        if m.name == "planar_cnf":
            s = self.model.solver
            text += f" solver={s.method} rtol={s.rtol:g} atol={s.atol:g} trace={m.trace}"
        return text

    def batch(self, step: int) -> torch.Tensor:
        n = self.cfg.model.batch_size
        if self.kind == "density":
            return torch.randn(n, 2, generator=self.generator, device=self.device)  # base samples of q
        return sample_toy(self.target, n, self.data_generator, self.cfg.dataset.noise).to(self.device)

    def density_loss(self, z0: torch.Tensor) -> torch.Tensor:
        """E_q[log q(z) + U(z)] over base samples z0."""
        z, logq = self.model.sample(z0)
        return (logq + energy(self.target, z)).mean()

    def loss(self, batch):
        if self.kind == "density":
            return self.density_loss(batch), {}
        return -self.model.log_prob(batch).mean(), {}

    def finish(self, final_loss: float) -> dict:
        cfg, m, device, flow = self.cfg, self.cfg.model, self.device, self.model
        eval_generator = torch.Generator(device=device).manual_seed(10_000 + cfg.seed)
        row = {}
        with torch.no_grad():
            if self.kind == "density":
                z0 = torch.randn(m.eval_samples, 2, generator=eval_generator, device=device)
                loss = float(self.density_loss(z0))
                row = {"loss": round(loss, 5), "kl": round(loss + log_normalizer(self.target), 5)}
                self.log(f"[noderun] {m.name} width={m.width} {self.target}: loss {row['loss']:.4f} "
                         f"KL {row['kl']:.4f} nats")
            else:
                test_nll = float(-flow.log_prob(self.test_x).mean())
                true_nll = float(-toy_log_prob(self.target, self.test_x, cfg.dataset.noise).mean())
                row = {"loss": round(final_loss, 5), "test_nll": round(test_nll, 5), "true_nll": round(true_nll, 5),
                       "excess_nll": round(test_nll - true_nll, 5)}
                self.log(f"[noderun] {m.name} width={m.width} {self.target}: test NLL {row['test_nll']:.4f} nats")
            density = flow.log_prob(density_grid(device)).exp()
            arrays = {"density": density.reshape(GRID, GRID).cpu().numpy(),
                      "samples": flow.snapshots(torch.randn(2000, 2, generator=eval_generator, device=device),
                                                SNAPSHOTS).cpu().numpy()}
        if self.test_x is not None:
            arrays["data"] = self.test_x[:2000].cpu().numpy()
        path = artifact_path(cfg.results_dir, cfg.profile.name, self.kind, m.name, self.target, m.width, cfg.seed,
                             artifact_suffix(cfg.get("regularizer")), cfg.experiment_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return row
