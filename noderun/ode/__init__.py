"""Explicit Runge-Kutta ODE solvers with the adjoint method.

Drop-in for the call shape of torchdiffeq's ``odeint`` / ``odeint_adjoint``::

    from noderun.ode import odeint, odeint_adjoint, track_stats

    ys = odeint(func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    with track_stats() as stats:
        loss = odeint_adjoint(model, y0, t)[-1].sum()
        loss.backward()
    stats.nfe_forward, stats.nfe_backward
"""

from .adjoint import odeint_adjoint
from .errors import ODESolverError
from .methods import METHODS, RUNGE_KUTTA_METHODS, get_method
from .solve import odeint, odeint_event
from .stats import SolveStats, last_solve_stats, track_stats
from .tableau import ButcherTableau

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "ODESolverError",
    "SolveStats",
    "track_stats",
    "last_solve_stats",
    "METHODS",
    "RUNGE_KUTTA_METHODS",
    "get_method",
    "ButcherTableau",
]
