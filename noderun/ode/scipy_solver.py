"""``method='scipy_solver'``: solve with :func:`scipy.integrate.solve_ivp`, as torchdiffeq does.

SciPy is optional: without it this method is refused with a one-line ``ValueError``.  The
solve runs on the host in float64 NumPy arrays; ``func`` is called (under ``torch.no_grad``)
with ``t`` and ``y`` converted to ``y0``'s dtype and device, and the solution comes back in
``y0``'s dtype and device.  It carries no gradients.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from . import stats as _stats
from .errors import ODESolverError

# Options of method='scipy_solver'.  torchdiffeq's wrapper accepts these three ...
SCIPY_OPTIONS = frozenset({"solver", "min_step", "max_step"})
# ... and silently drops these (torchdiffeq always sets 'norm'; the others are legacy).
SCIPY_IGNORED_OPTIONS = frozenset({"norm", "grid_points", "eps"})
DEFAULT_SCIPY_SOLVER = "LSODA"  # torchdiffeq's default


def require_scipy() -> None:
    """Raise the one-line ``ValueError`` for ``scipy_solver`` when SciPy cannot be imported."""
    try:
        import scipy.integrate  # noqa: F401
    except ImportError:
        raise ValueError(
            "method 'scipy_solver' needs SciPy, which is not installed; `pip install scipy` enables it"
        ) from None


def solve_with_scipy(
    state: Any,
    func: Any,
    y0: torch.Tensor,
    times: Sequence[float],
    rtol: float,
    atol: float,
    options: Optional[Dict[str, Any]],
) -> torch.Tensor:
    """Solve the flat problem with ``solve_ivp``; return the ``[len(times), N]`` solution (no graph).

    Args:
        state: The :class:`~noderun.ode.inputs.FlatState` of ``y0``.
        func: The user's dynamics.
        y0: Flat ``[N]`` initial state.
        times: Validated output times (Python floats).
        rtol, atol: Passed to ``solve_ivp``.
        options: ``solver`` (any ``solve_ivp`` method, default ``'LSODA'``), ``min_step``
            (LSODA only), ``max_step``; ``norm``, ``grid_points`` and ``eps`` are accepted and
            ignored, as torchdiffeq does.
    """
    require_scipy()
    import numpy as np
    from scipy.integrate import solve_ivp

    options = dict(options or {})
    unknown = sorted(set(options) - SCIPY_OPTIONS - SCIPY_IGNORED_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method 'scipy_solver'; "
            f"valid options: {', '.join(sorted(SCIPY_OPTIONS | SCIPY_IGNORED_OPTIONS))}"
        )
    solver = options.get("solver", DEFAULT_SCIPY_SOLVER)
    kwargs: Dict[str, Any] = {"rtol": float(rtol), "atol": float(atol)}
    # min_step is an LSODA option; other solvers warn about it, so pass it only when given.
    if options.get("min_step") is not None:
        kwargs["min_step"] = float(options["min_step"])
    if options.get("max_step") is not None:
        kwargs["max_step"] = float(options["max_step"])

    stats = _stats.SolveStats(num_solves=1)
    if len(times) == 1:
        _stats.record(stats)
        return y0.detach().unsqueeze(0)

    flat_func = state.flat_func(func)
    dtype, device = state.dtype, state.device

    def np_func(t: float, y: "np.ndarray") -> "np.ndarray":
        stats.nfe_forward += 1
        with torch.no_grad():
            # A copy: func must not see (or alter) solve_ivp's own array.
            f = flat_func(float(t), torch.tensor(y, dtype=torch.float64).to(device=device, dtype=dtype))
        return f.detach().to(device="cpu", dtype=torch.float64).numpy()

    y0_np = y0.detach().to(device="cpu", dtype=torch.float64).numpy()
    sol = solve_ivp(np_func, (times[0], times[-1]), y0_np, method=solver, t_eval=list(times), **kwargs)
    if sol.status != 0 or sol.y.shape[1] != len(times):
        raise ODESolverError(
            f"scipy.integrate.solve_ivp (method {solver!r}) failed before t={times[-1]!r}: {sol.message}"
        )
    _stats.record(stats)
    ys = torch.from_numpy(np.ascontiguousarray(sol.y.T)).to(device=device, dtype=dtype)
    # t_eval starts at t[0], but return y0 itself there (as every other method does).
    ys[0] = y0.detach()
    if not bool(torch.isfinite(ys).all()):
        raise ODESolverError("scipy.integrate.solve_ivp returned non-finite values; check func and y0")
    return ys
