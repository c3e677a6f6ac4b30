"""``odeint_adjoint``: gradients by solving the adjoint ODE backwards in time.

The forward solve runs without building a graph.  The backward pass solves,
from each output time to the previous one, the augmented system for the flat
state ``s = [y, a, g]`` (``a = dL/dy``, ``g`` = accumulated ``dL/dtheta``)::

    dy/dt = f(t, y)
    da/dt = -a^T df/dy          (t, y)
    dg/dt = -a^T df/dtheta      (t, y)

integrated from ``t_j`` to ``t_{j-1}``.  At every output time ``y`` is re-set to
the value stored by the forward solve (so errors of the backward
reconstruction of ``y`` do not accumulate) and that time's incoming gradient
``dL/dy(t_j)`` is added to ``a``.

Gradients with respect to the times need no extra channel.  Output ``j >= 1``
depends on ``t_j`` only through ``y(t_j)``, so ``dL/dt_j = dL/dy(t_j) . f(t_j,
y(t_j))``; and ``y(t_j) = Phi(t_j; t_0, y_0)`` gives
``dL/dt_0 = -a(t_0^+) . f(t_0, y_0)`` with ``a(t_0^+)`` the adjoint before the
gradient of output 0 is added.  This equals what integrating a ``dL/dt``
channel with ``-a . df/dt`` would produce (``d/dt (a . f) = a . df/dt`` along
the solution) without needing ``df/dt``.  ``f(t_j, y(t_j))`` is the first stage
of each backward interval, so it comes for free; ``f(t_0, y_0)`` costs one
evaluation, only when ``t`` requires a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import stats as _stats
from .integrate import SolverOptions, StepHint, integrate
from .methods import DEFAULT_METHOD, get_method
from .events import odeint_until_event
from .inputs import FlatState, State, check_times, resolve_options
from .step_control import SemiNorm
from .tableau import ButcherTableau


@dataclass
class _AdjointConfig:
    """Everything the autograd function needs besides tensors."""

    flat_func: Callable[[float, torch.Tensor], torch.Tensor]
    times: Sequence[float]
    tableau: ButcherTableau
    options: SolverOptions
    adjoint_tableau: ButcherTableau
    adjoint_options: SolverOptions
    params: Tuple[torch.Tensor, ...]
    sinks: Tuple[_stats.SolveStats, ...]
    # Step carried from the forward solve's end into the backward solve (see StepHint).
    hint: Optional[StepHint] = None


class _OdeintAdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: torch.Tensor, t: torch.Tensor, cfg: _AdjointConfig, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ys, stats = integrate(cfg.flat_func, y0, cfg.times, cfg.tableau, cfg.options, hint=cfg.hint)
        _stats.record(stats, cfg.sinks)
        ctx.cfg = cfg
        ctx.save_for_backward(t, ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        t, ys = ctx.saved_tensors
        cfg: _AdjointConfig = ctx.cfg
        n = ys.shape[1]
        params = cfg.params
        times = cfg.times
        f = cfg.flat_func
        zeros = [torch.zeros(p.numel(), dtype=ys.dtype, device=ys.device) for p in params]
        zero_y = torch.zeros(n, dtype=ys.dtype, device=ys.device)

        def augmented(tt: float, s: torch.Tensor) -> torch.Tensor:
            """Flat augmented dynamics ``[y, a, g] -> [f, -a^T f_y, -a^T f_theta]``."""
            a = s[n : 2 * n]
            with torch.enable_grad():
                y = s[:n].detach().requires_grad_(True)
                fy = f(tt, y)
                if fy.requires_grad:
                    # grad_outputs=-a yields the negated vector-Jacobian products directly.
                    vjps = torch.autograd.grad(fy, (y,) + params, grad_outputs=-a, allow_unused=True)
                else:  # dynamics independent of y and theta
                    vjps = (None,) * (1 + len(params))
            parts = [fy.detach(), zero_y if vjps[0] is None else vjps[0]]
            parts += [z if g is None else g.reshape(-1) for g, z in zip(vjps[1:], zeros)]
            return torch.cat(parts)

        stats = _stats.SolveStats()
        need_t = ctx.needs_input_grad[1]
        grad_t = torch.zeros(len(times), dtype=ys.dtype, device=ys.device) if need_t else None
        a = grad_ys[-1]
        g = torch.cat(zeros) if params else ys.new_zeros(0)
        # A copy, so that a second backward pass (retain_graph) starts from the same step.
        hint = StepHint(cfg.hint.h) if cfg.hint is not None else None
        for j in range(len(times) - 1, 0, -1):
            s0 = torch.cat([ys[j], a, g])
            k1 = augmented(times[j], s0)
            stats.nfe_backward += 1
            if need_t:
                grad_t[j] = torch.dot(grad_ys[j], k1[:n])
            sol, st = integrate(
                augmented, s0, [times[j], times[j - 1]], cfg.adjoint_tableau, cfg.adjoint_options, f0=k1,
                hint=hint,
            )
            stats.nfe_backward += st.nfe_forward
            stats.backward_steps_accepted += st.steps_accepted
            stats.backward_steps_rejected += st.steps_rejected
            s1 = sol[-1]
            a = s1[n : 2 * n] + grad_ys[j - 1]
            g = s1[2 * n :]
        if need_t:
            f0 = f(times[0], ys[0])
            stats.nfe_backward += 1
            grad_t[0] = -torch.dot(a - grad_ys[0], f0)
            grad_t = grad_t.to(t.dtype)
        _stats.record(stats, cfg.sinks)

        grad_params = []
        offset = 0
        for p in params:
            grad_params.append(g[offset : offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
        return (a, grad_t, None, *grad_params)


def odeint_adjoint(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
    event_fn: Optional[Callable] = None,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[Dict[str, Any]] = None,
    adjoint_params: Optional[Sequence[torch.Tensor]] = None,
) -> State:
    """Like :func:`noderun.ode.odeint`, but gradients come from the adjoint ODE.

    The signature is torchdiffeq 0.2.5's ``odeint_adjoint``.  Memory is
    constant in the number of steps: the forward solve keeps no graph, only the
    solution at the output times.

    Args:
        func, y0, t, rtol, atol, method, options: As for ``odeint``
            (``method=None`` is ``dopri5``).  ``method='scipy_solver'`` is
            refused with a ``ValueError``: it has no gradients to offer; use it
            with ``odeint``.
        event_fn: ``None``, or an event function: the call is then delegated to
            :func:`noderun.ode.events.odeint_until_event` (with ``adjoint=True``
            and the ``adjoint_*`` arguments), which defines the return value.
        adjoint_rtol, adjoint_atol, adjoint_method: Settings of the backward
            solve; default to the forward ones.
        adjoint_options: Options of the backward solve; default to ``options``
            when the adjoint method is the forward method, else to ``{}``.
            ``{"norm": "seminorm"}`` leaves the parameter-gradient channels out
            of the step-size error norm, which usually saves backward steps
            (Kidger, Chen, Lyons, ICML 2021); an adaptive adjoint method only.
            ``{"reuse_forward_step": False}``: the backward solve selects its
            initial step afresh, as torchdiffeq does.  By default (``True``) it
            starts from the step the forward solve's controller proposed at the
            final time (and each earlier interval from the previous interval's
            last step): that saves the selection's evaluation of the augmented
            dynamics and, since the selection is cautious, often a whole step
            (ODE-Net: 32 -> 25 backward evaluations freshly initialised, 20 ->
            13 trained; benchmarks/README.md).  Error control is the same
            either way, and an explicit ``first_step`` takes precedence.
        adjoint_params: Tensors whose gradients are computed.  Defaults to
            ``tuple(func.parameters())``; required when ``func`` is not an
            ``nn.Module``.

    Returns:
        Same as ``odeint``.  Gradients flow to ``y0``, ``t`` and the
        ``adjoint_params`` (only first-order gradients: the backward pass is not
        itself differentiable).  The gradient with respect to ``t`` is the one
        ``odeint`` gives; it costs one evaluation of ``func`` (at ``t[0]``),
        counted in ``nfe_backward``.
    """
    if method is None:
        method = DEFAULT_METHOD
    if event_fn is not None:
        return odeint_until_event(
            func, y0, t, event_fn=event_fn, method=method, rtol=rtol, atol=atol, options=options, adjoint=True,
            adjoint_solver=odeint_adjoint,
            adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
            adjoint_options=adjoint_options, adjoint_params=adjoint_params,
        )
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError(
                "func is not an nn.Module, so its parameters are unknown; pass adjoint_params=(...) "
                "(an empty tuple if there are none)"
            )
        adjoint_params = tuple(func.parameters())
    params = tuple(p for p in adjoint_params if torch.is_tensor(p) and p.requires_grad)

    spec = get_method(method)
    opts = resolve_options(spec, rtol, atol, options)
    adj_spec = get_method(adjoint_method if adjoint_method is not None else method)
    if adjoint_options is None:
        adjoint_options = options if adj_spec.name == spec.name else None
    adj_options = dict(adjoint_options or {})
    backward_fixed = not adj_spec.adaptive or adj_options.get("step_size") is not None
    # Options that only adaptive step-size control uses: refused, not ignored, with fixed steps.
    for key in ("reuse_forward_step", "norm"):
        if key in adj_options and backward_fixed and adj_options[key] not in (None, "rms"):
            raise ValueError(
                f"adjoint option {key!r} acts on adaptive step-size control, and the backward solve takes fixed "
                f"steps (method {adj_spec.name!r}{' with step_size' if adj_spec.adaptive else ''}); drop it, or use "
                "an adaptive adjoint_method without step_size"
            )
    reuse_forward_step = adj_options.pop("reuse_forward_step", True)
    if not isinstance(reuse_forward_step, bool):
        raise ValueError(f"adjoint option 'reuse_forward_step' must be True or False, got {reuse_forward_step!r}")
    seminorm = adj_options.get("norm") == "seminorm"
    if seminorm:
        del adj_options["norm"]
    adj_opts = resolve_options(
        adj_spec,
        rtol if adjoint_rtol is None else adjoint_rtol,
        atol if adjoint_atol is None else adjoint_atol,
        adj_options,
    )

    state = FlatState(y0)
    if seminorm:
        # Norm over the [y, a] channels of the flat augmented state only.
        adj_opts = SolverOptions(**{**adj_opts.__dict__, "norm": SemiNorm(2 * state.size)})
    cfg = _AdjointConfig(
        flat_func=state.flat_func(func),
        times=check_times(t),
        tableau=spec.tableau,
        options=opts,
        adjoint_tableau=adj_spec.tableau,
        adjoint_options=adj_opts,
        params=params,
        sinks=_stats.active_sinks(),
        hint=StepHint() if reuse_forward_step else None,
    )
    ys = _OdeintAdjointFunction.apply(state.flatten(y0), t, cfg, *params)
    return state.unflatten_solution(ys)
