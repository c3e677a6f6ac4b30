"""Event handling: integrate until an event function crosses zero.

``odeint(func, y0, t, event_fn=g)`` and ``odeint_adjoint(..., event_fn=g)`` delegate here
(:func:`odeint_until_event`); :func:`odeint_event` is torchdiffeq's convenience wrapper that
takes a single initial time.  The semantics are those of torchdiffeq 0.2.5:

* ``t`` holds two times: ``t[0]`` is the initial time, ``t[1]`` only gives the direction of
  integration (the solve runs past it, until the event or ``max_num_steps``).
* ``g(t, y)`` returns a tensor of any shape.  With ``s = sign(g(t0, y0))`` (elementwise) the
  event is the first time the *combined* value ``min(g(t, y) * s)`` is ``<= 0``, i.e. the first
  time any element of ``g`` reaches zero.  If an element is exactly zero at ``t0`` the event is
  at ``t0``.
* The result is ``(event_t, solution)``: ``event_t`` a 0-dim tensor of ``t``'s dtype and device,
  ``solution`` of shape ``[2, *y0.shape]`` (a tuple of such for a tuple state) holding the states
  at ``t0`` and ``event_t``.

How the event is found.  The step loop (the same building blocks as :mod:`.integrate`:
``rk_step``, the step-size controller, ``error_ratio``, ``DenseOutput``) evaluates the combined event
value at the end of every accepted step; in the step where it first becomes ``<= 0`` the root is
bracketed and refined by the Illinois method (regula falsi with the stale end's value halved,
plus bisection whenever the bracket fails to halve) to a bracket of a few units of the state
dtype's precision in the step fraction.  Inside the step the state comes, as in ``odeint``, from
the method's dense output (``dopri5``'s and ``tsit5``'s own interpolants, cubic Hermite for the
low-order methods), except where that interpolant is of lower order than the error estimate
(``dopri8``, whose own interpolant needs extra stages; ``rk4`` for fixed steps): there each
trial point is a genuine partial RK step from the start of the step.
The returned time is the end of the final bracket on the *initial* side (the combined value there
is still > 0), so that a state update at the event (a bounce) restarts a solve without
re-triggering the same event at once; the other end is at most that tolerance later.

Gradients.  ``t_e`` is defined implicitly by ``G(t_e, y(t_e; theta); theta) = 0`` with ``G`` the
combined event function, so (implicit function theorem)::

    d t_e = -(dG at fixed t) / (dG/dt + dG/dy . f(t_e, y_e))
    d y_e = (d y at fixed t) + f(t_e, y_e) d t_e

where "d y at fixed t" is the sensitivity of the solution at the (constant) time ``t_e`` to ``y0``,
``t0`` and the parameters.  It comes from backpropagating through the steps (``adjoint=False``)
or from :func:`noderun.ode.odeint_adjoint` solved from ``t0`` to ``t_e`` (``adjoint=True``: the
event is first located without a graph, then the adjoint solve supplies the gradients).  The
denominator is computed once by autograd; ``event_t`` is the output of a small autograd function
whose backward multiplies by ``-1 / denominator``, and the state adds ``f(t_e, y_e) * (event_t -
event_t.detach())``, zero in value.  ``dG at fixed t`` includes tensors that ``event_fn`` itself
uses (torchdiffeq leaves those without gradient).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from . import stats as _stats
from .errors import ODESolverError
from .integrate import SolverOptions, count_rejection
from .interpolate import DenseOutput
from .methods import get_method
from .rk_step import rk_step
from .inputs import FlatState, State, check_times, resolve_options
from .step_control import check_step, error_ratio, initial_step, make_controller
from .tableau import ButcherTableau

FlatFunc = Callable[[float, torch.Tensor], torch.Tensor]

# Options of odeint that the event solve refuses (see odeint_until_event).
EVENT_REFUSED_OPTIONS = ("step_t", "jump_t", "perturb")

ADJOINT_KWARGS = frozenset({"adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options", "adjoint_params"})

# Root refinement stops long before this (the bracket halves at least every other iteration and
# the tolerance is a few ulps of the step fraction); it only guards against a pathological g.
_MAX_ROOT_ITERATIONS = 200


# ---------------------------------------------------------------------------
# The combined event function
# ---------------------------------------------------------------------------


class _CombinedEvent:
    """``min(event_fn(t, y) * sign(event_fn(t0, y0)))`` on the flat state.

    Positive until the first element of ``event_fn`` reaches zero (torchdiffeq combines event
    functions the same way).  ``t`` is passed to ``event_fn`` as a 0-dim tensor of the state's
    dtype and device, as to ``func``.
    """

    def __init__(self, event_fn: Callable, state: FlatState, t0: float, y0: torch.Tensor) -> None:
        if not callable(event_fn):
            raise TypeError(f"event_fn must be callable, got {type(event_fn).__name__}")
        self.event_fn = event_fn
        self.state = state
        with torch.no_grad():
            v0 = self._raw(self.time(t0), y0.detach())
        if not bool(torch.isfinite(v0).all()):
            raise ODESolverError(f"event_fn returned a non-finite value at the initial time t={t0!r}")
        self.signs = torch.sign(v0)
        # torchdiffeq: an element that is exactly zero at t0 is an event at t0.
        self.zero_at_start = bool((self.signs == 0).any())

    def time(self, t: float) -> torch.Tensor:
        return torch.scalar_tensor(t, dtype=self.state.dtype, device=self.state.device)

    def _raw(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = self.event_fn(t, self.state.unflatten(y))
        if not torch.is_tensor(v):
            v = torch.as_tensor(v, dtype=self.state.dtype, device=self.state.device)
        if not v.dtype.is_floating_point:
            raise TypeError(f"event_fn must return a floating-point tensor, got dtype {v.dtype}")
        return v

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Differentiable combined value (0-dim) at ``t`` (0-dim tensor) and flat ``y`` ``[N]``."""
        return torch.min(self._raw(t, y) * self.signs)

    def value(self, t: float, y: torch.Tensor) -> float:
        """The combined value as a Python float (one host sync), without a graph."""
        with torch.no_grad():
            return float(self(self.time(t), y.detach()))


# ---------------------------------------------------------------------------
# Locating the event
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _EventStep:
    """The accepted step in which the combined event value first became ``<= 0``.

    Tensors carry the graph the step loop built (none under ``torch.no_grad``).
    """

    t: float  # start of the step
    t_new: float  # end of the step
    hs: float  # signed step, t + hs == t_new up to round-off
    y: torch.Tensor  # [N] state at t
    k1: torch.Tensor  # [N] f(t, y)
    K: torch.Tensor  # [S, N] stages
    y1: torch.Tensor  # [N] state at t_new
    f1: Optional[torch.Tensor]  # [N] f(t_new, y1) for FSAL methods, else None
    g0: float  # combined value at t (> 0)
    g1: float  # combined value at t_new (<= 0)


def _no_event_error(t: float, num_steps: int, max_num_steps: int, g: float) -> ODESolverError:
    return ODESolverError(
        f"no event: the event function did not reach zero within max_num_steps={max_num_steps} steps "
        f"(took {num_steps} steps, reached t={t!r} where the combined event value is {g!r}). The event may "
        "never happen (check event_fn and the direction given by t[1] - t[0]); otherwise raise "
        "options['max_num_steps']."
    )


def _step_until_sign_change(
    f: FlatFunc,
    y0: torch.Tensor,
    t0: float,
    direction: float,
    tableau: ButcherTableau,
    o: SolverOptions,
    event: _CombinedEvent,
    g0: float,
    stats: _stats.SolveStats,
) -> _EventStep:
    """Take steps from ``(t0, y0)`` until the combined event value is ``<= 0`` at a step's end.

    Why a loop of its own: ``integrate`` needs its output times in advance and keeps its steps
    to itself, while the event needs the event function checked after every accepted step and
    that step's stages for the root.  The adaptive logic (initial step, error ratio, the
    controller of ``options['controller']``, ``max_step``, non-finite retries, ``check_step``) is
    the one of ``integrate``, from the same building blocks.  Fixed steps
    (``options['step_size']``) are ``t0 + n * direction * step``.  The options this loop has no
    use for (``step_t``, ``jump_t``, ``perturb``) are refused by ``odeint_until_event``.
    """
    adaptive = tableau.adaptive and o.step_size is None
    t, y = t0, y0
    k1: Optional[torch.Tensor] = f(t, y)
    g = g0  # combined event value at t
    if adaptive:
        controller = make_controller(o.controller, tableau.error_order, o.safety, o.ifactor, o.dfactor, o.pcoeff,
                                     o.icoeff)
        if o.first_step is not None:
            h = float(o.first_step)
        else:
            with torch.no_grad():
                h = initial_step(f, t, y, k1, direction, tableau.error_order, o.rtol, o.atol, o.norm)
        h = min(h, o.max_step)
    else:
        h = float(o.step_size)
    n_fixed = 0
    nonfinite = 0
    while True:
        num_steps = stats.steps_accepted + stats.steps_rejected
        if num_steps >= o.max_num_steps:
            raise _no_event_error(t, num_steps, o.max_num_steps, g)
        if k1 is None:
            k1 = f(t, y)
        if adaptive:
            check_step(t, h, o.min_step, num_steps, o.max_num_steps)  # step-size underflow
            hs = direction * h
            res = rk_step(f, tableau, t, y, hs, k1)
            with torch.no_grad():
                ratio = h * error_ratio(res.err, y, res.y1, o.rtol, o.atol, o.norm)
            accepted = ratio <= 1.0  # False for NaN
            t_new = t + hs
        else:
            # Multiply, not accumulate: no drift in t over many steps.
            t_new = t0 + (n_fixed + 1) * direction * h
            hs = t_new - t
            res = rk_step(f, tableau, t, y, hs, k1, with_error=False)
            ratio, accepted = 0.0, True
        if accepted:
            nonfinite = 0
            stats.steps_accepted += 1
            n_fixed += 1
            g_new = event.value(t_new, res.y1)
            if not math.isfinite(g_new):
                raise ODESolverError(
                    f"the event function returned a non-finite value at t={t_new!r}"
                    + ("" if bool(torch.isfinite(res.y1).all()) else " (the state is non-finite there)")
                )
            if g_new <= 0.0:
                return _EventStep(t, t_new, hs, y, k1, res.K, res.y1, res.f1, g, g_new)
            t, y, k1, g = t_new, res.y1, res.f1, g_new  # f1 is None unless FSAL: computed at the loop's top
        else:
            nonfinite = count_rejection(stats, ratio, nonfinite, t, h)
        if adaptive:
            h = min(controller.next_step(h, ratio, accepted), o.max_step)


def _uses_partial_steps(tableau: ButcherTableau, adaptive: bool, dense: DenseOutput) -> bool:
    """Whether states inside the event step come from partial RK steps instead of the interpolant.

    The rule of ``integrate``: an interpolant of lower order than the error estimate (the method's
    order for fixed steps) would dominate the error, so step onto the time instead.
    """
    reference = tableau.error_order if adaptive else tableau.order
    return dense.order < reference


class _StateInStep:
    """``theta -> y(t + theta * hs)`` inside the event step, ``theta`` in ``[0, 1]``."""

    def __init__(self, f: FlatFunc, tableau: ButcherTableau, step: _EventStep, adaptive: bool) -> None:
        self.f, self.tableau, self.step = f, tableau, step
        dense = DenseOutput(tableau)
        self.partial = _uses_partial_steps(tableau, adaptive, dense)
        self.dense = None if self.partial else dense
        # Cubic Hermite of a non-FSAL method needs f(t_new, y1): one evaluation, in the caller's
        # grad mode so that the final state carries its graph; the search uses it detached.
        self.f1 = step.f1
        if self.dense is not None and self.dense.needs_f1 and self.f1 is None:
            self.f1 = f(step.t_new, step.y1)

    def __call__(self, theta: float, graph: bool) -> torch.Tensor:
        """``[N]`` state at ``theta``.

        With ``graph`` it is computed in the caller's grad mode from the step's tensors (so it
        carries their graph, if any); without, from detached tensors under ``torch.no_grad``.
        """
        s = self.step
        if theta == 1.0:
            return s.y1 if graph else s.y1.detach()
        if theta == 0.0:
            return s.y if graph else s.y.detach()
        if not graph:
            with torch.no_grad():
                return self._at(theta, s.y.detach(), s.k1.detach(), s.K.detach(), _detach(self.f1))
        return self._at(theta, s.y, s.k1, s.K, self.f1)

    def _at(self, theta, y, k1, K, f1) -> torch.Tensor:
        s = self.step
        if self.partial:
            return rk_step(self.f, self.tableau, s.t, y, theta * s.hs, k1, with_error=False).y1
        return self.dense.evaluate(y, s.hs, K, f1, [theta])[0]


def _detach(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.detach()


def _refine_root(phi: Callable[[float], float], g0: float, g1: float, xtol: float) -> float:
    """Bracketed root of ``phi`` on ``[0, 1]`` with ``phi(0) = g0 > 0 >= phi(1) = g1``.

    Illinois method: regula falsi, halving the value kept at an end that survived two updates in
    a row (so both ends converge), and a bisection whenever two iterations did not halve the
    bracket.  ``phi <= 0`` counts as crossed.  Returns the bracket's left end ``a`` (``phi(a) >
    0``) once the bracket is at most ``xtol`` wide.
    """
    a, fa, b, fb = 0.0, g0, 1.0, g1
    last_side = 0
    widths = [2.0, 2.0, 1.0]  # bracket widths, latest last (two fictitious ones to start)
    for _ in range(_MAX_ROOT_ITERATIONS):
        if b - a <= xtol:
            break
        bisect = widths[-1] > 0.5 * widths[-3]  # the last two iterations did not halve it
        c = 0.5 * (a + b) if bisect or fa == fb else b - fb * (b - a) / (fb - fa)
        if not (a < c < b):
            c = 0.5 * (a + b)
            if not (a < c < b):  # a and b are adjacent floats
                break
        fc = phi(c)
        if math.isnan(fc):
            raise ODESolverError(f"the event function returned NaN inside the event step (step fraction {c!r})")
        if fc > 0.0:
            a, fa = c, fc
            if last_side == 1:
                fb *= 0.5
            last_side = 1
        else:
            b, fb = c, fc
            if last_side == -1:
                fa *= 0.5
            last_side = -1
        widths.append(b - a)
    return a


def _locate_event(
    f: FlatFunc,
    y0: torch.Tensor,
    t0: float,
    direction: float,
    tableau: ButcherTableau,
    o: SolverOptions,
    event: _CombinedEvent,
    stats: _stats.SolveStats,
) -> Tuple[float, torch.Tensor]:
    """``(t_e, y(t_e))``: the event time (float64) and the ``[N]`` state there.

    The state carries the graph of the steps when they were taken with autograd on (the
    sensitivity at the fixed time ``t_e``).  The root search itself runs without a graph.
    """
    g0 = event.value(t0, y0)
    step = _step_until_sign_change(f, y0, t0, direction, tableau, o, event, g0, stats)
    adaptive = tableau.adaptive and o.step_size is None
    state_at = _StateInStep(f, tableau, step, adaptive)

    def phi(theta: float) -> float:
        return event.value(step.t + theta * step.hs, state_at(theta, graph=False))

    # Tolerance in the step fraction: a few units of the state dtype's precision (the state, and
    # so g, is not resolved more finely), and never below the resolution of t itself.
    eps = torch.finfo(y0.dtype).eps
    t_ulp = math.ulp(max(abs(step.t), abs(step.t_new))) / abs(step.hs)
    theta = _refine_root(phi, step.g0, step.g1, max(4.0 * eps, 4.0 * t_ulp))
    t_e = step.t_new if theta == 1.0 else step.t + theta * step.hs
    return t_e, state_at(theta, graph=True)


# ---------------------------------------------------------------------------
# Gradients through the event time
# ---------------------------------------------------------------------------


class _ImplicitEventTime(torch.autograd.Function):
    """``event_t`` in value; backward: ``dL/dG = -dL/dt_e / D`` (implicit function theorem).

    ``G`` is the combined event function evaluated at the constant time ``t_e`` on the state
    with its fixed-time graph, and ``D = dG/dt + dG/dy . f`` its total time derivative there.
    Its grad_fn also marks an event time whose gradient is already attached (odeint_event).
    """

    @staticmethod
    def forward(ctx, t_e: torch.Tensor, G: torch.Tensor, inv_D: float) -> torch.Tensor:
        ctx.inv_D = inv_D
        ctx.g_dtype = G.dtype
        return t_e.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, (grad * -ctx.inv_D).to(ctx.g_dtype), None


class _ValueWithGradientOf(torch.autograd.Function):
    """Returns ``value``; the gradient goes to ``source`` (same shape, same value up to the solver).

    Used with ``adjoint=True``: the state found by the event search is returned, with the
    gradients of the adjoint re-solve to the same time.
    """

    @staticmethod
    def forward(ctx, source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _has_event_gradient(event_t: Any) -> bool:
    return torch.is_tensor(event_t) and isinstance(event_t.grad_fn, _ImplicitEventTime._backward_cls)


def _attach_event_gradient(
    event: _CombinedEvent,
    f: FlatFunc,
    t_e: float,
    y_e: torch.Tensor,
    time_like: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn ``(t_e, y_e with its fixed-time graph)`` into ``(event_t, state)`` with the total gradients.

    Args:
        event: The combined event function.
        f: Flat dynamics.
        t_e: Event time (Python float).
        y_e: ``[N]`` state at ``t_e``, differentiable at fixed time (or not at all).
        time_like: ``event_t`` gets this tensor's dtype and device.

    Returns:
        ``event_t``: 0-dim tensor (``time_like``'s dtype/device), ``state``: ``[N]``; equal in
        value to ``t_e`` and ``y_e``.
    """
    t_const = torch.tensor(t_e, dtype=time_like.dtype, device=time_like.device)
    if not torch.is_grad_enabled():
        return t_const, y_e
    t_state = event.time(t_e)
    G = event(t_state, y_e)
    if not G.requires_grad:
        # Nothing the event value depends on requires a gradient: t_e is a constant.
        return t_const, y_e
    # D = dG/dt + dG/dy . f(t_e, y_e), on detached copies (first-order gradients only).
    with torch.enable_grad():
        tt = t_state.clone().requires_grad_(True)
        yy = y_e.detach().clone().requires_grad_(True)
        val = event(tt, yy)
        if val.requires_grad:
            g_t, g_y = torch.autograd.grad(val, (tt, yy), allow_unused=True)
        else:
            g_t = g_y = None
    with torch.no_grad():
        f_e = f(t_e, y_e.detach())
        D = 0.0 if g_t is None else float(g_t)
        if g_y is not None:
            D += float(torch.dot(g_y.reshape(-1), f_e.reshape(-1)))
    if D == 0.0 or not math.isfinite(D):
        # The solution touches the event surface tangentially: t_e is not differentiable there.
        warnings.warn(
            f"the event function's total time derivative at the event (t={t_e!r}) is {D!r}; "
            "the gradient through the event time is set to zero",
            RuntimeWarning,
            stacklevel=3,
        )
        inv_D = 0.0
    else:
        inv_D = 1.0 / D
    event_t = _ImplicitEventTime.apply(t_const, G, inv_D)
    # Zero in value; carries d t_e into the state: d y_e += f(t_e, y_e) d t_e.
    dt = event_t.to(y_e.dtype) - event_t.detach().to(y_e.dtype)
    return event_t, y_e + f_e * dt


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    try:
        x = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} must be a positive integer, got {value!r}") from None
    if x <= 0:
        raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
    return x


def odeint_until_event(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    event_fn: Callable,
    method: Optional[str] = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: Optional[Dict[str, Any]] = None,
    adjoint: bool = False,
    adjoint_solver: Optional[Callable] = None,
    **adjoint_kwargs: Any,
) -> Tuple[torch.Tensor, State]:
    """Solve ``dy/dt = func(t, y)`` from ``t[0]`` until ``event_fn(t, y)`` reaches zero.

    This is what ``odeint(..., event_fn=...)`` (``adjoint=False``) and
    ``odeint_adjoint(..., event_fn=...)`` (``adjoint=True``) return.

    Args:
        func: ``func(t, y) -> dy/dt`` as for ``odeint``.
        y0: Initial state: a floating-point tensor of any shape, or a tuple of tensors sharing
            dtype and device.
        t: 1-D tensor of exactly two distinct times: ``t[0]`` is the initial time; ``t[1]`` gives
            only the direction (the solve continues past it).  Any floating dtype.
        event_fn: ``event_fn(t, y) -> tensor`` of any shape (``t`` a 0-dim tensor of the state's
            dtype, ``y`` shaped like ``y0``).  The event is the first time any element reaches
            zero (changes sign from its value at ``t[0]``).
        method, rtol, atol, options: As for ``odeint``.  Fixed-step methods need
            ``options['step_size']`` (as in torchdiffeq) and, for events only, also accept
            ``options['max_num_steps']``.  ``step_t``, ``jump_t`` and ``perturb`` are refused
            (``ValueError``): the event solve does not step onto given times.  ``max_num_steps`` (default 100000) bounds the number
            of steps before the event.
        adjoint: Gradients of the state from the adjoint method: the event is located without a
            graph, then ``odeint_adjoint`` is solved from ``t[0]`` to the event time.
        adjoint_solver: With ``adjoint=True``: :func:`noderun.ode.odeint_adjoint`, which
            ``odeint_adjoint`` passes in when it delegates here (this module sits below it).
        **adjoint_kwargs: With ``adjoint=True``: ``adjoint_rtol``, ``adjoint_atol``,
            ``adjoint_method``, ``adjoint_options``, ``adjoint_params``, passed to
            ``odeint_adjoint``.

    Returns:
        ``(event_t, solution)``: ``event_t`` a 0-dim tensor of ``t``'s dtype and device;
        ``solution`` a tensor ``[2, *y0.shape]`` (a tuple of such for a tuple state) of ``y0``'s
        dtype holding the states at ``t[0]`` and ``event_t``.  Both are differentiable: with
        respect to ``y0``, ``t[0]``, the parameters of ``func`` (for ``adjoint=True``: the
        ``adjoint_params``) and tensors used by ``event_fn``, through the event time by the
        implicit function theorem.  If an element of ``event_fn`` is exactly zero at ``t[0]``,
        the result is ``(t[0], [y0, y0])``.

    Raises:
        ValueError: invalid ``t``, method or options (as ``odeint``); a fixed-step method without
            ``step_size``; ``adjoint=True`` with a ``func`` that is not a module and no
            ``adjoint_params``.
        TypeError: unknown keyword arguments, or ``adjoint_*`` arguments with ``adjoint=False``.
        ODESolverError: no event within ``max_num_steps`` steps, a non-finite event value, or
            the solve could not make progress.
    """
    unknown = sorted(set(adjoint_kwargs) - ADJOINT_KWARGS)
    if unknown:
        raise TypeError(f"odeint_until_event() got unexpected keyword argument(s) {', '.join(unknown)}")
    if adjoint_kwargs and not adjoint:
        raise TypeError(f"{', '.join(sorted(adjoint_kwargs))} need adjoint=True (odeint_adjoint)")
    if event_fn is None:
        raise TypeError("odeint_until_event needs an event_fn")
    if adjoint and adjoint_solver is None:
        raise TypeError("adjoint=True needs adjoint_solver=noderun.ode.odeint_adjoint")

    times = check_times(t)
    if len(times) != 2:
        raise ValueError(
            f"with event_fn, t must hold exactly 2 times (the initial time and one giving the direction), "
            f"got len(t)={len(times)}"
        )
    t0, direction = times[0], (1.0 if times[1] > times[0] else -1.0)

    if method == "scipy_solver":
        raise ValueError(
            "event_fn is not supported with method='scipy_solver' (nor is it in torchdiffeq); "
            "use a Runge-Kutta method, e.g. 'dopri5'"
        )
    spec = get_method("dopri5" if method is None else method)  # None: torchdiffeq's default
    options = dict(options or {})
    fixed = not spec.adaptive or options.get("step_size") is not None
    event_max_steps = None
    if fixed:
        if options.get("step_size") is None:
            raise ValueError(
                f"event handling with the fixed-step method {spec.name!r} needs options['step_size'] "
                "(as in torchdiffeq)"
            )
        # odeint's option check refuses max_num_steps with fixed steps (the grid is known in advance);
        # before an event it is not, so accept it here.
        if "max_num_steps" in options:
            event_max_steps = _positive_int("max_num_steps", options.pop("max_num_steps"))
    # Stepping onto given times, and restarting at them, belongs to integrate's loop; the event loop
    # steps freely until the event, so it refuses these rather than ignore them.
    refused = sorted(key for key in EVENT_REFUSED_OPTIONS if options.get(key) not in (None, False))
    if refused:
        raise ValueError(
            f"option(s) {', '.join(map(repr, refused))} are not supported with event_fn (the event solve does not step "
            "onto given times); drop them, or solve up to the times with odeint and locate the event after them"
        )
    opts = resolve_options(spec, rtol, atol, options)
    if event_max_steps is not None:
        opts = dataclasses.replace(opts, max_num_steps=event_max_steps)

    state = FlatState(y0)
    flat_f = state.flat_func(func)
    y0_flat = state.flatten(y0)

    if adjoint:
        adjoint_params = adjoint_kwargs.get("adjoint_params")
        if adjoint_params is None and not isinstance(func, nn.Module):
            # Checked here too so that the error comes before a solve, not after it.
            raise ValueError(
                "func is not an nn.Module, so its parameters are unknown; pass adjoint_params=(...) "
                "(an empty tuple if there are none)"
            )

    event = _CombinedEvent(event_fn, state, t0, y0_flat)
    if event.zero_at_start:
        # As torchdiffeq: an event function already zero at t0 is an event at t0.
        event_t = t[0].clone()
        return event_t, state.unflatten_solution(torch.stack([y0_flat, y0_flat]))

    stats = _stats.SolveStats(num_solves=1)

    def counted(tt: float, y: torch.Tensor) -> torch.Tensor:
        stats.nfe_forward += 1
        return flat_f(tt, y)

    grad_on = torch.is_grad_enabled()
    if not adjoint:
        y_start = y0_flat
        if grad_on and t.requires_grad:
            # d y(t_e) / d t0 = -Phi(t_e, t0) f(t0, y0): solve from y0 - dt0 * f(t0, y0), dt0 zero in
            # value, so the sensitivity to y0 carries it.
            with torch.no_grad():
                f0 = counted(t0, y0_flat.detach())
            dt0 = t[0].to(state.dtype) - t[0].detach().to(state.dtype)
            y_start = y0_flat - dt0 * f0
        try:
            t_e, y_e = _locate_event(counted, y_start, t0, direction, spec.tableau, opts, event, stats)
        finally:
            _stats.record(stats)
    else:
        with torch.no_grad():
            try:
                t_e, y_e = _locate_event(counted, y0_flat.detach(), t0, direction, spec.tableau, opts, event, stats)
            finally:
                _stats.record(stats)
        if grad_on and _adjoint_needs_graph(func, y0, t, adjoint_kwargs.get("adjoint_params")):
            # The time pair in float64 so that the adjoint solve ends exactly at t_e (t may be
            # float32); the gradient with respect to t[0] flows back through .to().
            t_pair = torch.stack([t[0].to(torch.float64), torch.tensor(t_e, dtype=torch.float64, device=t.device)])
            sol = adjoint_solver(
                func, y0, t_pair, method=spec.name, rtol=rtol, atol=atol, options=options, **adjoint_kwargs
            )
            last = tuple(s[-1] for s in sol) if state.is_tuple else sol[-1]
            y_e = _ValueWithGradientOf.apply(state.flatten(last), y_e)

    event_t, y_event = _attach_event_gradient(event, flat_f, t_e, y_e, t)
    return event_t, state.unflatten_solution(torch.stack([y0_flat, y_event]))


def _adjoint_needs_graph(func: Callable, y0: State, t: torch.Tensor, adjoint_params) -> bool:
    """Whether the adjoint re-solve to the event time can contribute any gradient."""
    tensors = list(y0) if isinstance(y0, tuple) else [y0]
    tensors.append(t)
    if adjoint_params is not None:
        tensors += [p for p in adjoint_params if torch.is_tensor(p)]
    elif isinstance(func, nn.Module):
        tensors += list(func.parameters())
    return any(x.requires_grad for x in tensors)
