"""The step loops: fixed-step and adaptive integration of a flat state.

These work on a flat 1-D state ``[N]`` and a flat dynamics
``func(t: float, y: [N]) -> [N]``, with times as Python floats (float64).
Shapes, tuples and input validation are handled by :mod:`.solve`.  Time may
decrease: steps are signed and all comparisons use the direction of
integration, so backward solves (the adjoint) need no change of variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .errors import ODESolverError
from .interpolate import DenseOutput
from .rk_step import rk_step
from .stats import SolveStats
from .step_control import Norm, StepController, check_step, error_ratio, initial_step, rms_norm
from .tableau import ButcherTableau

FlatFunc = Callable[[float, torch.Tensor], torch.Tensor]

# A rejected step whose error is NaN/inf is retried with a smaller step (the
# trial step may simply have been too large); this many in a row means the
# dynamics themselves produce non-finite values.
_MAX_NONFINITE_REJECTIONS = 30


@dataclass(frozen=True)
class SolverOptions:
    """Resolved solver settings (see :func:`noderun.ode.odeint` for the meaning)."""

    rtol: float = 1e-7
    atol: float = 1e-9
    step_size: Optional[float] = None
    first_step: Optional[float] = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 100_000
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    norm: Norm = rms_norm


@dataclass
class StepHint:
    """A step size carried from one solve to the next.

    ``integrate`` starts from ``h`` (when set, and no ``first_step`` is given) instead of
    selecting an initial step, which costs one evaluation and is deliberately cautious;
    when it returns, ``h`` holds the step the controller proposed after the last step.
    The adjoint's backward solve starts from the forward solve's proposal at the final
    time, and each backward interval from the previous interval's.
    """

    h: Optional[float] = None


_DENSE_CACHE: dict = {}


def _dense_output(tableau: ButcherTableau) -> DenseOutput:
    dense = _DENSE_CACHE.get(tableau.name)
    if dense is None:
        dense = _DENSE_CACHE[tableau.name] = DenseOutput(tableau)
    return dense


def integrate(
    func: FlatFunc,
    y0: torch.Tensor,
    times: Sequence[float],
    tableau: ButcherTableau,
    options: SolverOptions,
    f0: Optional[torch.Tensor] = None,
    hint: Optional[StepHint] = None,
) -> Tuple[torch.Tensor, SolveStats]:
    """Solve ``y' = func(t, y)`` from ``times[0]`` and return the state at every time.

    Args:
        func: Flat dynamics.
        y0: ``[N]`` initial state.
        times: Strictly monotone output times (Python floats); ``times[0]`` is
            the initial time.
        tableau: The method.
        options: Resolved options.  Adaptive tableaus are step-size controlled
            unless ``options.step_size`` is set.
        f0: ``func(times[0], y0)`` if the caller already has it (saves one
            evaluation).
        hint: Adaptive solves: start from ``hint.h`` if set (and ``options.first_step``
            is not), and leave the controller's last proposed step in it.

    Returns:
        ``([len(times), N] solution, SolveStats)`` with ``nfe_forward``,
        ``steps_accepted`` and ``steps_rejected`` filled in.
    """
    stats = SolveStats(num_solves=1)

    def counted(t: float, y: torch.Tensor) -> torch.Tensor:
        stats.nfe_forward += 1
        return func(t, y)

    if len(times) == 1:
        return y0.unsqueeze(0), stats
    if tableau.adaptive and options.step_size is None:
        ys = _integrate_adaptive(counted, y0, times, tableau, options, f0, stats, hint)
    else:
        ys = _integrate_fixed(counted, y0, times, tableau, options.step_size, f0, stats)
    return ys, stats


def _integrate_fixed(
    func: FlatFunc,
    y0: torch.Tensor,
    times: Sequence[float],
    tableau: ButcherTableau,
    step_size: Optional[float],
    f0: Optional[torch.Tensor],
    stats: SolveStats,
) -> torch.Tensor:
    """Fixed steps that land exactly on every output time.

    Each interval ``[t_i, t_{i+1}]`` is split into ``ceil(|t_{i+1} - t_i| / step_size)``
    equal steps (one step when ``step_size`` is None), so no interpolation is
    needed and the step never exceeds ``step_size``.
    """
    outputs = [y0]
    y, k1 = y0, f0
    for i in range(1, len(times)):
        t_start, span = times[i - 1], times[i] - times[i - 1]
        # The small slack keeps round-off in span/step_size from adding a step.
        n = 1 if step_size is None else max(1, math.ceil(abs(span) / step_size - 1e-9))
        h = span / n
        for s in range(n):
            t = t_start + s * h  # multiply, not accumulate: no drift in t
            if k1 is None:
                k1 = func(t, y)
            res = rk_step(func, tableau, t, y, h, k1, with_error=False)
            y, k1 = res.y1, res.f1  # f1 is None unless the method is FSAL
        stats.steps_accepted += n
        # One host sync per output time: fixed steps cannot recover from
        # overflow, so stop with a clear error instead of returning NaNs.
        if not bool(torch.isfinite(y).all()):
            raise ODESolverError(
                f"the state became non-finite before t={times[i]!r} with fixed step {abs(h)!r}; "
                "use a smaller options['step_size'] or an adaptive method."
            )
        outputs.append(y)
    return torch.stack(outputs)


def _integrate_adaptive(
    func: FlatFunc,
    y0: torch.Tensor,
    times: Sequence[float],
    tableau: ButcherTableau,
    o: SolverOptions,
    f0: Optional[torch.Tensor],
    stats: SolveStats,
    hint: Optional[StepHint] = None,
) -> torch.Tensor:
    """Error-controlled steps; requested times inside a step come from dense output."""
    n_out = len(times)
    t, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t else -1.0
    y = y0
    k1 = func(t, y) if f0 is None else f0
    dense = _dense_output(tableau)
    controller = StepController(tableau.error_order, o.safety, o.ifactor, o.dfactor)

    if o.first_step is not None:
        h = float(o.first_step)
    elif hint is not None and hint.h is not None and math.isfinite(hint.h) and hint.h > 0:
        h = hint.h
    else:
        with torch.no_grad():
            h = initial_step(func, t, y, k1, direction, tableau.error_order, o.rtol, o.atol, o.norm)
    h = min(h, o.max_step)

    # Interpolants of lower order than the error estimate (cubic Hermite for
    # tsit5 and dopri8) would dominate the error at output times, so those
    # methods step onto every output time instead of interpolating.
    stop_at_outputs = dense.order < tableau.error_order

    outputs: List[torch.Tensor] = [y0.unsqueeze(0)]
    idx = 1  # next output time to produce
    nonfinite = 0
    while idx < n_out:
        check_step(t, h, o.min_step, stats.steps_accepted + stats.steps_rejected, o.max_num_steps)
        # Never step past the final (or next, see above) output time; stretch
        # the step up to 1% to avoid a sliver of a step (as Hairer's codes do).
        t_stop = times[idx] if stop_at_outputs else t_end
        remaining = abs(t_stop - t)
        last = 1.01 * h >= remaining
        h_try = remaining if last else h
        hs = direction * h_try
        if k1 is None:
            k1 = func(t, y)
        res = rk_step(func, tableau, t, y, hs, k1)
        with torch.no_grad():
            ratio = h_try * error_ratio(res.err, y, res.y1, o.rtol, o.atol, o.norm)
        accepted = ratio <= 1.0  # False for NaN
        if accepted:
            nonfinite = 0
            stats.steps_accepted += 1
            t_new = t_stop if last else t + hs
            f1 = res.f1
            thetas = []
            while idx < n_out and direction * (times[idx] - t_new) < 0:
                thetas.append((times[idx] - t) / hs)
                idx += 1
            if thetas:
                if dense.needs_f1 and f1 is None:
                    f1 = func(t_new, res.y1)  # reused below as the next step's k1
                outputs.append(dense.evaluate(y, hs, res.K, f1, thetas))
            if idx < n_out and times[idx] == t_new:
                outputs.append(res.y1.unsqueeze(0))
                idx += 1
            t, y, k1 = t_new, res.y1, f1
        else:
            stats.steps_rejected += 1
            if not math.isfinite(ratio):
                nonfinite += 1
                if nonfinite >= _MAX_NONFINITE_REJECTIONS:
                    raise ODESolverError(
                        f"the dynamics return non-finite values at t={t!r} even with step size "
                        f"{h_try!r}; check func and y0, or lower options['max_step']."
                    )
        h_next = controller.next_step(h_try, ratio, accepted)
        if accepted and last:
            # A step shortened to hit an output time says nothing against the
            # longer step the controller had proposed.
            h_next = max(h_next, h)
        h = min(h_next, o.max_step)
    if hint is not None:
        hint.h = h
    return torch.cat(outputs)
