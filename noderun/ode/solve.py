"""``odeint`` and ``odeint_event``: the solve at given times, and the solve until an event.

Inputs are checked and flattened by :mod:`.inputs`, the steps taken by :mod:`.integrate`;
with ``event_fn`` the solve runs until the event (:mod:`.events`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import stats as _stats
from .adjoint import odeint_adjoint
from .events import _attach_event_gradient, _CombinedEvent, _has_event_gradient, odeint_until_event
from .inputs import FlatState, State, check_times, resolve_options
from .integrate import integrate
from .methods import DEFAULT_METHOD, SCIPY_SOLVER, get_method
from .scipy_solver import require_scipy, solve_with_scipy


def odeint(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
    event_fn: Optional[Callable] = None,
) -> State:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    The signature is torchdiffeq 0.2.5's ``odeint``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of the state's
            dtype, ``y`` and the result have the shape(s) of ``y0``.
        y0: Initial state: a floating-point tensor of any shape, or a tuple of
            tensors sharing dtype and device.
        t: 1-D tensor of output times, strictly increasing or strictly
            decreasing; ``t[0]`` is the initial time.  Times are handled in
            float64 whatever the dtype of ``t``.
        rtol, atol: Relative and absolute tolerance of adaptive methods (the
            RMS norm of ``err / (atol + rtol * max(|y0|, |y1|))`` must be <= 1).
        method: ``None`` (``dopri5``); one of ``euler``, ``midpoint``, ``rk4``,
            ``heun2``, ``heun3`` (fixed step) or ``adaptive_heun``,
            ``fehlberg2``, ``bosh3``, ``dopri5``, ``tsit5``, ``dopri8``
            (adaptive); or ``scipy_solver`` (below).  ``rk4`` is the classical
            tableau (torchdiffeq's ``rk4`` is the 3/8 rule: same order,
            different error constant).  torchdiffeq's multistep
            ``explicit_adams``, ``implicit_adams`` and ``fixed_adams`` are
            refused with a ``ValueError`` naming an alternative.
        options: Method options.

            * ``step_size`` (all methods): fixed step.  Each interval between
              consecutive output times is split into
              ``ceil(|t[i+1] - t[i]| / step_size)`` equal steps, so every output
              time is hit exactly and no step exceeds ``step_size``.  Without
              it, fixed-step methods take one step per interval.  On an
              adaptive method it disables step-size control.
            * Adaptive methods only: ``first_step``, ``min_step`` (default 0),
              ``max_step`` (default inf), ``max_num_steps`` (default 100000),
              ``safety`` (0.9), ``ifactor`` (10), ``dfactor`` (0.2) and
              ``norm`` (``'rms'`` or a callable ``[N] tensor -> float`` applied
              to the flattened scaled error); ``controller`` (``'integral'``,
              the default, or ``'pi'`` with ``pcoeff`` 0.3 and ``icoeff`` 0.4);
              ``jump_t`` (times where ``func`` is discontinuous: stepped onto,
              ``func`` re-evaluated just after) and ``step_t`` (times stepped onto).
            * Fixed-step methods: ``grid_constructor(func, y0, t) -> grid``
              instead of ``step_size``; output times off the grid are stepped
              onto (torchdiffeq interpolates them); ``perturb``; ``interp`` is
              accepted and has no effect.
            * ``scipy_solver`` only: ``solver`` (any method of
              ``scipy.integrate.solve_ivp``, default ``'LSODA'``), ``min_step``
              (LSODA), ``max_step``; ``norm``, ``grid_points`` and ``eps`` are
              accepted and ignored, as torchdiffeq does.
        event_fn: ``None``, or an event function: the solve then runs from
            ``t[0]`` until ``event_fn(t, y)`` crosses zero and is delegated to
            :func:`noderun.ode.events.odeint_until_event`, which defines the
            return value.

    ``method='scipy_solver'`` (needs SciPy; without it a one-line
    ``ValueError`` says ``pip install scipy`` enables it) solves with
    ``scipy.integrate.solve_ivp`` on the host in float64 NumPy arrays, calling
    ``func`` under ``torch.no_grad`` with ``t`` and ``y`` in ``y0``'s dtype and
    device; the result is in ``y0``'s dtype and device and carries no
    gradients (as in torchdiffeq).

    Returns:
        Tensor ``[len(t), *y0.shape]`` (or a tuple of such for a tuple
        ``y0``), in ``y0``'s dtype.  The result is differentiable with respect
        to ``y0`` and anything ``func`` uses (backpropagation through the
        solver's operations).  When ``t`` requires a gradient (and grad mode is
        on), it is differentiable with respect to ``t`` as well, with the
        derivatives of the exact solution map: ``d y_i / d t_i = f(t_i, y_i)``
        for ``i >= 1``, ``d y_i / d t_0 = -Phi(t_i, t_0) f(t_0, y_0)``
        (``Phi`` the sensitivity to ``y0``, backpropagated through the solver)
        and ``y_0`` independent of ``t_0``.  That costs ``len(t)`` extra
        evaluations of ``func`` (at every output time), which are not counted
        in :class:`~noderun.ode.SolveStats`.

    Raises:
        ValueError: invalid method, option, ``t`` or ``y0``.
        ODESolverError: the solve could not make progress (step-size underflow,
            ``max_num_steps`` reached, non-finite state, a failed SciPy solve).
    """
    if method is None:
        method = DEFAULT_METHOD
    if event_fn is not None:
        return odeint_until_event(
            func, y0, t, event_fn=event_fn, method=method, rtol=rtol, atol=atol, options=options, adjoint=False
        )
    if method == SCIPY_SOLVER:
        require_scipy()
        state = FlatState(y0)
        times = check_times(t)
        return state.unflatten_solution(solve_with_scipy(state, func, state.flatten(y0), times, rtol, atol, options))
    spec = get_method(method)
    opts = resolve_options(spec, rtol, atol, options)
    state = FlatState(y0)
    times = check_times(t)
    flat_func = state.flat_func(func)
    y0_flat = state.flatten(y0)
    if not (t.requires_grad and torch.is_grad_enabled()):
        ys, stats = integrate(flat_func, y0_flat, times, spec.tableau, opts)
        _stats.record(stats)
        return state.unflatten_solution(ys)

    # Gradient with respect to t.  dt is zero in value and carries d/dt: solving from
    # y0 - dt_0 * f(t_0, y_0) gives d y_i / d t_0 = -Phi(t_i, t_0) f(t_0, y_0), and adding
    # dt_i * f(t_i, y_i) to output i gives d y_i / d t_i = f(t_i, y_i) (for i = 0 the two cancel).
    dt = (t - t.detach()).to(dtype=state.dtype, device=state.device)
    with torch.no_grad():
        f0 = flat_func(times[0], y0_flat)
    ys, stats = integrate(flat_func, y0_flat - dt[0] * f0, times, spec.tableau, opts)
    _stats.record(stats)
    with torch.no_grad():
        fs = torch.stack([f0] + [flat_func(times[i], ys[i]) for i in range(1, len(times))])
    return state.unflatten_solution(ys + dt.unsqueeze(1) * fs)


def odeint_event(
    func: Callable,
    y0: State,
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> Tuple[torch.Tensor, State]:
    """Solve from ``t0`` until ``event_fn(t, y)`` reaches zero (torchdiffeq's ``odeint_event``).

    Args:
        func, y0: As for ``odeint``.
        t0: Initial time: a tensor with one element (0-dim or ``[1]``), or a number (then a
            tensor of ``y0``'s dtype).
        event_fn: As for :func:`odeint_until_event`.
        reverse_time: Integrate backwards in time (towards decreasing ``t``).
        odeint_interface: ``noderun.ode.odeint`` (default), ``noderun.ode.odeint_adjoint``, or
            any function with torchdiffeq's ``odeint(func, y0, t, event_fn=..., **kwargs)``
            signature and return value (e.g. ``torchdiffeq.odeint``).
        **kwargs: Passed to ``odeint_interface`` (``method``, ``rtol``, ``atol``, ``options``,
            the ``adjoint_*`` arguments).

    Returns:
        ``(event_t, solution)`` as :func:`odeint_until_event`: ``event_t`` 0-dim, ``solution``
        ``[2, *y0.shape]`` (or a tuple), with gradients through the event time.  noderun's
        solvers attach those themselves; for another interface (whose event time carries no
        gradient, as torchdiffeq's) they are attached here from its solution's fixed-time
        gradients, as torchdiffeq's ``odeint_event`` does.
    """
    first = y0[0] if isinstance(y0, tuple) else y0
    if not torch.is_tensor(t0):
        t0 = torch.tensor(float(t0), dtype=first.dtype, device=first.device)
    if t0.numel() != 1:
        raise ValueError(f"t0 must hold a single time, got shape {tuple(t0.shape)}")
    t0 = t0.reshape(-1)
    # t[1] only gives the direction; the solve runs on until the event.
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])

    if odeint_interface is odeint:
        # Equivalent to odeint(..., event_fn=event_fn), which delegates to odeint_until_event,
        # already differentiable through the event time.
        return odeint_until_event(func, y0, t, event_fn=event_fn, adjoint=False, **kwargs)
    if odeint_interface is odeint_adjoint:
        return odeint_until_event(func, y0, t, event_fn=event_fn, adjoint=True, adjoint_solver=odeint_adjoint, **kwargs)
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    if _has_event_gradient(event_t) or not torch.is_grad_enabled():
        # A wrapper around noderun's solvers: the gradient is attached already.
        return event_t, solution

    # Another solver: its event time carries no gradient and its final state the fixed-time
    # sensitivity; attach the implicit-function gradient here.
    state = FlatState(y0)
    y0_flat = state.flatten(y0)
    event = _CombinedEvent(event_fn, state, float(t0.detach()), y0_flat)
    if event.zero_at_start:
        return event_t, solution
    last = tuple(s[-1] for s in solution) if state.is_tuple else solution[-1]
    event_t, y_event = _attach_event_gradient(
        event, state.flat_func(func), float(event_t.detach()), state.flatten(last), event_t
    )
    if state.is_tuple:
        ends = state.unflatten(y_event)
        solution = tuple(torch.cat([s[:-1], e.unsqueeze(0)]) for s, e in zip(solution, ends))
    else:
        solution = torch.cat([solution[:-1], state.unflatten(y_event).unsqueeze(0)])
    return event_t, solution
