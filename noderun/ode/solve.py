"""``odeint``: input validation, state flattening and option handling.

The step loops (:mod:`.integrate`) see a flat 1-D state and time as Python
floats.  This module turns the user's call (tensor or tuple-of-tensors state,
time tensor, option dict) into that form and the flat solution back.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from . import stats as _stats
from .integrate import SolverOptions, integrate
from .methods import MethodSpec, get_method
from .step_control import rms_norm

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

# Options accepted per kind of method.  ``step_size`` on an adaptive method
# switches it to fixed steps (useful for convergence studies).
FIXED_OPTIONS = frozenset({"step_size"})
ADAPTIVE_OPTIONS = frozenset(
    {"first_step", "min_step", "max_step", "max_num_steps", "safety", "ifactor", "dfactor", "norm", "step_size"}
)


class FlatState:
    """Maps a state (tensor or tuple of tensors) to one flat 1-D tensor and back.

    All tensors of a tuple state must share dtype and device; the flat state
    has that dtype.
    """

    def __init__(self, y0: State) -> None:
        self.is_tuple = isinstance(y0, tuple)
        tensors = y0 if self.is_tuple else (y0,)
        if len(tensors) == 0 or not all(torch.is_tensor(x) for x in tensors):
            raise ValueError("y0 must be a tensor or a non-empty tuple of tensors")
        dtype, device = tensors[0].dtype, tensors[0].device
        if not dtype.is_floating_point:
            raise ValueError(f"y0 must have a floating-point dtype, got {dtype}")
        for x in tensors:
            if x.dtype != dtype or x.device != device:
                raise ValueError("all tensors of a tuple state must share dtype and device")
        self.dtype, self.device = dtype, device
        self.shapes = [x.shape for x in tensors]
        self.numels = [x.numel() for x in tensors]
        self.size = sum(self.numels)
        # A channels_last y0 (4-D, NHWC in memory) is flattened in its memory order, so
        # flattening it, and the dynamics' channels_last output, is a view, not a copy,
        # and the dynamics see channels_last views of the flat state.
        self.channels_last = not self.is_tuple and _is_channels_last(y0)

    def flatten(self, y: State) -> torch.Tensor:
        """State -> ``[N]`` (a view when ``y`` has the layout of ``y0``)."""
        if self.is_tuple:
            return torch.cat([x.reshape(-1) for x in y])
        if self.channels_last:
            return y.permute(0, 2, 3, 1).reshape(-1)
        return y.reshape(-1)

    def unflatten(self, flat: torch.Tensor) -> State:
        """``[N]`` -> state (views where possible)."""
        if self.is_tuple:
            return tuple(p.view(s) for p, s in zip(flat.split(self.numels), self.shapes))
        if self.channels_last:
            n, c, h, w = self.shapes[0]
            return flat.view(n, h, w, c).permute(0, 3, 1, 2)
        return flat.view(self.shapes[0])

    def unflatten_solution(self, ys: torch.Tensor) -> State:
        """``[T, N]`` -> ``[T, *shape]`` (or a tuple of such); ``[T, N, C, H, W]`` views
        whose every ``[i]`` is channels_last when ``y0`` was."""
        T = ys.shape[0]
        if self.is_tuple:
            return tuple(p.reshape(T, *s) for p, s in zip(ys.split(self.numels, dim=1), self.shapes))
        if self.channels_last:
            n, c, h, w = self.shapes[0]
            return ys.reshape(T, n, h, w, c).permute(0, 1, 4, 2, 3)
        return ys.reshape(T, *self.shapes[0])

    def flat_func(self, func: Callable) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """Wrap ``func(t: 0-dim tensor, y: state) -> dy/dt`` as ``(t: float, y: [N]) -> [N]``.

        ``t`` is passed as a 0-dim tensor of the state's dtype (as torchdiffeq does).
        """
        dtype, device = self.dtype, self.device
        if self.is_tuple:
            unflatten, flatten = self.unflatten, self.flatten

            def f(t: float, y: torch.Tensor) -> torch.Tensor:
                return flatten(func(torch.scalar_tensor(t, dtype=dtype, device=device), unflatten(y)))

        elif self.channels_last:
            unflatten, flatten = self.unflatten, self.flatten

            def f(t: float, y: torch.Tensor) -> torch.Tensor:
                return flatten(func(torch.scalar_tensor(t, dtype=dtype, device=device), unflatten(y)))

        else:
            shape = self.shapes[0]

            def f(t: float, y: torch.Tensor) -> torch.Tensor:
                return func(torch.scalar_tensor(t, dtype=dtype, device=device), y.view(shape)).reshape(-1)

        return f


def _is_channels_last(x: torch.Tensor) -> bool:
    """4-D and laid out NHWC in memory (and not also plain contiguous, e.g. C = 1 or H = W = 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def check_times(t: torch.Tensor) -> list:
    """Validate ``t`` and return it as a list of Python floats (float64).

    Raises ``ValueError`` unless ``t`` is a non-empty 1-D tensor of finite,
    strictly increasing or strictly decreasing values.
    """
    if not torch.is_tensor(t) or t.ndim != 1 or t.numel() == 0:
        raise ValueError("t must be a non-empty 1-D tensor of times")
    times = t.detach().to(device="cpu", dtype=torch.float64).tolist()
    if not all(math.isfinite(x) for x in times):
        raise ValueError("t must contain only finite values")
    diffs = [b - a for a, b in zip(times, times[1:])]
    if diffs and not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError("t must be strictly increasing or strictly decreasing")
    return times


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} must be a number, got {value!r}") from None
    if not (x > 0 or (allow_zero and x == 0)) or math.isnan(x):
        raise ValueError(f"option {name!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return x


def resolve_options(
    spec: MethodSpec, rtol: float, atol: float, options: Optional[Dict[str, Any]]
) -> SolverOptions:
    """Validate the option dict for ``spec`` and return :class:`SolverOptions`.

    Unknown keys raise ``ValueError`` listing the valid keys for the method.
    """
    options = dict(options or {})
    valid = ADAPTIVE_OPTIONS if spec.adaptive else FIXED_OPTIONS
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {spec.name!r}; "
            f"valid options: {', '.join(sorted(valid))}"
        )
    rtol = _positive("rtol", rtol, allow_zero=True)
    atol = _positive("atol", atol, allow_zero=True)
    kw: Dict[str, Any] = {"rtol": rtol, "atol": atol}
    if options.get("step_size") is not None:
        kw["step_size"] = _positive("step_size", options["step_size"])
        others = sorted(k for k in options if k != "step_size")
        if others:
            raise ValueError(f"options {others} have no effect with a fixed 'step_size'")
    elif spec.adaptive and rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0 for an adaptive method")
    for name in ("first_step", "max_step", "safety", "ifactor", "dfactor"):
        if options.get(name) is not None:
            kw[name] = _positive(name, options[name])
    if options.get("min_step") is not None:
        kw["min_step"] = _positive("min_step", options["min_step"], allow_zero=True)
    if options.get("max_num_steps") is not None:
        kw["max_num_steps"] = int(_positive("max_num_steps", options["max_num_steps"]))
    norm = options.get("norm")
    if norm is not None and norm != "rms":
        if not callable(norm):
            raise ValueError("option 'norm' must be 'rms' or a callable mapping a 1-D tensor to a float")
        kw["norm"] = norm
    else:
        kw["norm"] = rms_norm
    return SolverOptions(**kw)


def odeint(
    func: Callable,
    y0: State,
    t: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: Optional[Dict[str, Any]] = None,
) -> State:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of the state's
            dtype, ``y`` and the result have the shape(s) of ``y0``.
        y0: Initial state: a floating-point tensor of any shape, or a tuple of
            tensors sharing dtype and device.
        t: 1-D tensor of output times, strictly increasing or strictly
            decreasing; ``t[0]`` is the initial time.  Times are handled in
            float64 whatever the dtype of ``t``.
        method: One of ``euler``, ``midpoint``, ``rk4`` (fixed step) or
            ``adaptive_heun``, ``fehlberg2``, ``bosh3``, ``dopri5``, ``tsit5``,
            ``dopri8`` (adaptive).
        rtol, atol: Relative and absolute tolerance of adaptive methods (the
            RMS norm of ``err / (atol + rtol * max(|y0|, |y1|))`` must be <= 1).
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
              to the flattened scaled error).

    Returns:
        Tensor ``[len(t), *y0.shape]`` (or a tuple of such for a tuple
        ``y0``), in ``y0``'s dtype.  The result is differentiable with respect
        to ``y0`` and anything ``func`` uses (backpropagation through the
        solver's operations); it is not differentiated with respect to ``t``,
        use :func:`odeint_adjoint` for that.

    Raises:
        ValueError: invalid method, option, ``t`` or ``y0``.
        ODESolverError: the solve could not make progress (step-size underflow,
            ``max_num_steps`` reached, non-finite state).
    """
    spec = get_method(method)
    opts = resolve_options(spec, rtol, atol, options)
    state = FlatState(y0)
    times = check_times(t)
    ys, stats = integrate(state.flat_func(func), state.flatten(y0), times, spec.tableau, opts)
    _stats.record(stats)
    return state.unflatten_solution(ys)
