"""One explicit Runge-Kutta step, driven by a Butcher tableau.

The state is a flat 1-D tensor ``y`` of ``N`` entries.  Stage derivatives are
the rows of an ``[S, N]`` matrix ``K`` (row-major, so each stage is one
contiguous row), and every stage input ``y + h * sum_j a_ij k_j`` is a single
fused ``torch.addmv`` over the rows filled so far.

Without autograd (the forward solve of ``odeint_adjoint``, its backward solve,
``torch.no_grad()``), ``K`` is allocated once per step and each stage is copied
into its row once.  When the step is differentiated (``odeint`` with gradients,
RK-Net), ``K`` is rebuilt by ``torch.stack`` at each stage instead, so that no
tensor autograd saved is modified in place.  Stacking along a new first
dimension keeps every copy contiguous; an ``[N, S]`` column layout would make
each copy a strided scatter (measured 5x slower for N ~ 6e5 on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .tableau import ButcherTableau


@dataclass
class RKStepResult:
    """Outcome of :func:`rk_step`.

    Attributes:
        y1: ``[N]`` propagated solution at ``t + h``.
        err: ``[N]`` error estimate divided by ``h`` (``sum_i b_error_i k_i``),
            or ``None`` when not requested.  Dividing by ``h`` saves an op; the
            step controller multiplies the norm by ``|h|`` on the host.
        K: ``[S, N]`` stage derivatives (rows), used by dense output.
        f1: ``[N]`` ``f(t + h, y1)`` when the method is FSAL, else ``None``.
    """

    y1: torch.Tensor
    err: Optional[torch.Tensor]
    K: torch.Tensor
    f1: Optional[torch.Tensor]


def _needs_graph(y: torch.Tensor, k1: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (y.requires_grad or k1.requires_grad)


def rk_step(
    func: Callable[[float, torch.Tensor], torch.Tensor],
    tableau: ButcherTableau,
    t: float,
    y: torch.Tensor,
    h: float,
    k1: torch.Tensor,
    with_error: bool = True,
) -> RKStepResult:
    """Take one step of size ``h`` (signed) from ``(t, y)``.

    Args:
        func: Flat dynamics ``func(t: float, y: [N]) -> [N]``.
        tableau: The method.
        t: Current time (Python float).
        y: ``[N]`` current state.
        h: Step size; negative when integrating backwards in time.
        k1: ``[N]`` ``func(t, y)``, supplied by the caller so it can be reused
            (FSAL, or from the previous interval).
        with_error: Compute the embedded error estimate (adaptive methods).
    """
    coeffs = tableau.tensors(y.dtype, y.device)
    c = tableau.c_float()
    S = tableau.num_stages
    yi = y
    if _needs_graph(y, k1):
        ks = [k1]
        for i in range(1, S):
            K = ks[0].unsqueeze(0) if i == 1 else torch.stack(ks)
            yi = torch.addmv(y, K.t(), coeffs.a_rows[i], alpha=h)
            ks.append(func(t + c[i] * h, yi))
        K = torch.stack(ks)
        last = ks[-1]
    else:
        K = torch.empty((S, y.numel()), dtype=y.dtype, device=y.device)
        K[0].copy_(k1)
        last = k1
        for i in range(1, S):
            yi = torch.addmv(y, K[:i].t(), coeffs.a_rows[i], alpha=h)
            last = func(t + c[i] * h, yi)
            K[i].copy_(last)
    if tableau.fsal:
        # The last stage was evaluated at y + h * sum_j b_j k_j, which is y1.
        y1, f1 = yi, last
    else:
        y1, f1 = torch.addmv(y, K.t(), coeffs.b, alpha=h), None
    err = torch.mv(K.t(), coeffs.b_error) if (with_error and coeffs.b_error is not None) else None
    return RKStepResult(y1=y1, err=err, K=K, f1=f1)
