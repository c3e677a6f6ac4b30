"""Model registry: a config's `model.name` selects the builder.

Table 1: mlp, resnet, rknet, odenet. Adding a model is one builder here and one YAML
file in conf/model/.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from noderun.errors import ConfigError
from noderun.models.mlp import build_mlp
from noderun.models.odenet import ODEBlock, build_odenet, check_backend
from noderun.models.resnet import build_resnet

def solver_kwargs(solver_cfg, default_adjoint: bool) -> dict:
    """Keyword arguments of an ODEBlock from the `solver` config group.

    Raises ConfigError for an unknown `solver.backend`, a torchdiffeq backend that is not
    installed, or a method that backend lacks.
    """
    from noderun.ode.methods import get_method

    backend = solver_cfg.get("backend", "native")
    check_backend(backend, solver_cfg.method)
    options = {}
    if not get_method(solver_cfg.method).adaptive:
        if solver_cfg.step_size is None or solver_cfg.step_size <= 0:
            raise ConfigError(
                f"solver.step_size={solver_cfg.step_size}: fixed-step method '{solver_cfg.method}' "
                "needs a step size > 0, e.g. solver.step_size=0.1"
            )
        options["step_size"] = float(solver_cfg.step_size)
    else:
        options["max_num_steps"] = int(solver_cfg.max_num_steps)
    adjoint = default_adjoint if solver_cfg.adjoint is None else bool(solver_cfg.adjoint)
    return {
        "method": solver_cfg.method,
        "rtol": float(solver_cfg.rtol),
        "atol": float(solver_cfg.atol),
        "options": options,
        "adjoint": adjoint,
        "adjoint_options": {"norm": "seminorm"} if solver_cfg.seminorm else None,
        "backend": backend,
    }


def odenet_kwargs(model_cfg) -> dict:
    """Network options of the ODE-Net / RK-Net (defaults for configs saved before they existed)."""
    return {
        "channels": model_cfg.channels,
        "time_channel": model_cfg.get("time_channel", "exact"),
        "channels_last": bool(model_cfg.get("channels_last", False)),
        "conv_impl": model_cfg.get("conv_impl", "torch"),
    }


MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda model_cfg, solver_cfg: build_mlp(hidden=model_cfg.hidden),
    "resnet": lambda model_cfg, solver_cfg: build_resnet(n_blocks=model_cfg.n_blocks, channels=model_cfg.channels),
    "odenet": lambda model_cfg, solver_cfg: build_odenet(
        **odenet_kwargs(model_cfg), **solver_kwargs(solver_cfg, default_adjoint=model_cfg.adjoint)
    ),
    "rknet": lambda model_cfg, solver_cfg: build_odenet(
        **odenet_kwargs(model_cfg), **solver_kwargs(solver_cfg, default_adjoint=model_cfg.adjoint)
    ),
}


def build_model(model_cfg, solver_cfg) -> nn.Module:
    """The model named by model_cfg.name, with its ODE blocks (if any) set up from solver_cfg."""
    try:
        builder = MODEL_BUILDERS[model_cfg.name]
    except KeyError:
        raise ConfigError(f"model.name={model_cfg.name!r} is unknown; valid models: {sorted(MODEL_BUILDERS)}") from None
    return builder(model_cfg, solver_cfg)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """The ODE blocks inside a model (empty for models without one)."""
    return [module for module in model.modules() if isinstance(module, ODEBlock)]
