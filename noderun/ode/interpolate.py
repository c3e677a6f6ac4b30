"""Dense output: the solution at requested times inside an accepted step.

Every interpolant used here is linear in the stage derivatives::

    y(t + theta h) = y + h * sum_j w_j(theta) k_j ,    w_j polynomial in theta,

so all requested times inside one step are produced by a single
``torch.addmm`` with an ``[m, C]`` weight matrix computed on the host.  No
interpolant evaluates ``func``: requested times cost no function evaluations.

* Methods whose tableau carries dense-output coefficients (dopri5) use them.
* The others use cubic Hermite interpolation through ``y0, y1, f(t0, y0) = k1``
  and ``f(t1, y1)``.  For FSAL methods ``f(t1, y1)`` is the last stage; for the
  others it is the first stage of the next step, which the step loop computes
  early and then reuses, so it is not an extra evaluation.  Cubic Hermite is
  only third order, so methods whose error estimate is of higher order (tsit5,
  dopri8) do not interpolate: the step loop lands on every output time.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .tableau import ButcherTableau


class DenseOutput:
    """Polynomial dense output of one method.

    Attributes:
        needs_f1: Whether :meth:`evaluate` needs ``f(t1, y1)`` passed in (cubic
            Hermite for a method that is not FSAL).
        order: Order of the interpolant.
    """

    def __init__(self, tableau: ButcherTableau) -> None:
        s = tableau.num_stages
        b = [float(x) for x in tableau.b]
        if tableau.dense is not None:
            self.needs_f1 = False
            self.order = tableau.dense_order
            self._poly = [[float(x) for x in row] for row in tableau.dense]
        else:
            # Cubic Hermite on the columns [k_1 .. k_S] (+ f1 when not FSAL):
            #   w(theta) = h10(theta) e_1 + h01(theta) b + h11(theta) e_f1
            #   h10 = theta - 2 theta^2 + theta^3,  h01 = 3 theta^2 - 2 theta^3,
            #   h11 = -theta^2 + theta^3.
            # (y1 - y0 = h sum b_j k_j and h00 + h01 = 1 turn the usual Hermite
            # form into this one.)
            self.needs_f1 = not tableau.fsal
            self.order = min(3, tableau.order)
            cols = s + (1 if self.needs_f1 else 0)
            poly = [[0.0, 3.0 * b[j] if j < s else 0.0, -2.0 * b[j] if j < s else 0.0] for j in range(cols)]
            poly[0][0] += 1.0
            poly[0][1] += -2.0
            poly[0][2] += 1.0
            poly[-1][1] += -1.0
            poly[-1][2] += 1.0
            self._poly = poly

    def weights(self, thetas: Sequence[float]) -> list:
        """``[C][m]`` nested list: weight of column ``j`` at ``thetas[m]``."""
        out = []
        for row in self._poly:
            out.append([sum(cp * th ** (p + 1) for p, cp in enumerate(row)) for th in thetas])
        return out

    def evaluate(
        self,
        y0: torch.Tensor,
        h: float,
        K: torch.Tensor,
        f1: Optional[torch.Tensor],
        thetas: Sequence[float],
    ) -> torch.Tensor:
        """Interpolate inside a step.

        Args:
            y0: ``[N]`` state at the start of the step.
            h: Signed step size.
            K: ``[S, N]`` stage derivatives of the step (rows).
            f1: ``[N]`` ``f(t0 + h, y1)``; required when :attr:`needs_f1`.
            thetas: Fractions of the step in ``(0, 1)``.

        Returns:
            ``[m, N]`` states at ``t0 + theta * h`` for each theta.
        """
        if self.needs_f1:
            K = torch.cat([K, f1.unsqueeze(0)])
        W = torch.tensor(self.weights(thetas), dtype=y0.dtype, device=y0.device)
        return torch.addmm(y0.unsqueeze(0), W.t(), K, alpha=h)
