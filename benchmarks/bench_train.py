"""Training-iteration benchmark: the ODE-Net as noderun trains it against the reference implementation.

Run:  python benchmarks/bench_train.py [--repeats 5] [--levers] [--compile] [--train-iters N] [--threads N]
                                      [--device cpu|cuda] [--out results/bench_train.md]

Everything runs in one process, interleaved (one iteration of each variant per round),
median over the rounds after one warm-up iteration each.

1. One ODE-Net training iteration: a batch of 128 MNIST training images (random pixels when
   data/ holds no MNIST: the cost per evaluation does not depend on them, the NFE do),
   forward, cross-entropy, backward, SGD step, with every variant built from the Hydra
   config (`noderun train model=odenet ...`):
   - ours: the defaults of `model=odenet`;
   - ours with `precision=bf16-mixed` (where the device has native bfloat16): the convolutions in
     bfloat16 under autocast, the ODE state, solver and adjoint in float32, as training runs it;
   - reference: the network as published: `model.time_channel=concat model.channels_last=false
     model.conv_impl=torch solver.backend=torchdiffeq`, dopri5 at rtol = atol = 1e-3,
     adjoint, torchdiffeq's default adjoint norm;
   - with --levers, the defaults with one setting changed at a time (adjoint seminorm,
     tsit5/dopri5, time channel, memory format, convolution implementation, backend, and
     the native adjoint's backward first step, SolverSpec.reuse_forward_step) and,
     with --compile, the defaults with the dynamics under torch.compile (compile time
     reported apart).
   Before every iteration each variant is reset to the same weights (and fresh momentum), so
   all rounds repeat the same computation: freshly initialised weights (seed 0) and, if
   results/checkpoints/table1-odenet-quick-seed0.pt exists, the trained quick ODE-Net's.
   Reported: seconds per iteration, forward and backward NFE (noderun.ode.track_stats, which
   both backends report to), activation memory (noderun.profiling.SavedTensorMeter), and
   reference time / variant time.
2. With --train-iters N: ours and the reference trained side by side from the same fresh
   weights on the same N batches (no augmentation, SGD lr 0.05, momentum 0.9), one iteration
   of each in turn: total and median seconds, mean NFE over the run (they fall as the net
   trains), the loss at the end.
3. Solver only: the same dynamics module (ConvODEFunc, exact time channel, NCHW, torch
   convolutions) from the same state h(0) (the downsampling's output) under
   noderun.ode.odeint_adjoint and torchdiffeq.odeint_adjoint, dopri5 at rtol = atol = 1e-3,
   loss <h(1), g> with g the training loss's gradient at h(1) (so the adjoint has its
   training scale), with identical error norms (torchdiffeq's default mixed norm, and its
   seminorm, passed to both), then each library's default.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from noderun.config import CONF_DIR, register_configs  # noqa: E402
from noderun.models import build_model, ode_blocks  # noqa: E402
from noderun.models.solver import SolverSpec  # noqa: E402
from noderun.models.blocks import classifier_head, downsampling  # noqa: E402
from noderun.models.odenet import ConvODEFunc  # noqa: E402
from noderun.ode import odeint_adjoint as native_odeint_adjoint  # noqa: E402
from noderun.ode import track_stats  # noqa: E402
from noderun.profiling import SavedTensorMeter, bf16_supported, device_name, git_commit, synchronize  # noqa: E402

CHECKPOINT = ROOT / "results" / "checkpoints" / "table1-odenet-quick-seed0.pt"
REFERENCE = ["model.time_channel=concat", "model.channels_last=false", "model.conv_impl=torch", "solver.backend=torchdiffeq",
             "solver=dopri5", "solver.rtol=1e-3", "solver.atol=1e-3", "solver.seminorm=false", "solver.adjoint=true"]
BATCH = 128


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["model=odenet", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def describe(cfg, reuse_step: bool = True) -> str:
    s, m = cfg.solver, cfg.model
    first = "" if s.backend != "native" else (", bwd from fwd step" if reuse_step else ", bwd step selected")
    return (f"{s.backend}, {s.method} {s.rtol:g}, {'seminorm' if s.seminorm else 'default norm'}, "
            f"{m.time_channel} time, {'channels_last' if m.channels_last else 'NCHW'}, {m.conv_impl} conv{first}"
            + (f", {cfg.precision}" if cfg.precision != "32" else ""))


@dataclass
class Variant:
    name: str
    overrides: list
    compile: bool = False
    reuse_step: bool = True  # SolverSpec.reuse_forward_step: the backward solve starts from the forward's last step
    cfg: object = None
    model: torch.nn.Module = None
    optimizer: torch.optim.Optimizer = None
    times: list = field(default_factory=list)
    nfe: tuple = (0, 0)
    memory_mib: float = 0.0
    first_iter_s: float = 0.0

    def build(self, state_dict, device):
        self.cfg = compose(self.overrides)
        solver = SolverSpec.from_config(self.cfg.solver, default_adjoint=self.cfg.model.adjoint)
        solver = solver.replace(reuse_forward_step=self.reuse_step)
        self.model = build_model(self.cfg.model, solver).to(device)
        self.model.load_state_dict(state_dict)
        if self.compile:
            block = ode_blocks(self.model)[0]
            block.func = torch.compile(block.func)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)


def training_iteration(variant: Variant, state_dict, x, y, meter=None) -> float:
    """Reset to `state_dict`, then one timed forward + backward + SGD step."""
    model, optimizer = variant.model, variant.optimizer
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state_dict[name.replace("_orig_mod.", "")])
    optimizer.state.clear()
    synchronize(x.device)
    start = time.perf_counter()
    mixed = variant.cfg.precision == "bf16-mixed"
    with track_stats() as stats:
        with meter if meter is not None else nullcontext():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed):  # as the classification task
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    synchronize(x.device)
    elapsed = time.perf_counter() - start
    variant.nfe = (stats.nfe_forward, stats.nfe_backward)
    return elapsed


def lever_variants(default_cfg, with_compile: bool) -> list:
    """The defaults with one setting changed at a time: (lever, variant name)."""
    s, m = default_cfg.solver, default_cfg.model
    levers = [
        ("adjoint norm", f"solver.seminorm={str(not s.seminorm).lower()}"),
        ("method", f"solver={'dopri5' if s.method == 'tsit5' else 'tsit5'}"),
        ("time channel", f"model.time_channel={'concat' if m.time_channel == 'exact' else 'exact'}"),
        ("memory format", f"model.channels_last={str(not m.channels_last).lower()}"),
        ("convolution", f"model.conv_impl={'torch' if m.conv_impl == 'nnpack' else 'nnpack'}"),
    ]
    other = "torchdiffeq" if s.backend == "native" else "native"
    # torchdiffeq has no tsit5: the backend lever then also switches to dopri5
    levers.append(("backend", f"solver.backend={other}" + (" solver=dopri5" if s.method == "tsit5" else "")))
    out = [(lever, Variant(f"ours, {override}", override.split())) for lever, override in levers]
    if s.backend == "native" and s.adjoint is not False:
        out.append(("backward first step", Variant("ours, backward step selected afresh", [], reuse_step=False)))
    if with_compile:
        out.append(("torch.compile", Variant("ours, compiled dynamics", [], compile=True)))
    return out


def make_batches(data_dir, count: int, log):
    """`count` batches of 128 MNIST training images (a fixed random choice, no augmentation) with
    their labels, or random pixels and labels when there is no data: (list of (x, y), kind).

    The time per evaluation does not depend on the pixels, but the NFE do (a trained net
    on noise is off its training distribution), so real images are used when present.
    """
    from noderun.data.batching import to_float
    from noderun.data.mnist import load_mnist

    generator = torch.Generator().manual_seed(1)
    try:
        data = load_mnist(data_dir, allow_download=False, log=lambda *_: None)
    except Exception as exc:  # no data here: timing only needs the shape
        log(f"no MNIST under {data_dir} ({type(exc).__name__}): random images")
        return [(torch.rand(BATCH, 1, 28, 28, generator=generator),
                 torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(count)], "random pixels"
    order = torch.randperm(len(data.train_images), generator=generator)[: count * BATCH]
    return [(to_float(data.train_images[index]), data.train_labels[index]) for index in order.split(BATCH)], \
        "MNIST training images"


def bench_run(state_dict, batches, args, log) -> list:
    """ours and the reference trained side by side from the same weights on the same batches."""
    ours, reference = Variant("ours (defaults)", []), Variant("reference", REFERENCE)
    device = batches[0][0].device
    for v in (ours, reference):
        v.build(state_dict, device)
        v.optimizer = torch.optim.SGD(v.model.parameters(), lr=0.05, momentum=0.9)
    records = {v.name: {"time": [], "nfe": [], "loss": []} for v in (ours, reference)}
    for step, (x, y) in enumerate(batches):
        for v in ((ours, reference) if step % 2 == 0 else (reference, ours)):
            synchronize(device)
            start = time.perf_counter()
            with track_stats() as stats:
                loss = F.cross_entropy(v.model(x), y)
                v.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            v.optimizer.step()
            synchronize(device)
            record = records[v.name]
            record["time"].append(time.perf_counter() - start)
            record["nfe"].append((stats.nfe_forward, stats.nfe_backward))
            record["loss"].append(loss.item())
        if (step + 1) % 10 == 0:
            log(f"  [run] {step + 1}/{len(batches)}: " + ", ".join(
                f"{name} {statistics.fmean(r['time'][-10:]):.2f} s, loss {statistics.fmean(r['loss'][-10:]):.3f}"
                for name, r in records.items()))
    ref_total = sum(records["reference"]["time"])
    rows = []
    for v in (ours, reference):
        r = records[v.name]
        tail = max(1, len(r["loss"]) // 10)
        rows.append([v.name, describe(v.cfg, v.reuse_step), f"{sum(r['time']):.1f}", f"{statistics.median(r['time']):.3f}",
                     f"{statistics.fmean(n[0] for n in r['nfe']):.1f} / {statistics.fmean(n[1] for n in r['nfe']):.1f}",
                     f"{statistics.fmean(r['loss'][-tail:]):.3f}", f"{ref_total / sum(r['time']):.2f}"])
    return rows


def bench_training(state_dict, label, batch, args, log) -> tuple[list, list]:
    x, y = batch
    ours = Variant("ours (defaults)", [])
    reference = Variant("reference", REFERENCE)
    variants = [ours, reference]
    if bf16_supported(x.device):
        variants.append(Variant("ours, precision=bf16-mixed", ["precision=bf16-mixed"]))
    else:
        log(f"  [{label}] no native bfloat16 on {x.device}: precision=bf16-mixed not timed")
    levers = []
    if args.levers:
        levers = lever_variants(compose([]), args.compile)
        variants += [v for _, v in levers]
    for v in variants:
        v.build(state_dict, x.device)
        # warm-up (and compilation); memory measured on a separate iteration, as in training
        v.first_iter_s = training_iteration(v, state_dict, x, y)
        meter = SavedTensorMeter()
        training_iteration(v, state_dict, x, y, meter)
        v.memory_mib = meter.mib
        log(f"  [{label}] warm-up {v.name}: {v.first_iter_s:.2f} s, NFE {v.nfe}")
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            v.times.append(training_iteration(v, state_dict, x, y))
        log(f"  [{label}] round {r + 1}/{args.repeats}: " + ", ".join(f"{v.times[-1]:.2f}" for v in variants))
    ref_t = statistics.median(reference.times)
    rows = []
    for v in variants:
        t = statistics.median(v.times)
        rows.append([label, v.name, describe(v.cfg, v.reuse_step) + (", compiled" if v.compile else ""), f"{t:.3f}",
                     f"{min(v.times):.3f}", f"{v.nfe[0]} / {v.nfe[1]}", f"{v.memory_mib:.2f}", f"{ref_t / t:.2f}"])
    lever_rows = []
    ours_t = statistics.median(ours.times)
    for lever, v in levers:
        t = statistics.median(v.times)
        extra = f" (compile {v.first_iter_s - ours_t:.0f} s)" if v.compile else ""
        lever_rows.append([label, lever, describe(ours.cfg), describe(v.cfg, v.reuse_step) + (", compiled" if v.compile else "")
                           + extra, f"{ours_t:.3f}", f"{t:.3f}", f"{ours.nfe[0]} / {ours.nfe[1]}",
                           f"{v.nfe[0]} / {v.nfe[1]}", f"{t / ours_t:.2f}"])
    return rows, lever_rows


# ------------------------------------------------------------------ solver only


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def bench_solver(state_dict, label, batch, args, log) -> list:
    import torchdiffeq
    from bench_ode import Counted  # the call counter of the solver benchmark, in this folder

    stem, head = downsampling(64), classifier_head(64)
    stem.load_state_dict({k[2:]: v for k, v in state_dict.items() if k.startswith("0.")})
    head.load_state_dict({k[2:]: v for k, v in state_dict.items() if k.startswith("2.")})
    func = ConvODEFunc(64)
    func.load_state_dict({k[len("1.func."):]: v for k, v in state_dict.items() if k.startswith("1.func.")})
    x, labels = batch
    stem, head, func = stem.to(x.device), head.to(x.device), func.to(x.device)
    t = torch.tensor([0.0, 1.0], device=x.device)
    with torch.no_grad():
        h0 = stem(x)
        h1 = native_odeint_adjoint(func, h0, t, method="dopri5", rtol=1e-3, atol=1e-3)[-1]
    # The training loss's gradient at h(1), so the adjoint has the scale it has in training.
    h1.requires_grad_(True)
    (weight,) = torch.autograd.grad(F.cross_entropy(head(h1), labels), h1)
    params = tuple(func.parameters())
    n, sizes = h0.numel(), [p.numel() for p in params]
    kw = dict(method="dopri5", rtol=1e-3, atol=1e-3)

    def native_mixed(s):  # torchdiffeq's default adjoint norm on our flat [y, a, g] state
        parts = [s[:n], s[n : 2 * n], *s[2 * n :].split(sizes)]
        return max(_rms(p).item() for p in parts)

    def native_semi(s):  # torchdiffeq's seminorm on our flat state
        return max(_rms(s[:n]).item(), _rms(s[n : 2 * n]).item())

    norms = [
        ("identical: torchdiffeq's default (max of per-tensor RMS)", {"norm": native_mixed}, None),
        ("identical: seminorm (max of RMS of y and a)", {"norm": native_semi}, {"norm": "seminorm"}),
        ("each library's default (ours: RMS over [y, a, g])", None, None),
    ]

    rows = []
    for name, ours_norm, theirs_norm in norms:
        def ours():
            func.zero_grad()
            with track_stats() as stats:
                y1 = native_odeint_adjoint(func, h0, t, **kw, adjoint_options=ours_norm)[-1]
                (y1 * weight).sum().backward()
            return stats.nfe_forward, stats.nfe_backward

        def theirs():
            func.zero_grad()
            counter = Counted(func)
            y1 = torchdiffeq.odeint_adjoint(counter, h0, t, **kw, adjoint_options=theirs_norm, adjoint_params=params)[-1]
            counter.in_backward = True
            (y1 * weight).sum().backward()
            return counter.forward_calls, counter.backward_calls

        nfe = {"ours": ours(), "theirs": theirs()}
        times = {"ours": [], "theirs": []}
        for r in range(args.repeats):
            for key, fn in (("ours", ours), ("theirs", theirs)) if r % 2 == 0 else (("theirs", theirs), ("ours", ours)):
                synchronize(x.device)
                start = time.perf_counter()
                fn()
                synchronize(x.device)
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        log(f"  [{label}] solver only, {name}: {med['ours']:.3f} / {med['theirs']:.3f} s")
        rows.append([label, name, f"{nfe['ours'][0]} / {nfe['theirs'][0]}", f"{nfe['ours'][1]} / {nfe['theirs'][1]}",
                     f"{med['ours']:.3f} / {med['theirs']:.3f}", f"{med['theirs'] / med['ours']:.2f}"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median)")
    parser.add_argument("--levers", action="store_true", help="also time the defaults with one setting changed")
    parser.add_argument("--compile", action="store_true", help="with --levers: also torch.compile the dynamics")
    parser.add_argument("--no-solver", action="store_true", help="skip the solver-only comparison")
    parser.add_argument("--weights", choices=["fresh", "trained", "both"], default="both")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="MNIST for the batch (random pixels without)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--train-iters", type=int, default=0,
                        help="also train ours and the reference side by side from the fresh weights for N iterations")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is steadier on a loaded machine)")
    parser.add_argument("--out", default="results/bench_train.md", help="markdown output ('' to print only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    weight_sets = []
    if args.weights in ("fresh", "both"):
        fresh = build_model(compose([]).model, SolverSpec())
        weight_sets.append(("fresh (seed 0)", {k: v.clone() for k, v in fresh.state_dict().items()}))
    if args.weights in ("trained", "both"):
        if CHECKPOINT.is_file():
            payload = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
            weight_sets.append(("trained (quick, seed 0)", payload["state_dict"]))
        else:
            log(f"no {CHECKPOINT.relative_to(ROOT)}: trained weights skipped")

    device = torch.device(args.device)
    batches, batch_kind = make_batches(args.data_dir, max(1, args.train_iters), log)
    batches = [(bx.to(device), by.to(device)) for bx, by in batches]
    x, y = batches[0]
    train_rows, lever_rows, solver_rows, run_rows = [], [], [], []
    for label, state_dict in weight_sets:
        rows, levers = bench_training(state_dict, label, (x, y), args, log)
        train_rows += rows
        lever_rows += levers
        if not args.no_solver:
            solver_rows += bench_solver(state_dict, label, (x, y), args, log)
    if args.train_iters and weight_sets and weight_sets[0][0].startswith("fresh"):
        run_rows = bench_run(weight_sets[0][1], batches, args, log)

    header = (f"{device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads, Python "
              f"{platform.python_version()}, commit {git_commit()}; median of {args.repeats} interleaved rounds "
              f"after one warm-up; one batch of {BATCH} {batch_kind}; load average before/after "
              f"{started_load} / {os.getloadavg()[0]:.2f}\n")
    sections = [
        "## One ODE-Net training iteration (forward + backward + SGD step)\n\n"
        + tabulate(train_rows, headers=["weights", "variant", "settings", "median s", "min s", "NFE fwd / bwd",
                                        "memory MiB", "reference / this"], tablefmt="github"),
    ]
    if lever_rows:
        sections.append(
            "## Levers: the defaults with one setting changed (same run)\n\n"
            + tabulate(lever_rows, headers=["weights", "lever", "default", "changed", "default s", "changed s",
                                            "NFE default", "NFE changed", "changed / default"], tablefmt="github"))
    if solver_rows:
        sections.append(
            "## Solver only: same dynamics, noderun.ode vs torchdiffeq odeint_adjoint (dopri5, 1e-3)\n\n"
            + tabulate(solver_rows, headers=["weights", "adjoint error norm", "NFE fwd (ours / torchdiffeq)",
                                             "NFE bwd (ours / torchdiffeq)", "median s (ours / torchdiffeq)",
                                             "torchdiffeq / ours"], tablefmt="github"))
    if run_rows:
        sections.append(
            f"## Training side by side: {args.train_iters} iterations from the fresh weights (SGD lr 0.05, momentum "
            f"0.9, the same batches, interleaved)\n\n"
            + tabulate(run_rows, headers=["variant", "settings", "total s", "median s / iter", "mean NFE fwd / bwd",
                                          "loss (last 10%)", "reference total / this"], tablefmt="github"))
    text = header + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("# ODE-Net training benchmark (`benchmarks/bench_train.py`)\n\n" + text)


started_load = f"{os.getloadavg()[0]:.2f}"

if __name__ == "__main__":
    main()
