"""Exceptions raised by the ODE solvers."""


class ODESolverError(RuntimeError):
    """The solver could not make progress.

    Raised when the step size underflows (below ``min_step`` or below the
    floating-point resolution of ``t``), when ``max_num_steps`` is reached, or
    when the state or its error estimate stops being finite.  The message names
    the time, the step size and the options that can be changed.
    """
