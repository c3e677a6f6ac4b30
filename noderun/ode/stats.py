"""Solver statistics: function evaluations and steps.

Usage::

    with track_stats() as stats:
        loss = model(x)
        loss.backward()
    stats.nfe_forward, stats.nfe_backward, stats.steps_accepted, stats.steps_rejected

Every solve counts its own evaluations and steps in plain Python integers (the
step loop needs them anyway for ``max_num_steps``) and, when it finishes, adds
them to every :class:`SolveStats` block that is active.  Outside any block the
counts are simply dropped.  Blocks may be nested: an inner block's counts also
appear in the outer block.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Tuple


@dataclass
class SolveStats:
    """Counters accumulated over solves.

    Attributes:
        nfe_forward: Calls of ``func`` made by forward solves (``odeint`` and the
            forward pass of ``odeint_adjoint``).
        nfe_backward: Calls of the augmented (adjoint) dynamics made by the
            backward pass of ``odeint_adjoint``; each calls ``func`` once plus a
            vector-Jacobian product.  Backpropagating through plain ``odeint``
            evaluates nothing and leaves this at 0.
        steps_accepted: Accepted steps of forward solves.
        steps_rejected: Rejected steps of forward solves.
        backward_steps_accepted: Accepted steps of adjoint backward solves.
        backward_steps_rejected: Rejected steps of adjoint backward solves.
        num_solves: Number of forward solves.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int = 0
    steps_rejected: int = 0
    backward_steps_accepted: int = 0
    backward_steps_rejected: int = 0
    num_solves: int = 0

    def add(self, other: "SolveStats") -> None:
        """Add ``other``'s counters to this one, in place."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The blocks active in the current context, innermost last.
_ACTIVE: contextvars.ContextVar[Tuple[SolveStats, ...]] = contextvars.ContextVar(
    "noderun_ode_active_stats", default=()
)
_LAST: contextvars.ContextVar[Optional[SolveStats]] = contextvars.ContextVar("noderun_ode_last_stats", default=None)


@contextlib.contextmanager
def track_stats() -> Iterator[SolveStats]:
    """Accumulate the statistics of every solve run inside the ``with`` block.

    Yields a fresh :class:`SolveStats`; counts never carry over between blocks.
    The backward pass of ``odeint_adjoint`` reports to the blocks that were
    active when its forward solve ran (autograd may run it on another thread).
    """
    stats = SolveStats()
    token = _ACTIVE.set(_ACTIVE.get() + (stats,))
    try:
        yield stats
    finally:
        _ACTIVE.reset(token)


def active_sinks() -> Tuple[SolveStats, ...]:
    """The :class:`SolveStats` blocks active in the current context."""
    return _ACTIVE.get()


def record(stats: SolveStats, sinks: Optional[Tuple[SolveStats, ...]] = None) -> None:
    """Report the counters of one finished solve to ``sinks`` (default: active blocks)."""
    _LAST.set(stats)
    for sink in active_sinks() if sinks is None else sinks:
        sink.add(stats)


def last_solve_stats() -> Optional[SolveStats]:
    """Statistics of the most recent solve (forward or adjoint backward) in this context.

    Per thread: autograd runs a CUDA backward pass on its own worker thread, so after
    ``loss.backward()`` on CUDA this is still the forward solve's. ``track_stats`` counts both
    phases on every device (the backward reports to the blocks active at its forward solve).
    """
    return _LAST.get()
