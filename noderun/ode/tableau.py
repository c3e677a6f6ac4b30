"""Butcher tableaus for explicit Runge-Kutta methods.

A tableau is pure data: coefficients are kept as Python numbers
(``fractions.Fraction`` where the source gives them exactly, ``float``
otherwise) and validated once at construction.  Tensors are built lazily, per
``(dtype, device)``, and cached on the tableau, so a solve never re-creates
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Sequence, Union

import torch

Number = Union[int, float, Fraction]

# Tolerance for the consistency checks.  Published coefficients are either exact
# rationals or decimals with about 16 significant digits, both of which satisfy
# the checks to well below this.
_CHECK_TOL = 1e-12


def _fsum(xs: Sequence[Number]) -> float:
    return math.fsum(float(x) for x in xs)


@dataclass(frozen=True)
class TableauTensors:
    """Coefficients of a :class:`ButcherTableau` as tensors of one dtype/device.

    Attributes:
        a_rows: ``a_rows[i]`` is the 1-D tensor ``[a_i0, ..., a_i(i-1)]`` (length
            ``i``) for stage ``i >= 1``; ``a_rows[0]`` is an empty tensor.
        b: ``[S]`` solution weights.
        b_error: ``[S]`` error weights (``b - b_hat``), or ``None``.
    """

    a_rows: tuple
    b: torch.Tensor
    b_error: Optional[torch.Tensor]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method with an optional embedded error estimate.

    With ``S`` stages the method computes, for a step of size ``h`` from
    ``(t, y)``::

        k_i = f(t + c_i h, y + h * sum_{j<i} a_ij k_j)      i = 0 .. S-1
        y_1 = y + h * sum_i b_i k_i
        err = h * sum_i b_error_i k_i                       (local error estimate)

    Attributes:
        name: Method name as used by ``odeint(method=...)``.
        c: ``S`` nodes.
        a: ``S`` rows of the strictly lower-triangular matrix; row ``i`` has
            exactly ``i`` entries (row 0 is empty).
        b: ``S`` weights of the propagated solution (order ``order``).
        order: Order of the propagated solution.
        b_error: ``S`` weights ``b - b_hat`` of the error estimate, where
            ``b_hat`` are the weights of the embedded solution (order
            ``error_order``).  ``None`` for fixed-step methods.
        error_order: Order of the embedded solution (``None`` without one).
        fsal: First-same-as-last: the last stage is evaluated at
            ``(t + h, y_1)``, so it is the first stage of the next step.
        dense: Optional dense output.  ``dense[j]`` holds the coefficients
            ``(d_j1, ..., d_jP)`` of the polynomial weight
            ``w_j(theta) = sum_p d_jp theta**p`` so that
            ``y(t + theta h) = y + h * sum_j w_j(theta) k_j`` for ``theta`` in
            ``[0, 1]``.  ``w_j(1)`` must equal ``b_j``.  With ``E`` extra stages
            (below) there are ``S + E`` rows, the last ``E`` for the extra stages,
            whose weights vanish at ``theta = 1``.  Methods without one use cubic
            Hermite interpolation (see :mod:`.interpolate`).
        dense_order: Order of the dense output (``None`` without one).
        dense_c, dense_a: Extra stages of the dense output (default: none).  Extra
            stage ``e`` is ``f(t + dense_c[e] h, y + h * sum_j dense_a[e][j] k_j)``
            over the ``S + e`` stages before it (the method's, then earlier extra
            ones), so ``dense_a[e]`` has ``S + e`` entries.  They cost ``E``
            evaluations per step that has requested times inside, and are needed
            when the method's own stages cannot carry an interpolant of the order
            wanted (dopri8).
        source: Citation for the coefficients.
    """

    name: str
    c: tuple
    a: tuple
    b: tuple
    order: int
    b_error: Optional[tuple] = None
    error_order: Optional[int] = None
    fsal: bool = False
    dense: Optional[tuple] = None
    dense_order: Optional[int] = None
    dense_c: tuple = ()
    dense_a: tuple = ()
    source: str = ""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Normalise to tuples so the dataclass stays hashable and immutable.
        object.__setattr__(self, "c", tuple(self.c))
        object.__setattr__(self, "a", tuple(tuple(row) for row in self.a))
        object.__setattr__(self, "b", tuple(self.b))
        if self.b_error is not None:
            object.__setattr__(self, "b_error", tuple(self.b_error))
        if self.dense is not None:
            object.__setattr__(self, "dense", tuple(tuple(row) for row in self.dense))
        object.__setattr__(self, "dense_c", tuple(self.dense_c))
        object.__setattr__(self, "dense_a", tuple(tuple(row) for row in self.dense_a))
        self._validate()

    # -- validation -----------------------------------------------------------

    def _fail(self, msg: str) -> None:
        raise ValueError(f"invalid Butcher tableau '{self.name}': {msg}")

    def _validate(self) -> None:
        s = len(self.c)
        if s == 0:
            self._fail("no stages")
        if len(self.a) != s:
            self._fail(f"A has {len(self.a)} rows but c has {s} entries")
        for i, row in enumerate(self.a):
            if len(row) != i:
                self._fail(f"row {i} of A must have {i} entries (explicit method), got {len(row)}")
            if abs(_fsum(row) - float(self.c[i])) > _CHECK_TOL:
                self._fail(f"row {i} of A sums to {_fsum(row)!r}, expected c[{i}] = {float(self.c[i])!r}")
        if len(self.b) != s:
            self._fail(f"b has {len(self.b)} entries, expected {s}")
        if abs(_fsum(self.b) - 1.0) > _CHECK_TOL:
            self._fail(f"solution weights b sum to {_fsum(self.b)!r}, expected 1")
        if self.order < 1:
            self._fail(f"order must be >= 1, got {self.order}")
        if (self.b_error is None) != (self.error_order is None):
            self._fail("b_error and error_order must be given together")
        if self.b_error is not None:
            if len(self.b_error) != s:
                self._fail(f"b_error has {len(self.b_error)} entries, expected {s}")
            if abs(_fsum(self.b_error)) > _CHECK_TOL:
                self._fail(f"error weights b_error sum to {_fsum(self.b_error)!r}, expected 0")
        if self.fsal:
            if float(self.c[-1]) != 1.0:
                self._fail("fsal requires c[-1] == 1")
            last = tuple(self.a[-1]) + (0,)
            if any(abs(float(x) - float(y)) > _CHECK_TOL for x, y in zip(last, self.b)):
                self._fail("fsal requires the last row of A (padded with 0) to equal b")
        extra = len(self.dense_c)
        if len(self.dense_a) != extra:
            self._fail(f"dense_a has {len(self.dense_a)} rows but dense_c has {extra} entries")
        if extra and self.dense is None:
            self._fail("extra dense-output stages (dense_c, dense_a) need dense weights")
        for e, row in enumerate(self.dense_a):
            if len(row) != s + e:
                self._fail(f"row {e} of dense_a must have {s + e} entries, got {len(row)}")
            # A stage at t + c h must see an input consistent to first order: sum_j a_j = c.
            if abs(_fsum(row) - float(self.dense_c[e])) > _CHECK_TOL:
                self._fail(f"row {e} of dense_a sums to {_fsum(row)!r}, expected dense_c[{e}]")
        if self.dense is not None:
            if len(self.dense) != s + extra:
                self._fail(f"dense has {len(self.dense)} rows, expected {s + extra}")
            degree = len(self.dense[0])
            if any(len(row) != degree for row in self.dense):
                self._fail("all rows of dense must have the same length")
            # Continuity with the step: w(1) = b (0 for the extra stages, not part of y1).
            b_ext = tuple(self.b) + (0,) * extra
            for j, row in enumerate(self.dense):
                if abs(_fsum(row) - float(b_ext[j])) > _CHECK_TOL:
                    self._fail(f"dense weight {j} at theta=1 is {_fsum(row)!r}, expected {float(b_ext[j])!r}")
            # Consistency: y' = 1 must be interpolated exactly, i.e. sum_j w_j(theta) = theta.
            for p in range(degree):
                expected = 1.0 if p == 0 else 0.0
                total = _fsum([row[p] for row in self.dense])
                if abs(total - expected) > _CHECK_TOL:
                    self._fail(f"dense weights of theta^{p + 1} sum to {total!r}, expected {expected}")

    # -- derived quantities ---------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate."""
        return self.b_error is not None

    def tensors(self, dtype: torch.dtype, device: torch.device) -> TableauTensors:
        """Return the coefficients as tensors of ``dtype`` on ``device`` (cached)."""
        key = (dtype, device)
        cached = self._cache.get(key)
        if cached is None:

            def vec(xs) -> torch.Tensor:
                return torch.tensor([float(x) for x in xs], dtype=dtype, device=device)

            cached = TableauTensors(
                a_rows=tuple(vec(row) for row in self.a),
                b=vec(self.b),
                b_error=None if self.b_error is None else vec(self.b_error),
            )
            self._cache[key] = cached
        return cached

    def c_float(self) -> tuple:
        """Nodes as Python floats (time arithmetic stays in float64 on the host)."""
        key = "c_float"
        cached = self._cache.get(key)
        if cached is None:
            cached = tuple(float(x) for x in self.c)
            self._cache[key] = cached
        return cached
