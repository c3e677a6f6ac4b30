"""Gradient accuracy of the trained ODE-Net: each way of training it against a float64 solve at 1e-8.

    python benchmarks/bench_gradients.py                    # quick and fast weights, 8 batches of 32
    python benchmarks/bench_gradients.py --batches 2 --out ""

For each trained Table 1 ODE-Net found under results/checkpoints (table1-odenet-<profile>-seed0.pt)
and each of `--batches` batches of `--batch-size` MNIST test images, the gradient of the batch's
cross-entropy with respect to every parameter of the network is computed

- exactly enough to serve as the truth: the whole network in float64, dopri5 at rtol = atol = 1e-8,
  backpropagated through the solver (no adjoint error at all);
- as training computes it, dopri5 at the training tolerance (rtol = atol = 1e-3) with the adjoint:
  ours in float32 (the default, the backward solve starting from the forward's last step), ours in
  float32 with the backward step selected afresh (adjoint option reuse_forward_step=False, as
  torchdiffeq does), ours under bf16-mixed (where the CPU has native bfloat16), and the reference
  (torchdiffeq, the time channel concatenated as published).

Reported per weight set and variant: the relative error ||g - g_true|| / ||g_true|| over all
parameters, its mean, median and largest over the batches, and the mean NFE forward / backward.
Accuracy only: nothing here is timed, so a loaded machine changes none of it.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noderun.data.batching import to_float  # noqa: E402
from noderun.data.mnist import load_mnist  # noqa: E402
from noderun.models import ode_blocks  # noqa: E402
from noderun.models.odenet import build_odenet  # noqa: E402
from noderun.models.solver import SolverSpec  # noqa: E402
from noderun.ode import track_stats  # noqa: E402
from noderun.profiling import bf16_supported, device_name, git_commit  # noqa: E402

TRUTH = SolverSpec(method="dopri5", rtol=1e-8, atol=1e-8, options={"max_num_steps": 1_000_000}, adjoint=False)
TRAINING_TOLERANCE = 1e-3


def variants(device: torch.device) -> list:
    """(name, solver spec, time channel, autocast dtype or None) of each way of computing the gradient."""
    ours = SolverSpec(method="dopri5", rtol=TRAINING_TOLERANCE, atol=TRAINING_TOLERANCE,
                      options={"max_num_steps": 10_000}, adjoint=True)
    out = [("ours, float32", ours, "exact", None),
           ("ours, float32, backward step selected afresh", ours.replace(reuse_forward_step=False), "exact", None)]
    if bf16_supported(device):
        out.append(("ours, bf16-mixed", ours, "exact", torch.bfloat16))
    try:
        import torchdiffeq  # noqa: F401

        out.append(("reference (torchdiffeq, concat time channel)", ours.replace(backend="torchdiffeq"), "concat",
                    None))
    except ImportError:
        pass
    return out


def gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype=None):
    """(flat gradient of the mean cross-entropy over every parameter, NFE forward, NFE backward)."""
    model.zero_grad(set_to_none=True)
    with track_stats() as stats:
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model(x).float()
        F.cross_entropy(logits.to(x.dtype), y).backward()
    flat = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
    return flat, stats.nfe_forward, stats.nfe_backward


def with_solver(state_dict: dict, spec: SolverSpec, time_channel: str, dtype: torch.dtype) -> torch.nn.Module:
    model = build_odenet(64, solver=spec, time_channel=time_channel).to(dtype)
    model.load_state_dict(state_dict)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=["quick", "fast"], help="whose table1-odenet checkpoints")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="results/bench_gradients.md", help="markdown output ('' to print only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = load_mnist(args.data_dir, allow_download=False, log=lambda *_: None)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.test_images), generator=generator)[: args.batches * args.batch_size]
    batches = [(to_float(data.test_images[i]), data.test_labels[i]) for i in order.split(args.batch_size)]
    rows, summary = [], []
    for profile in args.profiles:
        path = ROOT / "results" / "checkpoints" / f"table1-odenet-{profile}-seed0.pt"
        if not path.is_file():
            print(f"no {path.relative_to(ROOT)}: `noderun train model=odenet profile={profile}` makes it", file=sys.stderr)
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        truth_model = with_solver(state, TRUTH, "exact", torch.float64)
        errors = {name: [] for name, *_ in variants(device)}
        nfe = {name: [] for name in errors}
        for index, (x, y) in enumerate(batches):
            g_true, _, _ = gradient(truth_model, x.double(), y)
            for name, spec, time_channel, autocast_dtype in variants(device):
                model = with_solver(state, spec, time_channel, torch.float32)
                g, forward, backward = gradient(model, x, y, autocast_dtype)
                errors[name].append(float((g - g_true).norm() / g_true.norm()))
                nfe[name].append((forward, backward))
            print(f"{profile}: batch {index + 1}/{len(batches)} " + ", ".join(
                f"{name.split(',')[0] if name.startswith('ref') else name}: {errors[name][-1]:.4f}" for name in errors),
                file=sys.stderr)
        for name, values in errors.items():
            forward = statistics.fmean(f for f, _ in nfe[name])
            backward = statistics.fmean(b for _, b in nfe[name])
            rows.append([profile, name, f"{statistics.fmean(values):.4f}", f"{statistics.median(values):.4f}",
                         f"{max(values):.4f}", f"{forward:.1f} / {backward:.1f}", str(len(values))])
        reference = [n for n in errors if n.startswith("reference")]
        if reference:
            ref = statistics.fmean(errors[reference[0]])
            summary += [f"- {profile} weights: {name} {statistics.fmean(v):.4f} against the reference's {ref:.4f} "
                        f"({'at or below' if statistics.fmean(v) <= ref else 'above'} it)"
                        for name, v in errors.items() if name != reference[0]]
    table = tabulate(rows, headers=["weights", "gradient", "mean rel. error", "median", "largest", "NFE fwd / bwd",
                                    "batches"], tablefmt="github", disable_numparse=True)
    text = (f"# Gradient accuracy of the trained ODE-Net\n\n`python benchmarks/bench_gradients.py` on "
            f"{device_name(device)}, {platform.machine()}, torch {torch.__version__}, commit {git_commit()}.\n"
            f"Truth: the network in float64, dopri5 at rtol = atol = 1e-8 backpropagated; the others at the "
            f"training tolerance {TRAINING_TOLERANCE:g} with the adjoint. {args.batches} batches of "
            f"{args.batch_size} MNIST test images.\n\n{table}\n\n" + "\n".join(summary) + "\n")
    print(text)
    if args.out:
        out = ROOT / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
