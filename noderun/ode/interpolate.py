"""Dense output: the solution at requested times inside an accepted step.

Every interpolant used here is linear in the stage derivatives::

    y(t + theta h) = y + h * sum_j w_j(theta) k_j ,    w_j polynomial in theta,

so all requested times inside one step are produced by a single
``torch.addmm`` with an ``[m, C]`` weight matrix computed on the host.

* Methods whose tableau carries dense-output coefficients use them: dopri5
  (Shampine's 4th order), tsit5 (Tsitouras's 4th order), dopri8 (7th order).
  These match the order of each method's error estimate, so interpolating costs
  no accuracy relative to stepping onto the time.  dopri5's and tsit5's use the
  step's own stages (no evaluations); dopri8's needs six extra stages, evaluated
  once per step that has requested times inside (see ``ButcherTableau.dense_c``).
* The others use cubic Hermite interpolation through ``y0, y1, f(t0, y0) = k1``
  and ``f(t1, y1)``.  For FSAL methods ``f(t1, y1)`` is the last stage; for the
  others it is the first stage of the next step, which the step loop computes
  early and then reuses, so it is not an extra evaluation.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .tableau import ButcherTableau


class DenseOutput:
    """Polynomial dense output of one method.

    Args:
        tableau: The method.
        extra_stages: Use the tableau's interpolant even when it needs extra stages
            (dopri8); :meth:`evaluate` then needs ``func`` and ``t0``.  Without it such a
            method falls back to cubic Hermite, which needs no evaluation.

    Attributes:
        needs_f1: Whether :meth:`evaluate` needs ``f(t1, y1)`` passed in (cubic
            Hermite for a method that is not FSAL).
        num_extra: Extra stages :meth:`evaluate` computes (``func`` calls per call).
        order: Order of the interpolant.
    """

    def __init__(self, tableau: ButcherTableau, extra_stages: bool = False) -> None:
        s = tableau.num_stages
        b = [float(x) for x in tableau.b]
        self.num_extra = 0
        self._tensors: dict = {}
        if tableau.dense is not None and (extra_stages or not tableau.dense_c):
            self.needs_f1 = False
            self.order = tableau.dense_order
            self._poly = [[float(x) for x in row] for row in tableau.dense]
            self.num_extra = len(tableau.dense_c)
            self._extra_c = [float(x) for x in tableau.dense_c]
            self._extra_a = [[float(x) for x in row] for row in tableau.dense_a]
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

    def _weight_matrix(self, thetas: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[m, C]`` weights in ``dtype`` on ``device``; the polynomials are evaluated in float64
        (dopri8's coefficients reach ~2e3 and cancel to weights below 1)."""
        if len(thetas) <= 4:  # a few times: plain Python is cheaper than tensor dispatch
            return torch.tensor(self.weights(thetas), dtype=dtype, device=device).t()
        poly = self._tensors.get("poly")
        if poly is None:
            poly = self._tensors["poly"] = torch.tensor(self._poly, dtype=torch.float64)  # [C, P]
        th = torch.tensor(thetas, dtype=torch.float64)
        powers = th.unsqueeze(1) ** torch.arange(1, poly.shape[1] + 1, dtype=torch.float64)  # [m, P]
        return (powers @ poly.t()).to(dtype=dtype, device=device)

    def _extra_rows(self, dtype: torch.dtype, device: torch.device) -> list:
        key = (dtype, device)
        rows = self._tensors.get(key)
        if rows is None:
            rows = self._tensors[key] = [torch.tensor(r, dtype=dtype, device=device) for r in self._extra_a]
        return rows

    def extend(
        self,
        func: Callable[[float, torch.Tensor], torch.Tensor],
        t0: float,
        y0: torch.Tensor,
        h: float,
        K: torch.Tensor,
    ) -> torch.Tensor:
        """``[S + E, N]``: ``K`` with the :attr:`num_extra` extra stages appended (``E`` calls of ``func``)."""
        rows = self._extra_rows(y0.dtype, y0.device)
        if torch.is_grad_enabled() and (y0.requires_grad or K.requires_grad):
            # Differentiated solve: no in-place writes into tensors autograd saved.
            for c, a in zip(self._extra_c, rows):
                k = func(t0 + c * h, torch.addmv(y0, K.t(), a, alpha=h))
                K = torch.cat([K, k.unsqueeze(0)])
            return K
        s = K.shape[0]
        out = torch.empty((s + self.num_extra, K.shape[1]), dtype=K.dtype, device=K.device)
        out[:s].copy_(K)
        for e, (c, a) in enumerate(zip(self._extra_c, rows)):
            out[s + e].copy_(func(t0 + c * h, torch.addmv(y0, out[: s + e].t(), a, alpha=h)))
        return out

    def evaluate(
        self,
        y0: torch.Tensor,
        h: float,
        K: torch.Tensor,
        f1: Optional[torch.Tensor],
        thetas: Sequence[float],
        func: Optional[Callable[[float, torch.Tensor], torch.Tensor]] = None,
        t0: Optional[float] = None,
    ) -> torch.Tensor:
        """Interpolate inside a step.

        Args:
            y0: ``[N]`` state at the start of the step.
            h: Signed step size.
            K: ``[S, N]`` stage derivatives of the step (rows), or ``[S + E, N]``
                already :meth:`extend`-ed.
            f1: ``[N]`` ``f(t0 + h, y1)``; required when :attr:`needs_f1`.
            thetas: Fractions of the step in ``(0, 1)``.
            func, t0: Flat dynamics and the step's start time, required when
                :attr:`num_extra` > 0 and ``K`` has only the method's stages.

        Returns:
            ``[m, N]`` states at ``t0 + theta * h`` for each theta.
        """
        if self.needs_f1:
            K = torch.cat([K, f1.unsqueeze(0)])
        elif self.num_extra and K.shape[0] < len(self._poly):
            if func is None or t0 is None:
                raise ValueError(
                    f"this interpolant needs {self.num_extra} extra stages: pass func and t0 "
                    "(or build DenseOutput without extra_stages)"
                )
            K = self.extend(func, t0, y0, h, K)
        W = self._weight_matrix(thetas, y0.dtype, y0.device)
        return torch.addmm(y0.unsqueeze(0), W, K, alpha=h)
