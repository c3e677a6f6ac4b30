"""The step loops: fixed-step and adaptive integration of a flat state.

These work on a flat 1-D state ``[N]`` and a flat dynamics
``func(t: float, y: [N]) -> [N]``, with times as Python floats (float64).
Shapes, tuples and input validation are handled by :mod:`.solve`.  Time may
decrease: steps are signed and all comparisons use the direction of
integration, so backward solves (the adjoint) need no change of variables.

Discontinuities in time (``jump_t``, and ``perturb`` on fixed grids) are handled as
torchdiffeq does: ``func`` sees its time as a 0-dim tensor of the state's dtype, and an
evaluation that belongs to one side of a discontinuity at ``T`` is made at the value of that
dtype next to ``T`` on that side (``torch.nextafter``), so that ``func`` branching on
``t < T`` takes the branch of the side the step is on.
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
from .step_control import Norm, check_step, error_ratio, initial_step, make_controller, rms_norm
from .tableau import ButcherTableau

FlatFunc = Callable[[float, torch.Tensor], torch.Tensor]

# A rejected step whose error is NaN/inf is retried with a smaller step (the
# trial step may simply have been too large); this many in a row means the
# dynamics themselves produce non-finite values.
_MAX_NONFINITE_REJECTIONS = 30


def count_rejection(stats: SolveStats, ratio: float, nonfinite: int, t: float, h: float) -> int:
    """Count a rejected step; return the number of non-finite error ratios in a row, raising
    ``ODESolverError`` once it reaches _MAX_NONFINITE_REJECTIONS (the dynamics, not the step,
    produce the non-finite values)."""
    stats.steps_rejected += 1
    if math.isfinite(ratio):
        return nonfinite
    if nonfinite + 1 >= _MAX_NONFINITE_REJECTIONS:
        raise ODESolverError(
            f"the dynamics return non-finite values at t={t!r} even with step size "
            f"{h!r}; check func and y0, or lower options['max_step']."
        )
    return nonfinite + 1


@dataclass(frozen=True)
class SolverOptions:
    """Resolved solver settings (see :func:`noderun.ode.odeint` for the meaning).

    Attributes beyond torchdiffeq's scalar options:
        step_t, jump_t: Times (Python floats, any order, no repeats) the adaptive step
            loop must step onto; at ``jump_t`` it also restarts (no FSAL reuse, ``func``
            re-evaluated just after the jump).  Times outside the open interval of a
            solve are ignored, so the adjoint's backward intervals can share them; a solve
            that starts on a jump starts on its far side.
        grid_constructor: Fixed-step methods: ``(func, y0, t) -> grid`` (see
            :func:`_user_grid`); ``None`` for one step per output interval or ``step_size``.
        perturb: Fixed-step methods: evaluate each step's first stage just after its
            start and its ``c = 1`` stages just before its end (torchdiffeq's ``perturb``).
        controller: ``'integral'`` (:class:`~.step_control.StepController`) or ``'pi'``
            (:class:`~.step_control.PIController` with ``pcoeff``, ``icoeff``).
    """

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
    step_t: Tuple[float, ...] = ()
    jump_t: Tuple[float, ...] = ()
    grid_constructor: Optional[Callable] = None
    perturb: bool = False
    controller: str = "integral"
    pcoeff: float = 0.3
    icoeff: float = 0.4


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
    entry = _DENSE_CACHE.get(id(tableau))
    if entry is None or entry[0] is not tableau:
        # With its extra stages where the tableau has them (dopri8): they cost evaluations
        # only in steps with output times inside, and spare stepping onto every output time.
        entry = _DENSE_CACHE[id(tableau)] = (tableau, DenseOutput(tableau, extra_stages=True))
    return entry[1]


def _in_dtype(t: float, dtype: torch.dtype) -> float:
    """``t`` rounded to ``dtype``, the precision in which ``func`` sees its time."""
    return t if dtype == torch.float64 else float(torch.tensor(t, dtype=dtype))


def _next_to(t: float, side: float, dtype: torch.dtype) -> float:
    """The value of ``dtype`` next to ``t`` (rounded to ``dtype``) towards ``side`` (+1 or -1)."""
    x = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(x, torch.tensor(math.copysign(math.inf, side), dtype=dtype)))


def _one_sided(func: FlatFunc, t_disc: float, side: float, dtype: torch.dtype) -> FlatFunc:
    """``func`` evaluated on the ``side`` (+1: later, -1: earlier) of a discontinuity at ``t_disc``.

    Times at or beyond ``t_disc`` on the other side (compared in ``dtype``, as ``func`` will
    see them) are replaced by the value of ``dtype`` next to ``t_disc`` on ``side``.  Used for
    the stages of a step that ends (or starts) at a discontinuity.
    """
    t_d = _in_dtype(t_disc, dtype)
    t_side = _next_to(t_disc, side, dtype)

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        return func(t_side if side * (_in_dtype(t, dtype) - t_d) <= 0 else t, y)

    return f


def _step_to(t: float, target: float) -> float:
    """A signed step ``h`` with ``t + h == target`` exactly where one exists (almost always).

    ``rk_step`` evaluates stage ``i`` at ``t + c_i * h``; with this ``h`` the ``c = 1`` stages
    are evaluated exactly at ``target`` (an output, ``step_t`` or ``jump_t`` time).
    """
    h = target - t
    for _ in range(4):
        end = t + h
        if end == target:
            break
        h = math.nextafter(h, math.inf if end < target else -math.inf)
    else:
        h = target - t
    return h


def _breakpoints(o: SolverOptions, t0: float, t_end: float, direction: float) -> List[Tuple[float, bool]]:
    """``(time, is_jump)`` for the ``step_t`` and ``jump_t`` strictly inside the solve's
    interval, in the order the solve reaches them (others are ignored, as in torchdiffeq)."""
    points = [(x, False) for x in o.step_t] + [(x, True) for x in o.jump_t]
    inside = [(x, j) for x, j in points if direction * (x - t0) > 0 and direction * (t_end - x) > 0]
    return sorted(inside, key=lambda p: direction * p[0])


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
        ys = _integrate_fixed(counted, y0, times, tableau, options, f0, stats)
    return ys, stats


def _user_grid(constructor: Callable, func: FlatFunc, y0: torch.Tensor, times: Sequence[float]) -> List[float]:
    """Call ``grid_constructor(func, y0, t)`` and validate the grid it returns.

    As in torchdiffeq, it gets the dynamics (here the flat ``func(t, y: [N]) -> [N]``, ``t`` a
    float or 0-dim tensor), the flat ``y0`` ``[N]`` and the output times ``t`` (a 1-D float64
    tensor on ``y0``'s device, in the caller's order); it must return a 1-D tensor (or
    sequence) of finite times, strictly monotone in the direction of ``t``, starting at
    ``t[0]`` and ending at ``t[-1]`` exactly.
    """
    t = torch.tensor(list(times), dtype=torch.float64, device=y0.device)
    grid = constructor(lambda tt, y: func(float(tt), y), y0, t)
    if torch.is_tensor(grid):
        if grid.ndim != 1:
            raise ValueError(f"grid_constructor must return a 1-D tensor of times, got shape {tuple(grid.shape)}")
        grid = grid.detach().to(device="cpu", dtype=torch.float64).tolist()
    else:
        try:
            grid = [float(x) for x in grid]
        except (TypeError, ValueError):
            raise ValueError("grid_constructor must return a 1-D tensor (or sequence) of times") from None
    if len(grid) < 2 or not all(math.isfinite(x) for x in grid):
        raise ValueError("grid_constructor must return at least 2 finite times")
    if grid[0] != times[0] or grid[-1] != times[-1]:
        raise ValueError(
            f"grid_constructor's grid must start at t[0]={times[0]!r} and end at t[-1]={times[-1]!r}, "
            f"got {grid[0]!r} .. {grid[-1]!r}"
        )
    direction = 1.0 if times[-1] > times[0] else -1.0
    if not all(direction * (b - a) > 0 for a, b in zip(grid, grid[1:])):
        raise ValueError("grid_constructor's grid must be strictly monotone in the direction of t")
    return grid


def _integrate_fixed(
    func: FlatFunc,
    y0: torch.Tensor,
    times: Sequence[float],
    tableau: ButcherTableau,
    o: SolverOptions,
    f0: Optional[torch.Tensor],
    stats: SolveStats,
) -> torch.Tensor:
    """Fixed steps that land exactly on every output time.

    * ``step_size``: each interval ``[t_i, t_{i+1}]`` is split into
      ``ceil(|t_{i+1} - t_i| / step_size)`` equal steps, so the step never exceeds it.
    * ``grid_constructor``: the steps run along the grid it returns, and a grid interval
      that holds output times is split at them: the solver steps onto every output time
      instead of interpolating (torchdiffeq interpolates linearly, or by cubic Hermite with
      ``interp='cubic'``).  Where the output times are grid points the result is torchdiffeq's.
    * neither: one step per output interval (torchdiffeq's grid ``t``).

    With ``perturb`` each step's first stage is evaluated just after its start and its ``c = 1``
    stages just before its end (the values of the state's dtype next to them), and the first
    stage is never reused from the previous step (see :func:`_one_sided`).
    """
    dtype = y0.dtype
    direction = 1.0 if times[-1] > times[0] else -1.0
    grid = None if o.grid_constructor is None else _user_grid(o.grid_constructor, func, y0, times)
    g = 1  # next grid point
    outputs = [y0]
    y, k1 = y0, f0
    if o.perturb:
        k1 = None  # f0 was evaluated at t[0] itself, not just after it
    for i in range(1, len(times)):
        t_start, t_stop, span = times[i - 1], times[i], times[i] - times[i - 1]
        if grid is not None:
            # The grid points strictly inside this output interval, then the output time.
            while g < len(grid) and direction * (grid[g] - t_start) <= 0:
                g += 1
            ends = []
            while g < len(grid) and direction * (grid[g] - t_stop) < 0:
                ends.append(grid[g])
                g += 1
            ends.append(t_stop)
        else:
            # The small slack keeps round-off in span/step_size from adding a step.
            n = 1 if o.step_size is None else max(1, math.ceil(abs(span) / o.step_size - 1e-9))
            h = span / n
            ends = None
        n_steps = n if ends is None else len(ends)
        t = t_start
        for s in range(n_steps):
            if ends is None:
                t = t_start + s * h  # multiply, not accumulate: no drift in t
                hs = h
            else:
                hs = _step_to(t, ends[s])
            step_func = func
            if o.perturb:
                step_func = _one_sided(_one_sided(func, t, direction, dtype), t + hs, -direction, dtype)
                k1 = None
            if k1 is None:
                k1 = step_func(t, y)
            res = rk_step(step_func, tableau, t, y, hs, k1, with_error=False)
            y, k1 = res.y1, res.f1  # f1 is None unless the method is FSAL
            if ends is not None:
                t = ends[s]
        stats.steps_accepted += n_steps
        # One host sync per output time: fixed steps cannot recover from
        # overflow, so stop with a clear error instead of returning NaNs.
        if not bool(torch.isfinite(y).all()):
            raise ODESolverError(
                f"the state became non-finite before t={times[i]!r} with fixed step {abs(hs)!r}; "
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
    """Error-controlled steps; requested times inside a step come from dense output.

    Steps end exactly on every ``step_t`` and ``jump_t`` time inside the interval.  A step
    that ends on a jump is evaluated on the near side of it (its ``c = 1`` stages just before
    the jump), and the next step starts afresh on the far side: ``func`` is re-evaluated just
    after the jump instead of reusing the FSAL stage, whose derivative belongs to the other
    side.  Output times at or around a jump are unaffected (the state is continuous; a time
    inside a step is interpolated within that step only).
    """
    n_out = len(times)
    t, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t else -1.0
    dtype = y0.dtype
    y = y0
    # A solve that starts on a jump (the adjoint's backward intervals start at output times,
    # which may be jumps) starts on its far side: f0, evaluated at the jump itself, may be the
    # derivative of the other side.
    after_jump = t in o.jump_t  # whether t is a jump time: the step starting here is on its far side
    if after_jump:
        k1 = _one_sided(func, t, direction, dtype)(t, y)
    else:
        k1 = func(t, y) if f0 is None else f0
    dense = _dense_output(tableau)
    controller = make_controller(
        o.controller, tableau.error_order, o.safety, o.ifactor, o.dfactor, o.pcoeff, o.icoeff
    )

    if o.first_step is not None:
        h = float(o.first_step)
    elif hint is not None and hint.h is not None and math.isfinite(hint.h) and hint.h > 0:
        h = hint.h
    else:
        with torch.no_grad():
            h = initial_step(func, t, y, k1, direction, tableau.error_order, o.rtol, o.atol, o.norm)
    h = min(h, o.max_step)

    # An interpolant of lower order than the error estimate would dominate the error at
    # output times, so such a method would step onto every output time instead.  (Every
    # built-in method now has one of at least that order: cubic Hermite for the low-order
    # pairs, their own for dopri5, tsit5 and dopri8.)
    stop_at_outputs = dense.order < tableau.error_order
    breaks = _breakpoints(o, t, t_end, direction)
    b = 0  # next breakpoint

    outputs: List[torch.Tensor] = [y0.unsqueeze(0)]
    idx = 1  # next output time to produce
    nonfinite = 0
    while idx < n_out:
        check_step(t, h, o.min_step, stats.steps_accepted + stats.steps_rejected, o.max_num_steps)
        # Never step past the final (or next, see above) output time or the next breakpoint;
        # stretch the step up to 1% to avoid a sliver of a step (as Hairer's codes do).
        t_stop = times[idx] if stop_at_outputs else t_end
        at_break = b < len(breaks) and direction * (breaks[b][0] - t_stop) <= 0
        if at_break:
            t_stop = breaks[b][0]
        remaining = abs(t_stop - t)
        last = 1.01 * h >= remaining
        hs = _step_to(t, t_stop) if last else direction * h
        h_try = abs(hs)
        step_func = func
        if after_jump:
            step_func = _one_sided(step_func, t, direction, dtype)
        ends_at_jump = last and at_break and breaks[b][1]
        if ends_at_jump:
            step_func = _one_sided(step_func, t_stop, -direction, dtype)
        if k1 is None:
            k1 = step_func(t, y)
        res = rk_step(step_func, tableau, t, y, hs, k1)
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
                    f1 = step_func(t_new, res.y1)  # reused below as the next step's k1
                outputs.append(dense.evaluate(y, hs, res.K, f1, thetas, func=step_func, t0=t))
            if idx < n_out and times[idx] == t_new:
                outputs.append(res.y1.unsqueeze(0))
                idx += 1
            if last and at_break:
                b += 1
            # Across a jump the derivative changes: the next step evaluates its first stage
            # afresh, just after the jump, instead of reusing f1 (which is from before it).
            after_jump = ends_at_jump
            t, y, k1 = t_new, res.y1, (None if ends_at_jump else f1)
        else:
            nonfinite = count_rejection(stats, ratio, nonfinite, t, h_try)
        h_next = controller.next_step(h_try, ratio, accepted)
        if accepted and last:
            # A step shortened to hit an output or break time says nothing against the
            # longer step the controller had proposed.
            h_next = max(h_next, h)
        h = min(h_next, o.max_step)
    if hint is not None:
        hint.h = h
    return torch.cat(outputs)
