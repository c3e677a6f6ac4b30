"""Step-size control: error norms, initial step selection and the controller.

All step-size arithmetic happens on the host in Python floats (float64): the
accept/reject decision needs one device-to-host sync per step anyway (the error
norm), and keeping ``t`` and ``h`` as Python numbers avoids a handful of tiny
tensor ops per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from .errors import ODESolverError

Norm = Callable[[torch.Tensor], float]


def rms_norm(x: torch.Tensor) -> float:
    """Root-mean-square of a 1-D tensor, as a Python float (one host sync)."""
    n = x.numel()
    if n == 0:
        return 0.0
    return torch.linalg.vector_norm(x).item() / math.sqrt(n)


@dataclass(frozen=True)
class SemiNorm:
    """RMS norm over the first ``size`` entries only.

    Used by the adjoint backward solve, whose flat state is
    ``[y, a, dL/dtheta]``: the parameter-gradient channels are pure integrals
    (nothing depends on them), so their error need not limit the step size
    (Kidger, Chen, Lyons, "Hey, that's not an ODE", ICML 2021).
    """

    size: int

    def __call__(self, x: torch.Tensor) -> float:
        return rms_norm(x[: self.size])


def error_ratio(
    err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, rtol: float, atol: float, norm: Norm
) -> float:
    """``norm(err / (atol + rtol * max(|y0|, |y1|)))``; <= 1 means the step is accepted.

    ``err`` may be the error estimate divided by ``|h|``; the caller rescales.
    """
    tol = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
    return norm(err.div(tol))


def initial_step(
    func: Callable,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    rtol: float,
    atol: float,
    norm: Norm,
) -> float:
    """Starting step size (Hairer, Norsett, Wanner, Solving ODEs I, II.4, p. 169).

    Costs one evaluation of ``func``.  Returns a positive step magnitude.
    """
    scale = y0.abs().mul(rtol).add_(atol)
    d0 = norm(y0 / scale)
    d1 = norm(f0 / scale)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    y1 = y0 + (direction * h0) * f0
    f1 = func(t0 + direction * h0, y1)
    d2 = norm((f1 - f0) / scale) / h0
    dmax = max(d1, d2)
    if dmax <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / dmax) ** (1.0 / (order + 1))
    h = min(100 * h0, h1)
    if not math.isfinite(h) or h <= 0:
        raise ODESolverError(
            f"could not select an initial step at t={t0!r} (got {h!r}); the initial state or "
            "its derivative is not finite. Check y0 and func, or pass options={'first_step': ...}."
        )
    return h


@dataclass(frozen=True)
class StepController:
    """Integral (elementary) controller: ``h_new = h * clip(safety * r**(-1/(q+1)))``.

    ``r`` is the error ratio and ``q`` the order of the embedded (lower-order)
    solution, so the exponent matches the order of the error estimate.  The
    factor is clipped to ``[dfactor, ifactor]``; after an accepted step the step
    never shrinks, and after a rejection it never grows (both standard, Hairer
    et al. II.4), which keeps accept/reject from oscillating.
    """

    error_order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2

    def next_step(self, h: float, ratio: float, accepted: bool) -> float:
        """New step magnitude after a step of magnitude ``h`` with error ratio ``ratio``."""
        if ratio == 0.0:
            factor = self.ifactor
        elif not math.isfinite(ratio):
            factor = self.dfactor
        else:
            factor = self.safety * ratio ** (-1.0 / (self.error_order + 1))
            factor = min(self.ifactor, max(self.dfactor, factor))
        factor = max(1.0, factor) if accepted else min(1.0, factor)
        return h * factor


@dataclass
class PIController:
    """Proportional-integral controller, in the convention of diffrax's ``PIDController``
    (with ``dcoeff = 0``)::

        h_new = h * clip(safety * r_n ** (-(icoeff + pcoeff) / k) * r_prev ** (pcoeff / k))

    ``r_n`` is the error ratio of the step just taken, ``r_prev`` that of the previous
    accepted step and ``k = error_order + 1``.  ``pcoeff = 0, icoeff = 1`` is the integral
    controller.  The proportional term damps the step-size oscillation the integral controller
    shows where the step is limited by stability rather than accuracy (Gustafsson 1991,
    Soederlind 2002), and the smoother step sequence often saves rejected steps.

    After a rejection the step shrinks as with the integral controller (``r_n ** (-1/k)``, no
    memory term: the previous step's ratio says nothing about how far off this one was), and
    ``r_prev`` is only updated by accepted steps.  Clipping and the no-growth-after-rejection /
    no-shrink-after-acceptance rules are those of :class:`StepController`.  Mutable: one per solve.
    """

    error_order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.3
    icoeff: float = 0.4
    _prev: Optional[float] = field(default=None, repr=False)

    def next_step(self, h: float, ratio: float, accepted: bool) -> float:
        """New step magnitude after a step of magnitude ``h`` with error ratio ``ratio``."""
        k = self.error_order + 1
        if ratio == 0.0:
            factor = self.ifactor
        elif not math.isfinite(ratio):
            factor = self.dfactor
        elif not accepted:
            factor = self.safety * ratio ** (-1.0 / k)
        else:
            factor = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k)
            if self._prev is not None:
                factor *= self._prev ** (self.pcoeff / k)
        if math.isfinite(factor):
            factor = min(self.ifactor, max(self.dfactor, factor))
        else:
            factor = self.ifactor
        if accepted:
            # A zero ratio carries no scale (the step was already grown by ifactor): forget it.
            self._prev = ratio if ratio > 0.0 and math.isfinite(ratio) else None
        return h * (max(1.0, factor) if accepted else min(1.0, factor))


Controller = Union[StepController, PIController]


def make_controller(
    kind: str, error_order: int, safety: float, ifactor: float, dfactor: float, pcoeff: float, icoeff: float
) -> Controller:
    """The controller named by ``options['controller']``: ``'integral'`` or ``'pi'``."""
    if kind == "pi":
        return PIController(error_order, safety, ifactor, dfactor, pcoeff, icoeff)
    return StepController(error_order, safety, ifactor, dfactor)


def check_step(t: float, h: float, min_step: float, num_steps: int, max_num_steps: int) -> None:
    """Raise :class:`ODESolverError` if the solve cannot make progress."""
    if num_steps >= max_num_steps:
        raise ODESolverError(
            f"reached max_num_steps={max_num_steps} at t={t!r} with step size {h!r}; "
            "the problem may be stiff or blow up. Raise options['max_num_steps'] or loosen rtol/atol."
        )
    if h < min_step or h <= 4.0 * math.ulp(t):
        raise ODESolverError(
            f"step size underflow at t={t!r}: step {h!r} is below min_step={min_step!r} or the "
            "floating-point resolution of t; the solution may blow up or be singular here. "
            "Loosen rtol/atol, lower options['min_step'], or check the dynamics."
        )
