"""RNODE regularisation (Finlay, Jacobsen, Nurbekyan, Oberman, "How to train your neural ODE", ICML 2020).

Two terms, integrated along every regularised solve as extra states of the same solve, so that
they work alike with the adjoint, with backpropagation through the solver, with either backend
and under bfloat16 autocast (their states are float32, as the ODE state):

- the kinetic energy  K = ∫ ‖f(t, z)‖² dt,
- the Jacobian's Frobenius norm  J = ∫ ‖∂f/∂z‖²_F dt, by Hutchinson's estimator: ‖εᵀ ∂f/∂z‖² with
  one probe ε per sample (Rademacher or Gaussian), drawn once per solve, E ε εᵀ = I.

Both are per sample (summed over the state's non-batch dimensions) and averaged over the batch.
They are integrals nothing in the solve depends on, so the step-size control of an adaptive solve
measures the error of the model's state only (noderun.models.solver): a regularised solve takes the
steps of the unregularised one, and the NFE a regularizer saves is the dynamics' doing, not the
quadrature's (with the terms in the error norm the fast ODE-Net's forward solve took 44 evaluations
instead of 26 for the same weights and batch).
Only the first component of a tuple state is regularised (the CNF's z, not its log-density).

How a run uses it: the runner opens :func:`collect` around each training step's loss with the
run's :class:`Regularizer`; every ODE solve made through ``SolverSpec.solve`` while a collection
is open and gradients are recorded is solved with the terms, and adds them to the collection.
The runner then adds ``collection.penalty`` = Σ (kinetic · K + jacobian · J) to the loss and
records K and J. Outside a collection (evaluation, a step of a model without an ODE) nothing
changes, so a solve costs what it did.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

PROBES = ("rademacher", "gaussian")
NAMES = ("none", "rnode")  # the regularizer config group's options


@dataclass(frozen=True)
class Regularizer:
    """The weights of the two terms in the loss, and the Hutchinson probe's distribution."""

    kinetic: float = 0.0
    jacobian: float = 0.0
    probe: str = "rademacher"

    def __post_init__(self) -> None:
        if not (self.kinetic >= 0 and self.jacobian >= 0):
            raise ValueError(f"regularizer weights must be >= 0, got kinetic={self.kinetic}, "
                             f"jacobian={self.jacobian}")
        if self.probe not in PROBES:
            raise ValueError(f"probe={self.probe!r} is invalid; valid probes: {list(PROBES)}")

    @property
    def active(self) -> bool:
        return self.kinetic > 0 or self.jacobian > 0


def from_config(r, trains_ode: bool, run: str) -> Regularizer:
    """The Regularizer of a `regularizer` config node (weights 0 for none); ConfigError, in one line, for an
    invalid one or one that would not act (no weight, a probe without the Jacobian term, or a run that trains
    no ODE; `run` names it)."""
    from noderun.errors import ConfigError

    if r.name not in NAMES:
        raise ConfigError(f"regularizer.name={r.name!r} is invalid; valid regularizers: {list(NAMES)}")
    if r.name == "none":
        if r.kinetic or r.jacobian:
            raise ConfigError(f"regularizer.kinetic/jacobian have no effect with regularizer=none; use "
                              f"regularizer=rnode regularizer.kinetic={r.kinetic} regularizer.jacobian={r.jacobian}")
        return Regularizer()
    for key in ("kinetic", "jacobian"):
        if not (math.isfinite(r[key]) and r[key] >= 0):
            raise ConfigError(f"regularizer.{key}={r[key]!r} is invalid; it must be a finite number >= 0")
    if not (r.kinetic or r.jacobian):
        raise ConfigError("regularizer=rnode with regularizer.kinetic=0 and regularizer.jacobian=0 has no effect; "
                          "set one of them > 0, or use regularizer=none")
    if r.probe not in PROBES:
        raise ConfigError(f"regularizer.probe={r.probe!r} is invalid; valid probes: {list(PROBES)}")
    if r.probe != PROBES[0] and not r.jacobian:
        raise ConfigError(f"regularizer.probe={r.probe!r} has no effect with regularizer.jacobian=0 (the probe "
                          "estimates the Jacobian term); drop it or set regularizer.jacobian > 0")
    if not trains_ode:
        raise ConfigError(f"regularizer=rnode regularises ODE solves in training, and this run trains none "
                          f"({run}); use regularizer=none")
    return Regularizer(kinetic=float(r.kinetic), jacobian=float(r.jacobian), probe=r.probe)


def regularizer_label(r) -> str:
    """The `regularizer` result column of a `regularizer` config node: none, or rnode with its weights."""
    return "none" if r.name == "none" else f"rnode(kinetic={r.kinetic:g}, jacobian={r.jacobian:g}, probe={r.probe})"


def artifact_suffix(r) -> str:
    """What a regularised run adds to the names of the files it saves beside its row (weights, arrays for
    the figures), so that they never replace those of the unregularised run of the same cell: '' for none,
    e.g. '_rnode_k0.01_j0.01_rademacher' (None: ''). The figures of the paper's results read unsuffixed files only."""
    return "" if r is None or r.name == "none" else f"_rnode_k{r.kinetic:g}_j{r.jacobian:g}_{r.probe}"


@dataclass
class Collection:
    """The terms of every regularised solve of one step: their weighted sum (differentiable) and values."""

    regularizer: Regularizer
    penalty: Optional[torch.Tensor] = None  # Σ kinetic·K + jacobian·J over the solves (0-dim), None without any
    kinetic: float = 0.0  # Σ K over the solves (batch means), for the record
    jacobian: float = 0.0  # Σ J likewise (0 when the Jacobian term has weight 0: it is not computed)
    solves: int = 0

    def add(self, kinetic: torch.Tensor, jacobian: Optional[torch.Tensor]) -> None:
        r = self.regularizer
        term = r.kinetic * kinetic + (r.jacobian * jacobian if jacobian is not None else 0.0)
        self.penalty = term if self.penalty is None else self.penalty + term
        self.kinetic += float(kinetic.detach())
        self.jacobian += float(jacobian.detach()) if jacobian is not None else 0.0
        self.solves += 1


_ACTIVE: contextvars.ContextVar[Optional[Collection]] = contextvars.ContextVar("noderun_regularization",
                                                                                 default=None)


@contextlib.contextmanager
def collect(regularizer: Regularizer) -> Iterator[Collection]:
    """Regularise every ODE solve inside the block (see the module docstring); yields their Collection."""
    collection = Collection(regularizer)
    token = _ACTIVE.set(collection if regularizer.active else None)
    try:
        yield collection
    finally:
        _ACTIVE.reset(token)


def active() -> Optional[Collection]:
    """The open collection, if a regularised training step is under way and gradients are recorded."""
    collection = _ACTIVE.get()
    return collection if collection is not None and torch.is_grad_enabled() else None


class RegularizedDynamics(nn.Module):
    """(t, (*state, K, J)) -> (*f(t, state), ‖f₀‖², ‖εᵀ ∂f₀/∂z₀‖²), f₀ and z₀ the first state component.

    probe: ε shaped like z₀ (None: the Jacobian term is not computed and its state stays 0). The
    dynamics module is held outside the module tree, so that its parameters are not registered twice
    (the adjoint differentiates the caller's adjoint_params).
    """

    def __init__(self, func: Callable, is_tuple: bool, probe: Optional[torch.Tensor]):
        super().__init__()
        self.__dict__["func"] = func
        self.is_tuple, self.probe = is_tuple, probe

    def forward(self, t: torch.Tensor, state: tuple) -> tuple:
        parts, kinetic_state = state[:-2], state[-2]
        z = parts[0]
        # The vector-Jacobian product needs a graph through f; the caller's graph (backpropagation
        # through the solver, or the adjoint's backward solve) is extended only when it records one.
        record = torch.is_grad_enabled()
        with torch.enable_grad():
            # Outside a recorded graph (the adjoint's forward solve) z may still be a view of a tensor that
            # requires grad but carries no graph to it: differentiate a detached copy there.
            z_in = z if record and z.requires_grad else z.detach().requires_grad_(True)
            arguments = (z_in, *parts[1:]) if self.is_tuple else z_in
            out = self.func(t, arguments)
            f = out[0] if self.is_tuple else out
            kinetic = f.pow(2).flatten(1).sum(1)
            if self.probe is not None:
                (vjp,) = torch.autograd.grad(f, z_in, self.probe, create_graph=record)
                jacobian = vjp.pow(2).flatten(1).sum(1)
            else:
                jacobian = torch.zeros_like(kinetic_state)
        outs = (*out, kinetic, jacobian) if self.is_tuple else (out, kinetic, jacobian)
        return outs if record else tuple(x.detach() for x in outs)


def draw_probe(z: torch.Tensor, probe: str) -> torch.Tensor:
    """One probe per sample, shaped like z, from torch's global generator (checkpointed with the run)."""
    if probe == "gaussian":
        return torch.randn_like(z)
    return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1


def solve_regularized(solve: Callable, func: Callable, y0, t: torch.Tensor, collection: Collection,
                      adjoint_params: Optional[tuple]):
    """solve(func, y0, t, adjoint_params) with K and J integrated beside the state; adds them to `collection`
    and returns what the plain solve returns. `solve` is the caller's solve with its other settings bound."""
    is_tuple = isinstance(y0, tuple)
    z0 = y0[0] if is_tuple else y0
    regularizer = collection.regularizer
    probe = draw_probe(z0, regularizer.probe) if regularizer.jacobian > 0 else None
    if adjoint_params is None and isinstance(func, nn.Module):
        adjoint_params = tuple(func.parameters())
    zeros = z0.new_zeros(z0.shape[0])
    augmented = (*y0, zeros, zeros.clone()) if is_tuple else (y0, zeros, zeros.clone())
    solution = solve(RegularizedDynamics(func, is_tuple, probe), augmented, t, adjoint_params)
    # integrals from t[0] to t[-1]; a solve backwards in time integrates with negative dt
    sign = 1.0 if float(t[-1]) >= float(t[0]) else -1.0
    kinetic, jacobian = sign * solution[-2][-1].mean(), sign * solution[-1][-1].mean()
    collection.add(kinetic, jacobian if probe is not None else None)
    return tuple(solution[:-2]) if is_tuple else solution[0]

