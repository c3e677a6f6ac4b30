"""Solver benchmark: noderun.ode against torchdiffeq on the same machine.

Run:  python benchmarks/bench_ode.py [--repeats 7] [--out results/bench_ode.md]

Both libraries are timed interleaved in one process (float32, default thread
count), median over the repeats after one warm-up solve each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tabulate import tabulate
from torch import nn

import torchdiffeq
from noderun.ode import odeint as our_odeint
from noderun.ode import odeint_adjoint as our_odeint_adjoint
from noderun.ode import track_stats


class Counted(nn.Module):
    """Counts calls of the wrapped dynamics, split by autograd phase."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.forward_calls = 0
        self.backward_calls = 0
        self.in_backward = False

    def forward(self, t, y):
        if self.in_backward:
            self.backward_calls += 1
        else:
            self.forward_calls += 1
        return self.f(t, y)


def vdp(t, y, mu=2.0):
    x, v = y[:, 0], y[:, 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=1)


def van_der_pol_problem():
    y0 = torch.randn(256, 2) + torch.tensor([2.0, 0.0])
    t = torch.linspace(0.0, 7.63, 200)
    kw = dict(method="dopri5", rtol=1e-5, atol=1e-5)

    def ours():
        with track_stats() as s:
            with torch.no_grad():
                our_odeint(vdp, y0, t, **kw)
        return s.nfe_forward, 0

    def theirs():
        f = Counted(vdp)
        with torch.no_grad():
            torchdiffeq.odeint(f, y0, t, **kw)
        return f.forward_calls, 0

    return ours, theirs


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, t, y):
        return self.net(y)


def neural_ode_problem():
    func = MLP()
    y0 = torch.randn(64, 4)
    t = torch.tensor([0.0, 10.0])
    kw = dict(method="dopri5", rtol=1e-6, atol=1e-6)

    def ours():
        func.zero_grad()
        with track_stats() as s:
            our_odeint_adjoint(func, y0, t, **kw)[-1].pow(2).mean().backward()
        return s.nfe_forward, s.nfe_backward

    counted = Counted(func)

    def theirs():
        func.zero_grad()
        counted.forward_calls = counted.backward_calls = 0
        counted.in_backward = False
        loss = torchdiffeq.odeint_adjoint(counted, y0, t, adjoint_params=tuple(func.parameters()), **kw)[-1].pow(2).mean()
        counted.in_backward = True
        loss.backward()
        counted.in_backward = False
        return counted.forward_calls, counted.backward_calls

    return ours, theirs


def time_interleaved(ours, theirs, repeats):
    nfe = {"ours": ours(), "theirs": theirs()}  # warm-up, also records NFE
    times = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return nfe, {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="results/bench_ode.md")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    problems = [
        ("Van der Pol x256, mu=2, 200 outputs (fwd)", van_der_pol_problem),
        ("MLP 4-32-4 neural ODE, batch 64 (fwd + adjoint bwd)", neural_ode_problem),
    ]
    for label, make in problems:
        nfe, med = time_interleaved(*make(), args.repeats)
        rows.append(
            [
                label,
                f"{nfe['ours'][0]} / {nfe['theirs'][0]}",
                f"{nfe['ours'][1]} / {nfe['theirs'][1]}",
                f"{med['ours']:.4f} / {med['theirs']:.4f}",
                f"{med['ours'] / med['theirs']:.2f}",
            ]
        )
    headers = ["problem", "NFE fwd (ours / torchdiffeq)", "NFE bwd (ours / torchdiffeq)", "median s (ours / torchdiffeq)", "time ratio"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {args.repeats}\n\n"
    print(header + table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("# ODE solver benchmark\n\n" + header + table + "\n")


if __name__ == "__main__":
    main()
