"""`SolverSpec`: how every ODE block of every model is solved, built once from the `solver` config group.

The ODE-Net and RK-Net blocks, the latent ODE and the planar CNF all call `SolverSpec.solve`,
so each `solver.*` option means the same in every model, and an option that a run cannot
honour is refused by `SolverSpec.from_config` in one line instead of being ignored:

- `solver.step_size` sets the step of a fixed-step method; an adaptive method refuses it;
- `solver.seminorm` changes the adjoint's backward error norm; a run that backpropagates
  through the solver (adjoint off) refuses it, and so does a fixed-step method; the backward
  solve keeps the forward options (step size, max_num_steps) beside it;
- `solver.backend=torchdiffeq` solves with torchdiffeq (installed, and a method it has),
  its evaluations counted into `noderun.ode.track_stats` like a native solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from noderun.errors import ConfigError
from noderun.models import regularization

BACKENDS = ("native", "torchdiffeq")
# Methods both libraries implement (torchdiffeq has no tsit5). Same names, same schemes, except
# that torchdiffeq's "rk4" is Kutta's 3/8 rule, not the classical RK4 of noderun.ode.
TORCHDIFFEQ_METHODS = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "euler", "fehlberg2", "midpoint", "rk4")


def check_backend(backend: str, method: str) -> None:
    """Raise ConfigError unless `backend` is known, importable and implements `method`."""
    if backend not in BACKENDS:
        raise ConfigError(f"solver.backend={backend!r} is invalid; valid backends: {list(BACKENDS)}")
    if backend == "torchdiffeq":
        try:
            import torchdiffeq  # noqa: F401
        except ImportError:
            raise ConfigError(
                "solver.backend='torchdiffeq' needs the torchdiffeq package, which is not installed: "
                "pip install noderun[torchdiffeq]"
            ) from None
        if method not in TORCHDIFFEQ_METHODS:
            raise ConfigError(
                f"solver.method={method!r} is not available with solver.backend=torchdiffeq; "
                f"its methods: {list(TORCHDIFFEQ_METHODS)} (or use solver.backend=native)"
            )


@dataclass(frozen=True)
class SolverSpec:
    """Method, tolerances, options and gradient mode of one model's ODE solves.

    options: `{"step_size": h}` for a fixed-step method, `{"max_num_steps": n}` for an adaptive one;
        the adjoint's backward solve takes the same options.
    adjoint: True for the adjoint method (O(1) memory), False to backpropagate through the solver.
    seminorm: the adjoint's backward solve leaves the parameter-gradient channels out of its error norm.
    reuse_forward_step: the native adjoint's backward solve starts from the forward solve's last
        proposed step (noderun.ode.odeint_adjoint's `reuse_forward_step` option) instead of selecting
        an initial step afresh, as torchdiffeq does.
    An `options["first_step"]` sets the forward solve's first step only: the adjoint's backward solve
    keeps its own rule (above) on either backend.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    options: dict = field(default_factory=dict)
    adjoint: bool = True
    seminorm: bool = False
    backend: str = "native"
    reuse_forward_step: bool = True

    @classmethod
    def from_config(cls, solver_cfg, default_adjoint: bool) -> "SolverSpec":
        """The spec of a `solver` config group; `default_adjoint` is the model's own choice,
        used when `solver.adjoint` is null. Raises ConfigError naming the option and the fix."""
        from noderun.ode.methods import METHODS, RUNGE_KUTTA_METHODS, get_method

        method = solver_cfg.method
        if method not in RUNGE_KUTTA_METHODS:
            if method in METHODS:  # scipy_solver: odeint only, without gradients
                raise ConfigError(f"solver.method={method!r} has no gradients, and models train through their "
                                  f"solves; valid methods: {sorted(RUNGE_KUTTA_METHODS)}")
            raise ConfigError(f"solver.method={method!r} is invalid; valid methods: {sorted(RUNGE_KUTTA_METHODS)}")
        for key in ("rtol", "atol"):
            value = solver_cfg[key]
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"solver.{key}={value!r} is invalid; it must be a finite number > 0")
        if solver_cfg.max_num_steps < 1:
            raise ConfigError(f"solver.max_num_steps={solver_cfg.max_num_steps!r} is invalid; it must be >= 1")
        step_size = solver_cfg.step_size
        if get_method(method).adaptive:
            if step_size is not None:
                raise ConfigError(
                    f"solver.step_size={step_size!r} applies to fixed-step methods and {method!r} is adaptive; "
                    "drop solver.step_size, or choose a fixed-step method (euler, midpoint, rk4)"
                )
            options = {"max_num_steps": int(solver_cfg.max_num_steps)}
            first_step = solver_cfg.get("first_step")
            if first_step is not None:
                if not (isinstance(first_step, (int, float)) and math.isfinite(first_step) and first_step > 0):
                    raise ConfigError(f"solver.first_step={first_step!r} is invalid; it must be null (selected by "
                                      "the solver) or a finite number > 0")
                options["first_step"] = float(first_step)
        else:
            if solver_cfg.get("first_step") is not None:
                raise ConfigError(
                    f"solver.first_step={solver_cfg.first_step!r} applies to adaptive methods and {method!r} takes "
                    "fixed steps of solver.step_size; drop solver.first_step, or choose an adaptive method (dopri5)"
                )
            if step_size is None or not (math.isfinite(step_size) and step_size > 0):
                raise ConfigError(
                    f"solver.step_size={step_size!r}: fixed-step method {method!r} needs a step size > 0, "
                    "e.g. solver.step_size=0.1"
                )
            options = {"step_size": float(step_size)}
        adjoint = default_adjoint if solver_cfg.adjoint is None else bool(solver_cfg.adjoint)
        if solver_cfg.seminorm and not adjoint:
            raise ConfigError(
                "solver.seminorm=true changes the adjoint's backward solve, and this run backpropagates "
                "through the solver (adjoint off); set solver.adjoint=true or drop solver.seminorm"
            )
        if solver_cfg.seminorm and not get_method(method).adaptive:
            raise ConfigError(
                f"solver.seminorm=true changes the error norm of adaptive step-size control, and {method!r} "
                "takes fixed steps; drop solver.seminorm, or choose an adaptive method (dopri5, tsit5, bosh3)"
            )
        backend = solver_cfg.get("backend", "native")
        check_backend(backend, method)
        reuse = bool(solver_cfg.get("reuse_forward_step", True))
        if not reuse:
            why = ("this run backpropagates through the solver (adjoint off)" if not adjoint
                   else f"{method!r} takes fixed steps" if not get_method(method).adaptive
                   else f"solver.backend={backend} always selects it afresh" if backend != "native" else None)
            if why:
                raise ConfigError(
                    "solver.reuse_forward_step=false changes how the native adjoint's adaptive backward solve "
                    f"picks its first step, and {why}; drop solver.reuse_forward_step, or use it with "
                    "solver.adjoint=true, an adaptive method (dopri5) and solver.backend=native"
                )
        return cls(method=method, rtol=float(solver_cfg.rtol), atol=float(solver_cfg.atol), options=options,
                   adjoint=adjoint, seminorm=bool(solver_cfg.seminorm), backend=backend, reuse_forward_step=reuse)

    def replace(self, **changes) -> "SolverSpec":
        """A copy with some fields changed (e.g. a reference solve at a tighter tolerance)."""
        return replace(self, **changes)

    @property
    def odeint_kwargs(self) -> dict:
        """method, rtol, atol and options as `odeint` takes them."""
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "options": dict(self.options) or None}

    @property
    def adjoint_options(self) -> dict:
        """The adjoint's backward-solve options: the forward ones but the first step, the norm and (native
        backend) how the first step is chosen."""
        options = {key: value for key, value in self.options.items() if key != "first_step"}
        if self.seminorm:
            options["norm"] = "seminorm"
        if not self.reuse_forward_step:
            options["reuse_forward_step"] = False
        return options

    def solve(self, func: Callable, y0: Any, t: torch.Tensor, adjoint: Optional[bool] = None,
              adjoint_params: Optional[tuple] = None) -> Any:
        """y at every time of `t` from y(t[0]) = y0 (a tensor or a tuple of tensors).

        adjoint: overrides the spec's gradient mode for this call (evaluation without a graph
        passes False: nothing to differentiate). adjoint_params: the parameters the adjoint
        differentiates, by default those of `func` when it is a module. Inside a regularised
        training step (noderun.models.regularization.collect) the solve also integrates the RNODE terms.
        """
        use_adjoint = self.adjoint if adjoint is None else adjoint
        if use_adjoint and adjoint_params is None and isinstance(func, nn.Module):
            adjoint_params = tuple(func.parameters())
        collection = regularization.active()
        if collection is not None:  # a regularised training step: K and J integrated beside the state
            def plain(f, y, times, params):
                # K and J (the last two components) are integrals nothing in the solve depends on, so their
                # error does not limit the step size: the steps are those of the unregularised state.
                return self._solve(f, y, times, use_adjoint, params, error_parts=len(y) - 2)

            return regularization.solve_regularized(plain, func, y0, t, collection, adjoint_params)
        return self._solve(func, y0, t, use_adjoint, adjoint_params)

    def _solve(self, func: Callable, y0: Any, t: torch.Tensor, use_adjoint: bool, adjoint_params,
               error_parts: Optional[int] = None) -> Any:
        """error_parts: with a tuple y0, the forward solve's step-size control measures the error of its first
        error_parts components only (an adaptive method; None: of every component)."""
        from noderun.ode.methods import get_method

        kwargs = self.odeint_kwargs
        if error_parts is not None and get_method(self.method).adaptive:
            kwargs = {**kwargs, "options": {**(kwargs["options"] or {}), "norm": self._leading_norm(y0, error_parts)}}
        if self.backend == "torchdiffeq":  # adjoint_options holds no reuse_forward_step here (refused with it)
            return _solve_torchdiffeq(func, y0, t, kwargs, use_adjoint, self.adjoint_options, adjoint_params)
        from noderun.ode import odeint, odeint_adjoint

        if use_adjoint:
            return odeint_adjoint(func, y0, t, **kwargs, adjoint_options=self.adjoint_options,
                                  adjoint_params=adjoint_params)
        return odeint(func, y0, t, **kwargs)

    def _leading_norm(self, y0: tuple, parts: int) -> Callable:
        """The RMS norm over the first `parts` components of a tuple state, in the form each backend's norm
        option takes: noderun.ode passes the flat state (components concatenated in order), torchdiffeq the
        tuple."""
        from noderun.ode.step_control import SemiNorm

        if self.backend == "torchdiffeq":  # its norms return a 0-dim tensor
            return lambda state: torch.cat([x.reshape(-1) for x in state[:parts]]).pow(2).mean().sqrt()
        return SemiNorm(sum(x.numel() for x in y0[:parts]))

    def describe(self) -> dict:
        """The result columns that name this solver."""
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "adjoint": self.adjoint}


class _CountedDynamics(nn.Module):
    """Counts the calls of the dynamics into noderun.ode's statistics for the torchdiffeq backend.

    One instance per forward solve. Calls made while that solve runs are forward
    evaluations (reported once, when it returns, like a noderun.ode solve); calls made
    afterwards can only come from the adjoint's backward solve and are added one by one
    to nfe_backward of the same track_stats blocks that were active at the forward solve.
    The dynamics module is held outside the module tree, so no parameter is registered twice.
    """

    def __init__(self, func: Callable, sinks: tuple):
        super().__init__()
        self.__dict__["func"] = func
        self.sinks = sinks
        self.in_forward = True
        self.nfe_forward = 0

    def forward(self, t, y):
        if self.in_forward:
            self.nfe_forward += 1
        else:
            for sink in self.sinks:
                sink.nfe_backward += 1
        return self.func(t, y)


def _solve_torchdiffeq(func, y0, t, kwargs: dict, adjoint: bool, adjoint_options, adjoint_params):
    import torchdiffeq

    from noderun.ode import stats as ode_stats

    counted = _CountedDynamics(func, ode_stats.active_sinks())
    try:
        if adjoint:
            solution = torchdiffeq.odeint_adjoint(counted, y0, t, **kwargs, adjoint_options=adjoint_options,
                                                  adjoint_params=adjoint_params)
        else:
            solution = torchdiffeq.odeint(counted, y0, t, **kwargs)
    finally:
        counted.in_forward = False
    ode_stats.record(ode_stats.SolveStats(nfe_forward=counted.nfe_forward, num_solves=1), counted.sinks)
    return solution
