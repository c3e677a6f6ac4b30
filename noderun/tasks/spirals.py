"""Irregularly sampled spirals: Table 2 (latent ODE against RNN, predictive RMSE) and Figure 8.

Both models see only the n_obs noisy observations of each trajectory's observation window;
both are scored by the same function (noderun.data.spirals.rmse) on the noiseless time
points after that window, on held-out trajectories. Training budgets (iterations per
profile, learning rate) belong to the model config: this task reads only
`cfg.profile.name` (smoke, quick, paper) of the profile group and refuses its other keys.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from noderun.config import Unread, schema_keys
from noderun.data.spirals import TRAIN_COVERAGES, rmse, spirals_from_config, trajectory_rmse
from noderun.models.regularization import artifact_suffix
from noderun.models.solver import SolverSpec
from noderun.tasks.base import Task, require

MODELS = ("latent_ode", "rnn")
CELLS = ("gru", "rnn")
PAPER_N_OBS = (30, 50, 100)
FIGURE_TRAJECTORIES = 4  # test trajectories each run keeps for the figure: the first ones and the worst ones
# The latent ODE trains and extrapolates at the tolerances of its solver config; every run also
# re-solves the test extrapolation at this tolerance (rtol = atol) and records that RMSE beside.
TIGHT_TOLERANCE = 1e-7
# A test trajectory whose own RMSE exceeds this has run away (the column test_frac_above_1 counts them).
RUNAWAY_RMSE = 1.0
# Restart r > 0 initialises from torch.manual_seed(RESTART_SEED_STRIDE * r + seed): apart from every run seed.
RESTART_SEED_STRIDE = 1_000_003


def method_label(model: str, consistency: float | None, dyn_layers: int = 1) -> str:
    """What a run trained: `rnn`, `latent_ode_elbo` (the paper's objective, consistency 0) or
    `latent_ode` (the ELBO plus noderun's suffix-consistency term), with `_dyn<k>` for dynamics of
    k != 1 hidden layers (the paper's is one)."""
    label = "latent_ode_elbo" if model == "latent_ode" and not consistency else model
    return f"{label}_dyn{dyn_layers}" if model == "latent_ode" and dyn_layers != 1 else label


def predictions_path(results_dir, experiment: str, profile: str, n_obs: int, noise_std: float, label: str, seed: int,
                     data: int, suffix: str = "") -> Path:
    """A run's test predictions (some trajectories) and its per-trajectory RMSE, for `noderun plot`:
    results_dir/spirals/<experiment>/<profile>_n<n_obs>_noise<noise>_<label>_seed<seed>_data<data seed>.npz."""
    name = f"{profile}_n{n_obs}_noise{noise_std:g}_{label}_seed{seed}_data{data}{suffix}.npz"
    return Path(results_dir) / "spirals" / experiment / name


def data_seed(cfg: DictConfig) -> int:
    """The seed that draws the spirals: dataset.seed, or the run's seed when it is null."""
    return cfg.dataset.seed if cfg.dataset.seed is not None else cfg.seed


def solver_spec(cfg: DictConfig) -> SolverSpec:
    # the RNN has no ODE: its solver spec is checked like any other but never used
    return SolverSpec.from_config(cfg.solver, default_adjoint=cfg.model.get("adjoint", True))


class SpiralsTask(Task):
    name = "spirals"
    profile_budget = "set model.iterations.<profile> and model.lr (Adam, cosine-annealed to model.lr_min) instead"
    columns = (
        "n_obs",  # observed points per trajectory (of the observation window)
        "iterations",  # optimiser steps
        "n_train",  # training trajectories
        "n_test",  # test trajectories
        "noise_std",  # observation noise of the data
        "consistency",  # latent ODE: weight of the suffix-consistency term (0: the paper's ELBO); RNN: empty
        "data_seed",  # the seed that drew the spirals (dataset.seed, or the run's seed when it is null)
        "train_coverage",  # forecast: training windows cover every angle a test forecast reaches; same: as test
        "n_val",  # training trajectories held out for validation
        "final_loss",  # training loss (negative ELBO or NLL per trajectory) of the last iteration
        "val_loss",  # the lowest validation loss (the model's own objective), whose weights are scored
        "best_iteration",  # the iteration of that validation loss: the weights the test RMSE is of ...
        "restarts",  # initialisations trained one after the other (model.restarts), each for `iterations`
        "best_restart",  # ... and the restart (1-based) they come from
        "test_rmse",  # RMSE on the extrapolation window of the test trajectories (noiseless targets)
        "test_rmse_median",  # median over test trajectories of each one's RMSE there: the typical trajectory
        "test_frac_above_1",  # fraction of the test trajectories whose own RMSE there exceeds 1.0 (runaways)
        "test_rmse_tight",  # latent ODE: test_rmse with the extrapolation re-solved at rtol = atol = 1e-7
    )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        model, data = cfg.model, cfg.dataset
        require(model.name in MODELS, "model.name", model.name, f"the spirals task takes models: {list(MODELS)}")
        require(data.name == "spirals", "dataset.name", data.name, "the spirals task takes: ['spirals']")
        profile = cfg.profile.name
        require(profile in model.iterations, "profile", profile,
                f"model.iterations names the budgets of profiles {sorted(model.iterations)}")
        for name, steps in model.iterations.items():
            require(isinstance(steps, int) and steps >= 1, f"model.iterations.{name}", steps,
                    "it must be an integer >= 1")
        require(math.isfinite(model.lr) and model.lr > 0, "model.lr", model.lr, "it must be a finite number > 0")
        require(math.isfinite(model.lr_min) and 0 <= model.lr_min <= model.lr, "model.lr_min", model.lr_min,
                f"it must be in [0, model.lr={model.lr}]")
        require(model.batch_size is None or 1 <= model.batch_size <= data.n_train, "model.batch_size",
                model.batch_size, f"it must be null (all) or in [1, dataset.n_train={data.n_train}]")
        require(model.threads is None or model.threads >= 1, "model.threads", model.threads,
                "it must be null (torch's default) or an integer >= 1")
        require(model.eval_every >= 1, "model.eval_every", model.eval_every, "it must be an integer >= 1")
        require(model.restarts >= 1, "model.restarts", model.restarts, "it must be an integer >= 1")
        steps = model.iterations[profile]
        require(steps < model.eval_every or steps % model.eval_every == 0, f"model.iterations.{profile}", steps,
                f"it must be a multiple of model.eval_every={model.eval_every} (or below it: one validation at the end)")
        require(model.cell in CELLS, "model.cell", model.cell, f"valid cells: {list(CELLS)}")
        require(model.gap_scale > 0, "model.gap_scale", model.gap_scale, "it must be > 0")
        if model.name == "latent_ode":
            for key in ("latent_dim", "rec_hidden", "dyn_hidden", "dyn_layers", "dec_hidden"):
                require(model[key] >= 1, f"model.{key}", model[key], "it must be an integer >= 1")
            require(model.obs_std > 0, "model.obs_std", model.obs_std, "it must be > 0")
            require(math.isfinite(model.consistency) and model.consistency >= 0, "model.consistency",
                    model.consistency, "it must be a finite number >= 0 (0 turns the term off)")
            require(0 < model.consistency_fraction < 1, "model.consistency_fraction", model.consistency_fraction,
                    "it must be in (0, 1)")
            require(model.kl_warmup >= 0, "model.kl_warmup", model.kl_warmup,
                    "it must be an integer >= 0 (0: the ELBO's KL weight is 1 throughout)")
        else:
            require(model.hidden >= 1, "model.hidden", model.hidden, "it must be an integer >= 1")
        require(data.n_spirals >= 2 and data.n_spirals % 2 == 0, "dataset.n_spirals", data.n_spirals,
                "it must be an even integer >= 2 (half clockwise, half counter-clockwise)")
        require(1 <= data.n_train < data.n_spirals, "dataset.n_train", data.n_train,
                f"it must be in [1, dataset.n_spirals={data.n_spirals})")
        require(0 <= data.n_val < data.n_train, "dataset.n_val", data.n_val,
                f"it must be in [0, dataset.n_train={data.n_train}) (0: no validation split)")
        require(data.train_coverage in TRAIN_COVERAGES, "dataset.train_coverage", data.train_coverage,
                f"valid values: {list(TRAIN_COVERAGES)}")
        require(data.n_steps >= 2, "dataset.n_steps", data.n_steps, "it must be an integer >= 2")
        require(2 <= data.n_obs <= data.n_steps, "dataset.n_obs", data.n_obs,
                f"it must be in [2, dataset.n_steps={data.n_steps}]; the paper's are {list(PAPER_N_OBS)}")
        require(data.n_extrapolate >= 1, "dataset.n_extrapolate", data.n_extrapolate, "it must be an integer >= 1")
        require(data.n_base >= data.n_steps + data.n_extrapolate, "dataset.n_base", data.n_base,
                f"it must be >= dataset.n_steps + dataset.n_extrapolate = {data.n_steps + data.n_extrapolate}")
        require(data.theta_max > data.theta_min, "dataset.theta_max", data.theta_max,
                f"it must be > dataset.theta_min={data.theta_min}")
        require(data.dt > 0, "dataset.dt", data.dt, "it must be > 0")
        require(data.noise_std >= 0, "dataset.noise_std", data.noise_std, "it must be >= 0")
        solver_spec(cfg)

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        unread = super().unread(cfg)
        if cfg.model.name == "rnn":
            unread.append(Unread("solver", schema_keys("solver"), "on model=rnn, which has no ODE; drop the solver "
                                 "options", option="dopri5"))
        return unread

    @classmethod
    def trains_ode(cls, cfg: DictConfig) -> bool:
        return cfg.model.name == "latent_ode"

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        solver = solver_spec(cfg).describe() if cfg.model.name == "latent_ode" else {}
        consistency = cfg.model.consistency if cfg.model.name == "latent_ode" else None
        data = cfg.dataset
        return {"model": cfg.model.name, "dataset": data.name, **solver, "n_obs": data.n_obs,
                "iterations": int(cfg.model.iterations[cfg.profile.name]), "noise_std": data.noise_std,
                "consistency": consistency, "restarts": cfg.model.restarts, "data_seed": data_seed(cfg),
                "train_coverage": data.train_coverage,
                "n_val": data.n_val, "n_train": data.n_train - data.n_val, "n_test": data.n_spirals - data.n_train}

    @classmethod
    def cpu_threads(cls, cfg: DictConfig):
        return cfg.model.threads

    def __init__(self, cfg: DictConfig, **env) -> None:
        super().__init__(cfg, **env)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.generators = (self.generator,)
        data = spirals_from_config(cfg.dataset, seed=cfg.seed)
        self.train, self.test = data.train.to(self.device), data.test.to(self.device)
        self.val = data.val.to(self.device) if data.val is not None else None
        m = cfg.model
        self.model = self.build_model()
        self.iterations = int(m.iterations[cfg.profile.name])  # per restart
        # One "epoch" of the runner is one validation interval: the validation loss is measured at its end.
        # Each restart trains a fresh initialisation for `iterations` steps, one after the other.
        self.steps_per_epoch = min(m.eval_every, self.iterations)
        self.epochs_per_restart = self.iterations // self.steps_per_epoch
        self.epochs = m.restarts * self.epochs_per_restart
        self.iteration = 0  # optimiser steps of the current restart (the KL warm-up follows it)
        self.restart = 0
        self.kl_warmup = m.get("kl_warmup", 0)
        # the weights of the lowest validation loss over every restart: the ones the run scores
        self.best = {"val_loss": math.inf, "iteration": None, "restart": None, "state": None}
        self.batch_size = m.batch_size or len(self.train.noisy)
        self.new_optimizer()

    def build_model(self):
        """A freshly initialised model (from torch's global generator) on the run's device."""
        from noderun.models.latent_ode import LatentODE, RNNBaseline

        m = self.cfg.model
        if m.name == "rnn":
            model = RNNBaseline(obs_dim=2, hidden=m.hidden, cell=m.cell, gap_scale=m.gap_scale)
        else:
            model = LatentODE(obs_dim=2, latent_dim=m.latent_dim, rec_hidden=m.rec_hidden, dyn_hidden=m.dyn_hidden,
                              dyn_layers=m.dyn_layers, dec_hidden=m.dec_hidden, cell=m.cell, obs_std=m.obs_std,
                              gap_scale=m.gap_scale,
                              consistency=m.consistency, consistency_fraction=m.consistency_fraction,
                              solver=solver_spec(self.cfg))
        return model.to(self.device)

    def new_optimizer(self) -> None:
        """Adam with the learning rate cosine-annealed from model.lr to model.lr_min over one restart."""
        m = self.cfg.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=m.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.iterations,
                                                                    eta_min=m.lr_min)

    def start_epoch(self, epoch: int) -> None:
        if epoch > 1 and (epoch - 1) % self.epochs_per_restart == 0:  # the first epoch of a restart
            self.restart, self.iteration = (epoch - 1) // self.epochs_per_restart, 0
            # Drawn from a seed of its own, not from the global generator's state, so that a run resumed
            # exactly here (start_epoch is called again) draws the same initialisation.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RESTART_SEED_STRIDE * self.restart + self.cfg.seed)
                self.model.load_state_dict(self.build_model().state_dict())
            self.new_optimizer()

    def summary(self) -> str:
        text = f"model={self.cfg.model.name} n_obs={self.cfg.dataset.n_obs} batch={self.batch_size}"
        if self.cfg.model.name == "latent_ode":
            s = self.model.solver
            text += f" solver={s.method} rtol={s.rtol:g} atol={s.atol:g} adjoint={s.adjoint}"
        return text

    def batch(self, step: int):
        if self.batch_size < len(self.train.noisy):
            index = torch.randperm(len(self.train.noisy), generator=self.generator)[: self.batch_size]
            return self.train.subset(index.to(self.device))
        return self.train

    def loss(self, batch):
        if self.kl_warmup:
            self.model.kl_weight = min(1.0, (self.iteration + 1) / self.kl_warmup)
        return self.model.split_loss(batch), {}

    def after_step(self) -> None:
        self.iteration += 1

    def validation_loss(self) -> float:
        """The model's own training objective on the validation split, with the ELBO's full KL term and the
        same draw of the latent sample at every measurement (so that measurements compare)."""
        self.model.eval()
        self.model.kl_weight = 1.0
        with torch.no_grad():
            loss = float(self.model.split_loss(self.val, generator=torch.Generator(self.device).manual_seed(0)))
        self.model.train()
        return loss

    def end_epoch(self, summary):
        if self.val is None:
            return None
        loss = self.validation_loss()
        self.epoch_metrics = {"val_loss": loss}
        if loss < self.best["val_loss"]:  # NaN never is: a diverged model is never selected
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"val_loss": loss, "iteration": self.iteration, "restart": self.restart, "state": state}
        restart = f"restart {self.restart + 1}/{self.cfg.model.restarts}, " if self.cfg.model.restarts > 1 else ""
        best = self.best
        lowest = ("no finite one yet" if best["state"] is None else
                  f"lowest {best['val_loss']:.3f} at iteration {best['iteration']} of restart {best['restart'] + 1}")
        return f"{restart}iteration {self.iteration}: validation loss {loss:.3f} ({lowest})"

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "restart": self.restart, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.restart, self.best = state["iteration"], state["restart"], state["best"]

    def forecast(self, split) -> torch.Tensor:
        self.model.eval()
        prediction = self.model.forecast(split)
        self.model.train()
        return prediction

    def finish(self, final_loss: float) -> dict:
        cfg, test = self.cfg, self.test
        row = {"final_loss": round(final_loss, 5)}
        if self.best["state"] is not None:  # the weights of the lowest validation loss
            self.model.load_state_dict(self.best["state"])
            row.update(val_loss=round(self.best["val_loss"], 5), best_iteration=self.best["iteration"],
                       best_restart=self.best["restart"] + 1)
        prediction = self.forecast(test)[:, test.n_steps :]
        per_trajectory = trajectory_rmse(prediction, test.extrapolation_truth)
        test_rmse = rmse(prediction, test.extrapolation_truth)
        median_rmse = float(per_trajectory.median())
        row.update(test_rmse=round(test_rmse, 5), test_rmse_median=round(median_rmse, 5),
                   test_frac_above_1=round(float((per_trajectory > RUNAWAY_RMSE).double().mean()), 5))
        text = f"test RMSE {test_rmse:.4f} (median trajectory {median_rmse:.4f})"
        if cfg.model.name == "latent_ode":
            trained_solver = self.model.solver
            self.model.solver = trained_solver.replace(rtol=TIGHT_TOLERANCE, atol=TIGHT_TOLERANCE)
            try:
                tight = rmse(self.forecast(test)[:, test.n_steps :], test.extrapolation_truth)
            finally:
                self.model.solver = trained_solver
            row["test_rmse_tight"] = round(tight, 5)
            text += f", {tight:.4f} re-solved at tolerance {TIGHT_TOLERANCE:g}"
        self.save_predictions(per_trajectory)
        self.log(f"[noderun] {cfg.model.name} n_obs={cfg.dataset.n_obs}: {text}")
        return row

    def save_predictions(self, per_trajectory: torch.Tensor) -> Path:
        """The model's positions on the whole grid (NaN where it predicts nothing) for the first and the
        worst (highest RMSE) test trajectories, and every test trajectory's RMSE [n_test], for the figures."""
        cfg = self.cfg
        worst = torch.argsort(per_trajectory.cpu(), descending=True)[:FIGURE_TRAJECTORIES]
        arrays = {"trajectory_rmse": per_trajectory.cpu().numpy(), "worst_index": worst.numpy(),
                  "n_steps": self.test.n_steps}
        for prefix, index in (("", torch.arange(FIGURE_TRAJECTORIES)), ("worst_", worst)):
            part = self.test.subset(index.to(self.device))
            arrays.update({prefix + "truth": part.truth.cpu().numpy(),
                           prefix + "obs_times": part.obs_times.cpu().numpy(),
                           prefix + "obs_values": part.obs_values.cpu().numpy(),
                           prefix + "pred": self.forecast(part).cpu().numpy()})
        consistency = cfg.model.consistency if cfg.model.name == "latent_ode" else None
        label = method_label(cfg.model.name, consistency, cfg.model.get("dyn_layers", 1))
        path = predictions_path(cfg.results_dir, cfg.experiment_name, cfg.profile.name, cfg.dataset.n_obs,
                                cfg.dataset.noise_std, label, cfg.seed, data_seed(cfg),
                                artifact_suffix(cfg.get("regularizer")))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, times=self.test.times.cpu().numpy(), profile=cfg.profile.name, n_obs=cfg.dataset.n_obs,
                 noise_std=cfg.dataset.noise_std, label=label, seed=cfg.seed, **arrays)
        tmp.replace(path)
        return path
