"""Dense output of tsit5 and dopri8 against stepping onto every output time (the old behaviour).

Run:  python benchmarks/bench_dense_output.py [--out results/bench_dense_output.md]

1,000 output times (t in [0, 10]), float64, rtol = atol swept:

1. a 3-D rotation y' = A y (A skew-symmetric), error against expm(A t) y0;
2. 256 Van der Pol oscillators (mu = 2), error against dopri8 at rtol = atol = 1e-13.

"stepping" is the method without its interpolant (the tableau with ``dense=None``), which the
step loop handles by ending a step on every output time, as tsit5 and dopri8 did before they
had interpolants.  Errors are the max over outputs and components; time is one solve's wall
time on a shared machine (indicative only).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch
from tabulate import tabulate

from noderun.ode import RUNGE_KUTTA_METHODS
from noderun.ode.integrate import SolverOptions, integrate

F64 = torch.float64
TOLERANCES = [1e-5, 1e-7, 1e-9, 1e-11]
A = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0], [0.0, -2.0, 0.0]], dtype=F64)


def stepping(tab):
    return dataclasses.replace(tab, dense=None, dense_order=None, dense_c=(), dense_a=(), name=f"{tab.name}_stepping")


def rotation():
    y0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)
    times = torch.linspace(0.0, 10.0, 1001, dtype=F64)
    exact = torch.stack([torch.linalg.matrix_exp(A * t) @ y0 for t in times])
    return (lambda t, y: A @ y), y0, times.tolist(), exact


def van_der_pol():
    torch.manual_seed(0)
    y0 = (torch.randn(256, 2) + torch.tensor([2.0, 0.0])).to(F64).reshape(-1)

    def f(t, y):
        x, v = y.view(-1, 2).unbind(1)
        return torch.stack([v, 2.0 * (1 - x * x) * v - x], dim=1).reshape(-1)

    times = torch.linspace(0.0, 10.0, 1001, dtype=F64).tolist()
    ref, _ = integrate(f, y0, times, RUNGE_KUTTA_METHODS["dopri8"].tableau, SolverOptions(rtol=1e-13, atol=1e-13))
    return f, y0, times, ref


def run(f, y0, times, tab, tol, exact):
    start = time.perf_counter()
    with torch.no_grad():
        ys, stats = integrate(f, y0, times, tab, SolverOptions(rtol=tol, atol=tol))
    elapsed = time.perf_counter() - start
    return stats.steps_accepted, stats.nfe_forward, (ys - exact).abs().max().item(), elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_dense_output.md")
    args = parser.parse_args()
    sections = []
    for label, make in (("3-D rotation", rotation), ("Van der Pol x256, mu=2", van_der_pol)):
        f, y0, times, exact = make()
        rows = []
        for name in ("tsit5", "dopri8"):
            tab = RUNGE_KUTTA_METHODS[name].tableau
            for tol in TOLERANCES:
                old = run(f, y0, times, stepping(tab), tol, exact)
                new = run(f, y0, times, tab, tol, exact)
                rows.append(
                    [name, f"{tol:.0e}"]
                    + [f"{old[0]} / {old[1]} / {old[2]:.1e} / {old[3]:.2f}s"]
                    + [f"{new[0]} / {new[1]} / {new[2]:.1e} / {new[3]:.2f}s"]
                    + [f"{old[1] / new[1]:.1f}x"]
                )
        headers = [
            "method", "rtol=atol", "stepping onto outputs: steps / NFE / error / time",
            "dense output: steps / NFE / error / time", "NFE saved",
        ]  # fmt: skip
        sections.append(f"### {label}, 1,000 output times on [0, 10]\n\n" + tabulate(rows, headers, tablefmt="github"))
        print(sections[-1] + "\n", flush=True)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64\n\n"
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            title = "# Dense output: tsit5 and dopri8 with 1,000 output times\n\n"
            fh.write(title + header + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
