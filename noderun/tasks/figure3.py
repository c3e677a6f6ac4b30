"""Figure 3 (a)-(c): statistics of the trained ODE-Net as the solver tolerance varies.

One run = one tolerance (rtol, with atol tied to it by the experiment config) and one
adjoint norm setting (solver.seminorm). It loads the ODE-Net that Table 1 trained for
the same profile and seed (``<results_dir>/checkpoints/table1-odenet-<profile>-seed<seed>.pt``),
takes the first ``dataset.test_size[<profile>]`` images of the MNIST test set, and
measures per batch of ``dataset.batch_size``:

- forward NFE and forward wall time (``torch.no_grad``, after one untimed warm-up batch);
- backward NFE: the adjoint solve of the gradient of the test loss, with the configured
  norm (``solver.seminorm=true`` leaves the parameter channels out of the error norm);
- numerical error of the ODE block's output h(1): against a reference solve of the same
  trained block from the same h(0) with ``dataset.reference_method`` at
  ``dataset.reference_rtol``/``reference_atol`` in ``dataset.reference_dtype`` (default:
  dopri5 at 1e-8 in float64, far below any swept tolerance). ``ode_error`` is the mean
  over images of ||h(1) - h_ref(1)|| / ||h_ref(1)|| (L2 over the block's C x H x W output);
  ``ode_error_max`` is the largest absolute difference of any element.

Beyond the paper, ``model=anode`` sweeps the Table 1 ANODE the same way (its checkpoint
``table1-anode-<profile>-seed<seed>.pt``); the error is that of its block's output, the C kept
channels of the augmented state.

Rows go to ``<results_dir>/figure3.csv``; noderun.report.figure3 renders them.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from noderun.config import Unread, schema_keys
from noderun.data.batching import to_float
from noderun.data.mnist import load_mnist
from noderun.errors import ConfigError
from noderun.models import build_model, ode_blocks
from noderun.models.solver import SolverSpec
from noderun.ode.methods import METHODS, get_method
from noderun.profiling import synchronize
from noderun.tasks.base import Task, require
from noderun.tasks.classification import final_weights_path

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODELS = ("odenet", "anode")  # the Table 1 models with an adjoint-trained ODE block


def sweep_size(cfg: DictConfig):
    return cfg.dataset.test_size[cfg.profile.name]


class Figure3Task(Task):
    """Evaluation only: no training steps; `finish` measures and fills the NFE columns itself."""

    name = "figure3"
    profile_budget = "the images it measures are dataset.test_size.<profile> in batches of dataset.batch_size"
    columns = (
        "seminorm",  # True: adjoint error norm without the parameter channels
        "test_size",  # test images measured
        "batch_size",  # images per batch (NFE and times are per batch)
        "nfe_ratio",  # nfe_backward / nfe_forward
        "ode_error",  # mean over images of ||h(1) - h_ref(1)|| / ||h_ref(1)|| of the ODE block's output
        "ode_error_max",  # largest absolute elementwise difference to the reference
        "forward_time_s",  # mean seconds of a forward pass (whole network, no_grad) per batch
        "backward_time_s",  # mean seconds of the loss gradient's backward pass per batch
        "test_error",  # % wrong on the measured images at this tolerance
        "reference",  # the reference solve: method, tolerances, dtype
        "reference_nfe",  # mean NFE per batch of the reference solve
    )

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """Reject invalid values before any work (the checkpoint is looked for when the run starts)."""
        data, solver, profile = cfg.dataset, cfg.solver, cfg.profile
        require(cfg.model.name in MODELS, "model.name", cfg.model.name, f"the figure3 task takes: {list(MODELS)}")
        require(data.name == "mnist" and "reference_rtol" in data, "dataset", data.name,
                "the figure3 task takes dataset=mnist_sweep (set by experiment=figure3)")
        require(solver.method in METHODS and get_method(solver.method).adaptive, "solver.method", solver.method,
                "a tolerance sweep needs an adaptive method, e.g. dopri5")
        require(0 < solver.rtol <= 1, "solver.rtol", solver.rtol, "it must be in (0, 1]")
        require(0 < solver.atol <= 1, "solver.atol", solver.atol, "it must be in (0, 1]")
        require(solver.adjoint is None or bool(solver.adjoint), "solver.adjoint", solver.adjoint,
                "the backward NFE is the adjoint's: leave it null or true")
        require(profile.name in data.test_size, "dataset.test_size", OmegaConf.to_container(data.test_size),
                f"it needs an entry for profile {profile.name!r}")
        size = sweep_size(cfg)
        require(size is None or 1 <= size <= 10_000, f"dataset.test_size.{profile.name}", size,
                "it must be null (all 10,000) or an integer in [1, 10000]")
        require(data.batch_size >= 1, "dataset.batch_size", data.batch_size, "it must be an integer >= 1")
        require(data.reference_method in METHODS and get_method(data.reference_method).adaptive,
                "dataset.reference_method", data.reference_method, "it must be an adaptive method, e.g. dopri5")
        require(data.reference_dtype in DTYPES, "dataset.reference_dtype", data.reference_dtype,
                f"valid dtypes: {list(DTYPES)}")
        require(0 < data.reference_rtol < solver.rtol, "dataset.reference_rtol", data.reference_rtol,
                f"it must be > 0 and tighter than solver.rtol={solver.rtol:g}")
        require(0 < data.reference_atol < solver.atol, "dataset.reference_atol", data.reference_atol,
                f"it must be > 0 and tighter than solver.atol={solver.atol:g}")
        SolverSpec.from_config(cfg.solver, default_adjoint=True)

    @classmethod
    def unread(cls, cfg: DictConfig) -> list[Unread]:
        name = cfg.model.name
        keys = tuple(k for k in schema_keys("model", name) if k != "name")
        return super().unread(cfg) + [Unread(
            "model", keys, f"on task=figure3, which evaluates the Table 1 {name} checkpoint with the model config it "
            f"was trained with; train one with that setting (noderun train model={name} ...) and sweep it",
            option=name)]

    @classmethod
    def trains_ode(cls, cfg: DictConfig) -> bool:
        return False  # it evaluates a trained model

    @classmethod
    def describe(cls, cfg: DictConfig) -> dict:
        solver = SolverSpec.from_config(cfg.solver, default_adjoint=True)
        return {"model": cfg.model.name, "dataset": "mnist", **solver.describe(), "seminorm": solver.seminorm,
                "batch_size": cfg.dataset.batch_size}

    def __init__(self, cfg: DictConfig, **env) -> None:
        super().__init__(cfg, **env)
        self.solver = SolverSpec.from_config(cfg.solver, default_adjoint=True)
        self.model, self.payload = self.load_trained_odenet()
        self.model = self.model.to(self.device).eval()
        self.epochs = 0  # nothing to train

    def load_trained_odenet(self) -> tuple[torch.nn.Module, dict]:
        """The Table 1 ODE-Net (or ANODE, model=anode) of this profile and seed, rebuilt with this run's
        solver settings."""
        cfg, name = self.cfg, self.cfg.model.name
        path = final_weights_path(cfg.results_dir, "table1", name, cfg.profile.name, cfg.seed)
        if not path.is_file():
            raise ConfigError(
                f"no trained {'ODE-Net' if name == 'odenet' else name} at {path}; run `noderun train model={name} "
                f"profile={cfg.profile.name} seed={cfg.seed} results_dir={cfg.results_dir}` first"
            )
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model_cfg = OmegaConf.create(payload["config"]["model"])
        if model_cfg.get("name") != name:
            raise ConfigError(f"{path} holds model {model_cfg.get('name')!r}, not {name}; retrain it with "
                              f"`noderun train model={name} profile={cfg.profile.name} seed={cfg.seed}`")
        model = build_model(model_cfg, self.solver)
        model.load_state_dict(payload["state_dict"])
        return model, payload

    def reference_block(self, block) -> torch.nn.Module:
        """The trained block solved far more accurately: the truth its output is compared with."""
        data = self.cfg.dataset
        reference = copy.deepcopy(block).to(DTYPES[data.reference_dtype])
        reference.solver = SolverSpec(method=data.reference_method, rtol=float(data.reference_rtol),
                                      atol=float(data.reference_atol), options={"max_num_steps": 1_000_000},
                                      adjoint=False)
        return reference

    def finish(self, final_loss: float) -> dict:
        from noderun.ode import track_stats

        cfg, device, model, data_cfg = self.cfg, self.device, self.model, self.cfg.dataset
        block = ode_blocks(model)[0]
        reference = self.reference_block(block)
        dtype = DTYPES[data_cfg.reference_dtype]
        downsample = model[0]

        data = load_mnist(cfg.data_dir, log=self.log)
        size = sweep_size(cfg)
        images = data.test_images[:size].to(device)
        labels = data.test_labels[:size].to(device)
        batch = int(data_cfg.batch_size)
        starts = list(range(0, len(images), batch))
        self.log(f"[noderun] figure3: {cfg.model.name} ({cfg.profile.name}, seed {cfg.seed}) "
                 f"solver={self.solver.method} "
                 f"rtol={self.solver.rtol:g} atol={self.solver.atol:g} seminorm={self.solver.seminorm} "
                 f"on {len(images)} test images in {len(starts)} batches of {batch}")

        nfe_f, nfe_b, nfe_ref, t_fwd, t_bwd = [], [], [], [], []
        rel_errors, max_error, wrong = [], 0.0, 0
        with torch.no_grad():  # warm-up: first-call set-up costs are not timed
            model(to_float(images[:batch]))
        for start in starts:
            x = to_float(images[start : start + batch])
            y = labels[start : start + batch]
            # forward: NFE and wall time of the whole network, no graph
            synchronize(device)
            tic = time.perf_counter()
            with torch.no_grad(), track_stats() as stats:
                logits = model(x)
            synchronize(device)
            t_fwd.append(time.perf_counter() - tic)
            nfe_f.append(stats.nfe_forward)
            wrong += (logits.argmax(1) != y).sum().item()
            # backward: the adjoint solve of the test loss's gradient
            model.zero_grad(set_to_none=True)
            with track_stats() as stats:
                loss = F.cross_entropy(model(x), y)
                synchronize(device)
                tic = time.perf_counter()
                loss.backward()
                synchronize(device)
            t_bwd.append(time.perf_counter() - tic)
            nfe_b.append(stats.nfe_backward)
            # error of the block's output against the reference solve from the same h(0)
            with torch.no_grad():
                h0 = downsample(x)
                h1 = block(h0)
                with track_stats() as stats:
                    h_ref = reference(h0.to(dtype))
                nfe_ref.append(stats.nfe_forward)
                diff = (h1.to(dtype) - h_ref).flatten(1)
                rel = diff.norm(dim=1) / h_ref.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
                rel_errors += rel.tolist()
                max_error = max(max_error, diff.abs().max().item())
        model.zero_grad(set_to_none=True)

        mean_f, mean_b = statistics.fmean(nfe_f), statistics.fmean(nfe_b)
        row = {
            "epochs": len(self.payload["history"]["epoch"]) if "history" in self.payload else None,
            # per evaluated batch: this task does not train (RunRecord documents the columns)
            "nfe_forward": round(mean_f, 3),
            "nfe_backward": round(mean_b, 3),
            "test_size": len(images),
            "nfe_ratio": round(mean_b / mean_f, 4) if mean_f else None,
            "ode_error": float(f"{statistics.fmean(rel_errors):.6g}"),
            "ode_error_max": float(f"{max_error:.6g}"),
            "forward_time_s": round(statistics.fmean(t_fwd), 6),
            "backward_time_s": round(statistics.fmean(t_bwd), 6),
            "test_error": round(100.0 * wrong / len(images), 4),
            "reference": f"{data_cfg.reference_method} rtol={data_cfg.reference_rtol:g} "
                         f"atol={data_cfg.reference_atol:g} {data_cfg.reference_dtype}",
            "reference_nfe": round(statistics.fmean(nfe_ref), 3),
        }
        self.log(f"[noderun] figure3 rtol={self.solver.rtol:g}: nfe fwd {mean_f:.1f} bwd {mean_b:.1f} "
                 f"(ratio {row['nfe_ratio']}) error {row['ode_error']:.3g} "
                 f"fwd {row['forward_time_s'] * 1e3:.1f} ms/batch")
        return row
