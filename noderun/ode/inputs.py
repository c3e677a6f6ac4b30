"""The user's call in the step loops' form: input validation, state flattening, option handling.

The step loops (:mod:`.integrate`) see a flat 1-D state and time as Python
floats.  This module turns the user's call (tensor or tuple-of-tensors state,
time tensor, option dict) into that form and the flat solution back; ``odeint``
(:mod:`.solve`), ``odeint_adjoint`` (:mod:`.adjoint`) and the event solve
(:mod:`.events`) all use it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .integrate import SolverOptions
from .methods import MethodSpec
from .step_control import rms_norm

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

# Options accepted per kind of method.  ``step_size`` on an adaptive method
# switches it to fixed steps (useful for convergence studies).
FIXED_OPTIONS = frozenset({"step_size", "grid_constructor", "perturb", "interp"})
ADAPTIVE_OPTIONS = frozenset(
    {"first_step", "min_step", "max_step", "max_num_steps", "safety", "ifactor", "dfactor", "norm", "step_size",
     "step_t", "jump_t", "dtype", "controller", "pcoeff", "icoeff"}
)  # fmt: skip
# The order in which error messages list the valid options: most used first.
_OPTION_ORDER = (
    "step_size", "grid_constructor", "perturb", "interp", "first_step", "min_step", "max_step",
    "max_num_steps", "safety", "ifactor", "dfactor", "norm", "controller", "pcoeff", "icoeff",
    "step_t", "jump_t", "dtype",
)  # fmt: skip
CONTROLLERS = ("integral", "pi")
INTERPS = ("linear", "cubic")


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


def _times_option(name: str, value: Any) -> tuple:
    """``step_t`` / ``jump_t``: a 1-D tensor (or sequence) of finite times -> tuple of floats."""
    try:
        x = value.detach() if torch.is_tensor(value) else torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"option {name!r} must be a 1-D tensor of times, got {value!r}") from None
    if x.ndim != 1:
        raise ValueError(f"option {name!r} must be a 1-D tensor of times, got shape {tuple(x.shape)}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"option {name!r} must hold real times, got dtype {x.dtype}")
    times = x.to(device="cpu", dtype=torch.float64).tolist()
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"option {name!r} must contain only finite times")
    return tuple(times)


def _coefficient(name: str, value: Any, allow_zero: bool) -> float:
    x = _positive(name, value, allow_zero=allow_zero)
    if not math.isfinite(x):
        raise ValueError(f"option {name!r} must be finite, got {value!r}")
    return x


def resolve_options(
    spec: MethodSpec, rtol: float, atol: float, options: Optional[Dict[str, Any]]
) -> SolverOptions:
    """Validate the option dict for ``spec`` and return :class:`SolverOptions`.

    Unknown keys raise ``ValueError`` listing the valid keys for the method; every invalid
    value raises a one-line ``ValueError`` naming the valid values.  The scalar options
    (``step_size``, ``first_step``, ``min_step``, ``max_step``, ``max_num_steps``, ``safety``,
    ``ifactor``, ``dfactor``, ``norm``) are described in :func:`odeint`; the others:

    Adaptive methods:

    * ``step_t``: 1-D tensor (or sequence) of finite times the solver must step onto
      (torchdiffeq semantics): a step never crosses one, it ends exactly on it.  Nothing else
      changes there (FSAL continues).  Use it where the dynamics are not smooth (a kink) or
      where the step must not straddle a time.
    * ``jump_t``: like ``step_t``, for times where the dynamics are discontinuous: the step
      ending on a jump is evaluated on its near side (its last stages at the value of the
      state's dtype just before the jump), and the solve restarts on the far side: ``func`` is
      re-evaluated just after the jump instead of reusing the FSAL stage.  Output times on
      either side are unaffected.  Times of either option outside the open interval
      ``(t[0], t[-1])`` are ignored (as in torchdiffeq, where times before ``t[0]`` are dropped
      and later ones never reached), except that a solve starting exactly on a jump starts on
      its far side (``func`` evaluated just after it); a time may not appear twice among both
      (``ValueError``, as in torchdiffeq).  ``odeint_adjoint`` passes them to the backward solve with the rest
      of ``options`` (when ``adjoint_options`` defaults to them), where each backward interval
      uses those inside it.
    * ``controller``: ``'integral'`` (default: ``h * safety * r ** (-1 / (q + 1))``, ``q`` the
      embedded order) or ``'pi'``: a proportional-integral controller,
      ``h * safety * r_n ** (-(icoeff + pcoeff) / (q + 1)) * r_prev ** (pcoeff / (q + 1))``
      (diffrax's ``PIDController`` convention), with ``pcoeff`` (>= 0, default 0.3) and
      ``icoeff`` (> 0, default 0.4), both valid only with ``controller='pi'``.  See
      :class:`~noderun.ode.step_control.PIController` and benchmarks/bench_controller.py.
    * ``dtype``: torchdiffeq's dtype of time-like values; only ``torch.float64`` is accepted
      (a no-op): time is always handled in float64 here, and a lower precision would only
      lose accuracy in ``t + h``.

    Fixed-step methods:

    * ``grid_constructor``: ``(func, y0, t) -> grid``, torchdiffeq's alternative to
      ``step_size`` (the two are mutually exclusive).  It receives the flat dynamics
      ``func(t, y: [N]) -> [N]``, the flat ``y0`` ``[N]`` and the output times as a 1-D float64
      tensor on ``y0``'s device, and returns a 1-D tensor of times, strictly monotone in the
      direction of ``t``, from exactly ``t[0]`` to exactly ``t[-1]``.  The solver steps along
      the grid and, unlike torchdiffeq (which interpolates output times that fall between grid
      points), splits a grid interval at every output time inside it, so outputs are never
      interpolated; where output times are grid points the result is torchdiffeq's.
    * ``perturb``: ``True`` evaluates each step's first stage just after its start and its
      ``c = 1`` stages just before its end (values of the state's dtype next to them), so
      ``func`` sees the side of a grid point the step is on: for dynamics discontinuous at
      grid points (torchdiffeq semantics).  Default ``False``.
    * ``interp``: ``'linear'`` or ``'cubic'``, accepted for torchdiffeq compatibility and
      without effect: torchdiffeq uses it to interpolate output times that fall between grid
      points, and here no output time does (see ``grid_constructor``), so every output is a
      genuine step result, at least as accurate as either interpolation.
    """
    options = dict(options or {})
    valid = ADAPTIVE_OPTIONS if spec.adaptive else FIXED_OPTIONS
    unknown = sorted(set(options) - valid)
    if unknown:
        listed = sorted(valid, key=lambda k: _OPTION_ORDER.index(k) if k in _OPTION_ORDER else len(_OPTION_ORDER))
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {spec.name!r}; "
            f"valid options: {', '.join(listed)}"
        )
    rtol = _positive("rtol", rtol, allow_zero=True)
    atol = _positive("atol", atol, allow_zero=True)
    kw: Dict[str, Any] = {"rtol": rtol, "atol": atol}
    if options.get("step_size") is not None:
        if options.get("grid_constructor") is not None:
            raise ValueError("options 'step_size' and 'grid_constructor' are mutually exclusive")
        kw["step_size"] = _positive("step_size", options["step_size"])
        # Adaptive-method options (all but the fixed-grid ones) have nothing to act on.
        others = sorted(k for k in options if k not in FIXED_OPTIONS)
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

    # -- times the adaptive loop steps onto (torchdiffeq's step_t / jump_t) --
    for name in ("step_t", "jump_t"):
        if options.get(name) is not None:
            kw[name] = _times_option(name, options[name])
    both = list(kw.get("step_t", ())) + list(kw.get("jump_t", ()))
    if len(set(both)) != len(both):
        repeated = next(x for x in both if both.count(x) > 1)
        raise ValueError(f"options 'step_t' and 'jump_t' must not repeat a time, got {repeated!r} twice")
    # torchdiffeq: the dtype of time-like quantities, default float64.  Here time is always
    # a Python float (float64); a lower precision would only lose steps' accuracy.
    dtype = options.get("dtype")
    if dtype is not None and dtype is not torch.float64:
        raise ValueError(
            f"option 'dtype' must be torch.float64 (noderun.ode always handles time in float64), got {dtype!r}"
        )

    # -- step-size controller --
    controller = options.get("controller")
    if controller is not None:
        if controller not in CONTROLLERS:
            valid_names = ", ".join(map(repr, CONTROLLERS))
            raise ValueError(f"option 'controller' must be one of {valid_names}, got {controller!r}")
        kw["controller"] = controller
    for name, allow_zero in (("pcoeff", True), ("icoeff", False)):
        if options.get(name) is not None:
            if kw.get("controller") != "pi":
                raise ValueError(f"option {name!r} needs controller='pi' (the default controller is 'integral')")
            kw[name] = _coefficient(name, options[name], allow_zero)

    # -- fixed grids --
    gc = options.get("grid_constructor")
    if gc is not None:
        if not callable(gc):
            raise ValueError("option 'grid_constructor' must be a callable (func, y0, t) -> 1-D tensor of times")
        kw["grid_constructor"] = gc
    perturb = options.get("perturb")
    if perturb is not None:
        if not isinstance(perturb, bool):
            raise ValueError(f"option 'perturb' must be True or False, got {perturb!r}")
        kw["perturb"] = perturb
    interp = options.get("interp")
    if interp is not None and interp not in INTERPS:
        raise ValueError(
            f"option 'interp' must be 'linear' or 'cubic', got {interp!r} (either has no effect: "
            "fixed-step solves step onto every output time)"
        )
    return SolverOptions(**kw)


