"""What RNODE's terms cost a training iteration of the fast ODE-Net, at equal NFE.

    python benchmarks/bench_rnode.py                   # 12 rounds of batch 128 on the fast seed-0 weights
    python benchmarks/bench_rnode.py --rounds 3 --out ""

One training iteration (forward, loss, backward through the adjoint) of the trained Table 1 ODE-Net
(results/checkpoints/table1-odenet-fast-seed0.pt, the fast profile's bf16-mixed where the CPU has
native bfloat16) on the same batch of 128 training images, for

- no regularizer;
- the kinetic term only (regularizer.jacobian=0): ‖f‖² integrated beside the state;
- both terms: also the Hutchinson estimate of ‖∂f/∂z‖²_F, one vector-Jacobian product per evaluation
  in the forward solve and its second derivative in the backward solve.

The weights are fixed, and the terms stay out of the step-size error norm, so every variant takes
the same steps: the ratios are the terms' cost per iteration at equal NFE (a regularizer that
saves time must save more NFE than this). The variants are interleaved round by round and the
medians compared, so a machine that slows down affects each alike; the ratios, not the seconds,
carry to other machines.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noderun.data.batching import to_float  # noqa: E402
from noderun.data.mnist import load_mnist  # noqa: E402
from noderun.models.odenet import build_odenet  # noqa: E402
from noderun.models.regularization import Regularizer, collect  # noqa: E402
from noderun.models.solver import SolverSpec  # noqa: E402
from noderun.ode import track_stats  # noqa: E402
from noderun.profiling import bf16_supported, device_name, git_commit  # noqa: E402

VARIANTS = (("none", None), ("kinetic only", Regularizer(kinetic=1e-4)),
            ("kinetic and Jacobian", Regularizer(kinetic=1e-4, jacobian=1e-4)))


def iteration(model, x, y, regularizer, autocast_dtype) -> tuple[float, int, int]:
    """(seconds, NFE forward, NFE backward) of one forward and backward pass with `regularizer` (None: none)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with track_stats() as stats:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            if regularizer is None:
                loss = F.cross_entropy(model(x).float(), y)
            else:
                with collect(regularizer) as collection:
                    loss = F.cross_entropy(model(x).float(), y)
                    loss = loss + collection.penalty
        loss.backward()
    return time.perf_counter() - start, stats.nfe_forward, stats.nfe_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_rnode.md"), help="'' to print only")
    args = parser.parse_args()

    weights = ROOT / "results" / "checkpoints" / "table1-odenet-fast-seed0.pt"
    if not weights.exists():
        sys.exit(f"bench_rnode: {weights} is missing; train it with "
                 "`noderun train model=odenet profile=fast precision=bf16-mixed seed=0`")
    spec = SolverSpec(method="dopri5", rtol=1e-3, atol=1e-3, options={"max_num_steps": 10_000}, adjoint=True)
    model = build_odenet(solver=spec)
    model.load_state_dict(torch.load(weights, weights_only=False)["state_dict"])
    device = torch.device("cpu")
    autocast_dtype = torch.bfloat16 if bf16_supported(device) else None
    data = load_mnist(ROOT / "data")
    x, y = to_float(data.train_images[: args.batch_size]), data.train_labels[: args.batch_size]

    times = {name: [] for name, _ in VARIANTS}
    nfe = {}
    for name, regularizer in VARIANTS:  # warm-up
        iteration(model, x, y, regularizer, autocast_dtype)
    for _ in range(args.rounds):
        for name, regularizer in VARIANTS:
            seconds, forward, backward = iteration(model, x, y, regularizer, autocast_dtype)
            times[name].append(seconds)
            nfe[name] = (forward, backward)
    base = statistics.median(times["none"])
    rows = [[name, f"{statistics.median(times[name]):.3f}", f"{statistics.median(times[name]) / base:.2f}",
             f"{nfe[name][0]} / {nfe[name][1]}"] for name, _ in VARIANTS]
    table = tabulate(rows, ["regularizer", "s / iteration (median)", "÷ none", "NFE fwd / bwd"], tablefmt="github")
    header = (f"# RNODE's cost per training iteration at equal NFE (`benchmarks/bench_rnode.py`)\n\n"
              f"Fast ODE-Net, seed-0 weights, batch {args.batch_size}, "
              f"{'bf16-mixed' if autocast_dtype else 'float32'}, {args.rounds} interleaved rounds; "
              f"{device_name(device)}, torch {torch.__version__}, Python {platform.python_version()}, "
              f"commit {git_commit()}.\n\n")
    text = header + table + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
