"""Model registry of the classification task: a config's `model.name` selects the builder.

Table 1: mlp, resnet, rknet, odenet; beyond the paper: anode (noderun.models.anode). Adding a
model is one builder here and one YAML file in conf/model/. Every builder takes the model config and the run's SolverSpec
(noderun.models.solver), which models without an ODE block ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from noderun.errors import ConfigError
from noderun.models.anode import build_anode
from noderun.models.mlp import build_mlp
from noderun.models.odenet import ODEBlock, build_odenet
from noderun.models.resnet import build_resnet
from noderun.models.solver import SolverSpec


def _odenet(model_cfg, solver: SolverSpec) -> nn.Module:
    return build_odenet(model_cfg.channels, solver=solver, time_channel=model_cfg.get("time_channel", "exact"),
                        channels_last=bool(model_cfg.get("channels_last", False)),
                        conv_impl=model_cfg.get("conv_impl", "torch"))


def _anode(model_cfg, solver: SolverSpec) -> nn.Module:
    return build_anode(model_cfg.channels, augment_channels=model_cfg.augment_channels, solver=solver,
                       time_channel=model_cfg.get("time_channel", "exact"),
                       channels_last=bool(model_cfg.get("channels_last", False)),
                       conv_impl=model_cfg.get("conv_impl", "torch"))


@dataclass(frozen=True)
class ModelEntry:
    """How to build one classifier, whether its network holds an ODE block (solver columns apply),
    and the keys of the classifier model config it reads besides `name` (the task refuses the
    others changed: they would not act)."""

    build: Callable[[object, SolverSpec], nn.Module]
    reads: tuple[str, ...]
    has_ode_block: bool = False


# `augment` (random crops) is read by the classification task for every model.
ODE_BLOCK_KEYS = ("channels", "adjoint", "time_channel", "channels_last", "conv_impl", "augment")
MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(lambda model_cfg, solver: build_mlp(hidden=model_cfg.hidden), reads=("hidden", "augment")),
    "resnet": ModelEntry(lambda model_cfg, solver: build_resnet(n_blocks=model_cfg.n_blocks,
                                                                channels=model_cfg.channels),
                         reads=("channels", "n_blocks", "augment")),
    "odenet": ModelEntry(_odenet, reads=ODE_BLOCK_KEYS, has_ode_block=True),
    # the same network; model.adjoint=false (conf/model/rknet.yaml) backpropagates through the solver
    "rknet": ModelEntry(_odenet, reads=ODE_BLOCK_KEYS, has_ode_block=True),
    # beyond the paper: the ODE-Net with model.augment_channels zero channels in its ODE state (Dupont et al. 2019)
    "anode": ModelEntry(_anode, reads=ODE_BLOCK_KEYS + ("augment_channels",), has_ode_block=True),
}


def build_model(model_cfg, solver: SolverSpec) -> nn.Module:
    """The model named by model_cfg.name, its ODE blocks (if any) solved as `solver` says."""
    try:
        entry = MODELS[model_cfg.name]
    except KeyError:
        raise ConfigError(f"model.name={model_cfg.name!r} is unknown; valid models: {sorted(MODELS)}") from None
    return entry.build(model_cfg, solver)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """The ODE blocks inside a model (empty for models without one)."""
    return [module for module in model.modules() if isinstance(module, ODEBlock)]
