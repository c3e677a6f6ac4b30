"""Step-size controllers: the integral controller (default) against the PI controller.

Run:  python benchmarks/bench_controller.py [--out results/bench_controller.md]
          [--methods dopri5 tsit5] [--pi 0.3,0.4 --pi 0.2,0.5]

The problems of bench_ode.py, in float64 so that tight tolerances are not limited by round-off:

1. 256 Van der Pol oscillators (mu = 2), 200 output times over one cycle, forward solve;
   error: max over outputs and oscillators against a dopri8 solve at rtol = atol = 1e-13.
2. MLP neural ODE (4 -> 32 -> 4, tanh, random init), batch 64, t = [0, 10], odeint_adjoint
   forward + backward (adjoint with the same controller and tolerances); error: the relative
   error of the parameter gradient against backpropagation through a dopri8 solve at 1e-13
   (it includes the forward solve's error).

For every tolerance rtol = atol in the sweep each controller gives (NFE, error).  "NFE at equal
error" compares the controllers at the integral controller's errors: the PI controller's NFE
there is interpolated linearly in log NFE against log error between its two neighbouring
points (blank where that error is outside the PI sweep).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from tabulate import tabulate

from bench_ode import MLP, vdp  # the same problems as bench_ode.py (this folder is on sys.path when run)
from noderun.ode import odeint, odeint_adjoint, track_stats

F64 = torch.float64
TOLERANCES = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]


def van_der_pol_problem():
    torch.manual_seed(0)
    y0 = (torch.randn(256, 2) + torch.tensor([2.0, 0.0])).to(F64)
    t = torch.linspace(0.0, 7.63, 200, dtype=F64)
    reference = odeint(vdp, y0, t, method="dopri8", rtol=1e-13, atol=1e-13)

    def run(method, tol, options):
        with track_stats() as s, torch.no_grad():
            ys = odeint(vdp, y0, t, method=method, rtol=tol, atol=tol, options=options)
        return s.nfe_forward, 0, s.steps_rejected, (ys - reference).abs().max().item()

    return run


def neural_ode_problem():
    torch.manual_seed(0)
    func = MLP().to(F64)
    y0 = torch.randn(64, 4, dtype=F64)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    params = tuple(func.parameters())

    def loss(ys):
        return ys[-1].pow(2).mean()

    reference = torch.autograd.grad(loss(odeint(func, y0, t, method="dopri8", rtol=1e-13, atol=1e-13)), params)
    reference = torch.cat([g.flatten() for g in reference])

    def run(method, tol, options):
        with track_stats() as s:
            ys = odeint_adjoint(func, y0, t, method=method, rtol=tol, atol=tol, options=options)
            grads = torch.autograd.grad(loss(ys), params)
        g = torch.cat([x.flatten() for x in grads])
        err = ((g - reference).norm() / reference.norm()).item()
        return s.nfe_forward, s.nfe_backward, s.steps_rejected + s.backward_steps_rejected, err

    return run


def nfe_at_error(points, error):
    """log-log interpolation of NFE at ``error`` from ``[(error, nfe), ...]``; None outside."""
    pts = sorted(points)
    for (e1, n1), (e2, n2) in zip(pts, pts[1:]):
        if e1 <= error <= e2 and e1 > 0:
            if e1 == e2:
                return min(n1, n2)
            w = (math.log(error) - math.log(e1)) / (math.log(e2) - math.log(e1))
            return math.exp((1 - w) * math.log(n1) + w * math.log(n2))
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_controller.md")
    parser.add_argument("--methods", nargs="+", default=["dopri5", "tsit5"])
    parser.add_argument("--pi", action="append", default=None, help="pcoeff,icoeff of a PI controller (repeatable)")
    args = parser.parse_args()
    pis = args.pi or ["0.3,0.4"]
    controllers = [("integral", None)] + [
        (f"pi {p}", {"controller": "pi", "pcoeff": float(p.split(",")[0]), "icoeff": float(p.split(",")[1])})
        for p in pis
    ]
    problems = [
        ("Van der Pol x256, mu=2, 200 outputs (fwd)", van_der_pol_problem()),
        ("MLP 4-32-4 neural ODE, batch 64 (fwd + adjoint bwd; error of dL/dtheta)", neural_ode_problem()),
    ]
    started = time.time()
    sections = []
    for label, run in problems:
        for method in args.methods:
            results = {name: [run(method, tol, opts) for tol in TOLERANCES] for name, opts in controllers}
            rows = []
            for i, tol in enumerate(TOLERANCES):
                row = [f"{tol:.0e}"]
                for name, _ in controllers:
                    fwd, bwd, rej, err = results[name][i]
                    row.append(f"{fwd + bwd} ({fwd}+{bwd}), {rej} rej, err {err:.2e}")
                base_err, base_nfe = results["integral"][i][3], sum(results["integral"][i][:2])
                for name, _ in controllers[1:]:
                    nfe = nfe_at_error([(r[3], r[0] + r[1]) for r in results[name]], base_err)
                    row.append("" if nfe is None else f"{nfe:.0f} ({nfe / base_nfe:.2f}x)")
                rows.append(row)
            headers = ["rtol=atol"] + [f"{name}: NFE (fwd+bwd), rejected, error" for name, _ in controllers]
            headers += [f"{name}: NFE at integral's error" for name, _ in controllers[1:]]
            table = tabulate(rows, headers=headers, tablefmt="github")
            sections.append(f"### {label}, {method}\n\n{table}\n")
            print(sections[-1], flush=True)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64; "
        f"sweep took {time.time() - started:.0f} s\n\n"
    )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("# Step-size controllers: integral vs PI\n\n" + header + "\n".join(sections))


if __name__ == "__main__":
    main()
