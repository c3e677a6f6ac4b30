"""Typed schemas for the Hydra config groups, registered in Hydra's ConfigStore.

Every YAML file in ``conf/<group>/`` starts from one of these schemas (its defaults
list names ``/schema/<group>/<name>``), so a mistyped key (``solver.rtoll=1e-3``) or
a value of the wrong type fails at composition, before any work, with Hydra's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ClassifierModelConfig:
    """Table 1 models. `name` selects the builder in noderun.models.MODEL_BUILDERS."""

    name: str = MISSING
    hidden: int = 300  # MLP width
    channels: int = 64  # conv models: feature channels
    n_blocks: int = 6  # ResNet: residual blocks (the depth experiment varies it)
    adjoint: bool = True  # ODE block: adjoint (ODE-Net) or backprop through the solver (RK-Net)
    # ODE block: "exact" computes the time channel without concatenation, "concat" as published
    time_channel: str = "exact"
    channels_last: bool = False  # ODE block: solve in NHWC memory order (convolutions, GroupNorm, solver state)
    conv_impl: str = "torch"  # ODE block convolutions: torch (F.conv2d) or nnpack (CPU float32; noderun.models.conv)
    # Random-crop augmentation (dataset.crop_padding) suits the conv nets, which are translation
    # equivariant; the MLP row (quoted by the paper from LeCun et al. 1998) trains without it.
    augment: bool = True


@dataclass
class SolverConfig:
    """How ODE blocks are solved. Ignored by models without one."""

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: Optional[float] = None  # fixed-step methods only
    adjoint: Optional[bool] = None  # None: the model's own choice (ODE-Net adjoint, RK-Net backprop)
    seminorm: bool = False  # adjoint backward: leave parameter channels out of the error norm
    max_num_steps: int = 10_000
    backend: str = "native"  # native: noderun.ode; torchdiffeq: torchdiffeq.odeint(_adjoint) (Table 1 ODE block)


@dataclass
class MNISTDatasetConfig:
    name: str = "mnist"
    crop_padding: int = 4  # random crop 28 from the image zero-padded by this much, per sample


@dataclass
class ProfileConfig:
    """How long to train. smoke: seconds, for tests; quick: minutes on a CPU; paper: the paper's protocol."""

    name: str = MISSING
    epochs: int = 1
    train_size: Optional[int] = None  # None: the whole training set
    test_size: Optional[int] = None  # None: the whole test set
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "multistep"  # multistep: x lr_gamma at lr_milestones (epochs); cosine: per iteration to 0
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    progress: bool = True


@dataclass
class Config:
    model: Any = MISSING
    solver: SolverConfig = field(default_factory=SolverConfig)
    dataset: Any = MISSING
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    task: str = "classification"
    experiment_name: str = "table1"  # names the result CSV: <results_dir>/<experiment_name>.csv
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    results_dir: str = "results"
    data_dir: str = "data"
    # Re-running a command continues its run from the last checkpoint (resume=false starts over);
    # a run that already finished is skipped unless force=true (noderun.checkpoint).
    resume: bool = True
    force: bool = False


@dataclass
class TableConfig:
    results_dir: str = "results"
    profile: Optional[str] = None  # only rows of this profile; None: one table per profile
    write: bool = True  # also write the rendered tables under results_dir


@dataclass
class DataConfig:
    data_dir: str = "data"


def register_configs() -> None:
    """Put the schemas where the YAML files' defaults lists find them."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(name="table_schema", node=TableConfig)
    store.store(name="data_schema", node=DataConfig)
    store.store(group="schema/model", name="classifier", node=ClassifierModelConfig, package="model")
    store.store(group="schema/solver", name="solver", node=SolverConfig, package="solver")
    store.store(group="schema/dataset", name="mnist", node=MNISTDatasetConfig, package="dataset")
    store.store(group="schema/profile", name="profile", node=ProfileConfig, package="profile")
    from noderun.tasks import TASKS

    for task in TASKS.values():
        for group, name, node in task.schemas:
            # conf/<group>/<file>.yaml extends it with `- /schema/<group>/<name>@_here_`
            store.store(group=f"schema/{group}", name=name, node=node, package=group)
