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

Then what the regularised training bought, on the trained weights of both (make rnode's
`table1_rnode` runs beside Table 1's, every seed that has both): the forward NFE of one solve of
256 test images in float32 at tolerances 1e-3 to 1e-6, and at the training tolerance 1e-3 with the
first step set (`first_step`) instead of chosen by the usual heuristic (Hairer, Norsett, Wanner),
which shows how much of the NFE the starting step sets rather than the dynamics.
"""

from __future__ import annotations

import argparse
import functools
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

# Checkpoints of make rnode's runs (results/checkpoints): Table 1's fast ODE-Net and the same with kinetic 1e-4.
PLAIN_WEIGHTS = "table1-odenet-fast-seed{seed}.pt"
RNODE_WEIGHTS = "table1_rnode-odenet-fast-seed{seed}_rnode_k0.0001_j0_rademacher.pt"
TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)
FIRST_STEPS = (None, 0.25, 0.5, 1.0)
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


@functools.lru_cache(maxsize=None)
def saved_weights(path: Path) -> dict:
    """The state_dict of a checkpoint, read once however many solver settings it is solved with."""
    return torch.load(path, weights_only=False)["state_dict"]


def forward_nfe(weights: Path, images: torch.Tensor, tolerance: float, first_step: float | None) -> int:
    """Forward NFE of one no-grad float32 solve of `images` with the ODE-Net weights in `weights`."""
    options = {"max_num_steps": 10_000} | ({"first_step": first_step} if first_step else {})
    model = build_odenet(solver=SolverSpec(method="dopri5", rtol=tolerance, atol=tolerance, options=options))
    model.load_state_dict(saved_weights(weights))
    model.eval()
    with torch.no_grad(), track_stats() as stats:
        model(images)
    return stats.nfe_forward


def trained_nfe_tables(images: torch.Tensor) -> str:
    """Markdown: forward NFE of the unregularised and the RNODE weights against tolerance and first step."""
    folder = ROOT / "results" / "checkpoints"
    seeds = [seed for seed in range(10) if (folder / PLAIN_WEIGHTS.format(seed=seed)).exists()
             and (folder / RNODE_WEIGHTS.format(seed=seed)).exists()]
    if not seeds:
        return (f"\nNo seed has both {PLAIN_WEIGHTS} and {RNODE_WEIGHTS} in results/checkpoints "
                "(`make rnode` trains them): the trained-weights tables are left out.\n")

    def mean_nfe(name: str, tolerance: float, first_step: float | None) -> float:
        return statistics.mean(forward_nfe(folder / name.format(seed=seed), images, tolerance, first_step)
                               for seed in seeds)

    def rows(settings):
        for tolerance, first_step in settings:
            plain, rnode = mean_nfe(PLAIN_WEIGHTS, tolerance, first_step), mean_nfe(RNODE_WEIGHTS, tolerance, first_step)
            yield [f"{tolerance:g}", "heuristic" if first_step is None else f"{first_step:g}",
                   f"{plain:.1f}", f"{rnode:.1f}", f"{rnode / plain:.2f}"]

    header = ["rtol = atol", "first step", "NFE fwd, none", "NFE fwd, kinetic 1e-4", "÷ none"]
    by_tolerance = tabulate(list(rows((t, None) for t in TOLERANCES)), header, tablefmt="github")
    by_first_step = tabulate(list(rows((1e-3, f) for f in FIRST_STEPS)), header, tablefmt="github")
    return (f"\n## Forward NFE of the trained weights (seeds {', '.join(map(str, seeds))}, mean)\n\n"
            f"One solve of {len(images)} test images, float32, dopri5; Table 1's fast ODE-Net against the "
            f"same trained with kinetic 1e-4 (`experiment_name=table1_rnode`).\n\n{by_tolerance}\n\n"
            f"At the training tolerance, with the first step set:\n\n{by_first_step}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_rnode.md"), help="'' to print only")
    args = parser.parse_args()

    weights = ROOT / "results" / "checkpoints" / PLAIN_WEIGHTS.format(seed=0)
    if not weights.exists():
        sys.exit(f"bench_rnode: {weights} is missing; train it with "
                 "`noderun train model=odenet profile=fast precision=bf16-mixed seed=0`")
    spec = SolverSpec(method="dopri5", rtol=1e-3, atol=1e-3, options={"max_num_steps": 10_000}, adjoint=True)
    model = build_odenet(solver=spec)
    model.load_state_dict(saved_weights(weights))
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
    text = header + table + "\n" + trained_nfe_tables(to_float(data.test_images[:256]))
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
