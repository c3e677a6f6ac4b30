"""One explicit Runge-Kutta step, driven by a Butcher tableau.

The state is a flat 1-D tensor ``y`` of ``N`` entries.  Stage derivatives are
stacked as the columns of an ``[N, i]`` matrix ``K`` so that every stage input
``y + h * sum_j a_ij k_j`` is a single fused ``torch.addmv``; with the stack that
is two tensor ops per stage whatever the number of stages.  The same code path
is differentiable, so backpropagating through ``odeint`` works unchanged.
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
        K: ``[N, S]`` stage derivatives (columns), used by dense output.
        f1: ``[N]`` ``f(t + h, y1)`` when the method is FSAL, else ``None``.
    """

    y1: torch.Tensor
    err: Optional[torch.Tensor]
    K: torch.Tensor
    f1: Optional[torch.Tensor]


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
    ks = [k1]
    yi = y
    for i in range(1, tableau.num_stages):
        K = ks[0].unsqueeze(1) if i == 1 else torch.stack(ks, dim=1)
        yi = torch.addmv(y, K, coeffs.a_rows[i], alpha=h)
        ks.append(func(t + c[i] * h, yi))
    K = torch.stack(ks, dim=1)
    if tableau.fsal:
        # The last stage was evaluated at y + h * sum_j b_j k_j, which is y1.
        y1, f1 = yi, ks[-1]
    else:
        y1, f1 = torch.addmv(y, K, coeffs.b, alpha=h), None
    err = torch.mv(K, coeffs.b_error) if (with_error and coeffs.b_error is not None) else None
    return RKStepResult(y1=y1, err=err, K=K, f1=f1)
