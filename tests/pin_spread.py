"""Measure how far the smoke pins move when what differs between CPUs is perturbed.

    python tests/pin_spread.py                 # every pin, every perturbation (about 4 minutes, 2 cores)
    python tests/pin_spread.py --pins latent_ode mle_cnf --perturbations baseline threads2
    python tests/pin_spread.py --write         # also widen the tolerances in smoke_pins.json to cover it
    python tests/pin_spread.py --repin latent_ode --write   # pin anew what a change of behaviour moved

PyTorch's CPU kernels (MKL for matrix products, oneDNN for convolutions, ATen's vectorised
loops) pick code paths by the CPU they run on, by the number of threads, and by environment
switches; the same smoke run then gives other floats. This script reruns every experiment of
tests/data/smoke_pins.json in a fresh process under each perturbation below, and prints, per
pin and field, the largest deviation from the pinned value (relative for floats, in
percentage points for error rates, mismatching entries for the integer NFE traces).

With --write it widens each tolerance of tests/data/smoke_pins.json to
`max(floor, FACTOR x the largest deviation measured)`, never narrowing one: the file keeps the
widest spread seen on any machine it was run on (its "measured_on" list says which), and the
pinned values themselves stay those of the machine that took them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PINS_PATH = REPO / "tests" / "data" / "smoke_pins.json"

FACTOR = 3.0  # tolerance = FACTOR x the largest deviation measured ...
FLOAT_FLOOR = 1e-4  # ... but at least this relative deviation for floats (rows round to 5-6 digits)
RATE_FLOOR_COUNT = 1  # ... and at least this many images (points) for a rate counted over a few hundred
EXACT = ("params", "iter_nfe_forward", "iter_nfe_backward", "nfe_forward", "nfe_backward")
RATES = ("test_error", "train_error", "test_accuracy")

# name -> (environment variables, torch threads, mkldnn enabled)
PERTURBATIONS = {
    "baseline": ({}, 1, True),
    "threads2": ({}, 2, True),
    "mkldnn_off": ({}, 1, False),
    "aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1, True),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, 1, True),
    "onednn_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, True),
    "onednn_avx512": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, 1, True),
    "mkl_avx2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1, True),
    "mkl_cbwr_compatible": ({"MKL_CBWR": "COMPATIBLE"}, 1, True),
    "all_avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                 1, True),
}

CHILD = r"""
import json, sys
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from noderun.checkpoint import load_checkpoint, run_dir
from noderun.config import CONF_DIR, register_configs
from noderun.runner import train

names, threads, mkldnn, results, data_dir = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.backends.mkldnn.enabled = mkldnn
pins = json.load(open(sys.argv[2]))["pins"]
register_configs()
out = {}
for name in names:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["profile=smoke", "seed=0", "device=cpu",
                      f"results_dir={results}", f"data_dir={data_dir}", *pins[name]["overrides"]])
    torch.set_num_threads(threads)
    row = train(cfg, log=lambda *_: None)
    got = {k: row[k] for k in pins[name]["expected"] if k in row}
    if cfg.task != "figure3":
        loop = load_checkpoint(run_dir(cfg) / "checkpoint.pt")["loop"]
        got["iter_nfe_forward"], got["iter_nfe_backward"] = loop["nfe_forward"], loop["nfe_backward"]
    out[name] = got
print("PINS-JSON " + json.dumps(out))
"""


def run_perturbation(names, perturbation: str, data_dir: Path) -> dict:
    env_vars, threads, mkldnn = PERTURBATIONS[perturbation]
    env = {**os.environ, **env_vars}
    with tempfile.TemporaryDirectory() as results:
        # figure3 reads the ODE-Net that table1_odenet trains: run it first when both are asked for
        ordered = sorted(names, key=lambda n: n != "table1_odenet")
        arg = json.dumps([ordered, threads, mkldnn, results, str(data_dir)])
        proc = subprocess.run([sys.executable, "-c", CHILD, arg, str(PINS_PATH)], env=env, capture_output=True,
                              text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{perturbation}: {proc.stderr.strip().splitlines()[-1]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PINS-JSON "))
    return json.loads(line[len("PINS-JSON "):])


def deviation(key: str, got, pinned):
    """(size, unit) of a deviation: mismatching entries for traces, points for error rates, else relative."""
    if key.startswith("iter_nfe"):
        return sum(a != b for a, b in zip(got, pinned)) + abs(len(got) - len(pinned)), "steps differing"
    if key in EXACT:
        return abs(got - pinned), "absolute"
    if key in RATES:
        return abs(got - pinned), "points"
    return abs(got - pinned) / max(abs(pinned), 1e-12), "relative"


def tolerance(pin: dict, key: str, largest: float):
    """The tolerance that covers `largest` (deviation() units) with the margin of FACTOR."""
    if key in EXACT:
        if largest:
            raise SystemExit(f"{key} moved ({largest}): it is compared exactly, so the pin cannot stay as it is")
        return "exact"
    if key in RATES:
        if key not in pin.get("counted_over", {}):
            raise SystemExit(f"{key} is a rate: give the number of images (or points) it is counted over in the "
                             "pin's counted_over")
        one = 100.0 / pin["counted_over"][key]  # points one image (or point) is worth
        return {"abs": round(max(RATE_FLOOR_COUNT * one, FACTOR * largest), 6)}
    return {"rel": float(f"{max(FLOAT_FLOOR, FACTOR * largest):.2g}")}


def widen(old, new):
    if old == "exact" or new == "exact":
        return "exact"
    (kind, a), = old.items()
    return {kind: max(a, new[kind])}


def write_tolerances(data: dict, measured: dict, machine: str) -> None:
    for name, pin in data["pins"].items():
        if not all(name in measured[p] for p in measured):
            continue
        for key, pinned in pin["expected"].items():
            largest = max(deviation(key, measured[p][name][key], pinned)[0] for p in measured)
            new = tolerance(pin, key, largest)
            old = pin.setdefault("tolerance", {}).get(key)  # widened, never narrowed
            pin["tolerance"][key] = new if old is None else widen(old, new)
    entry = f"{machine}: perturbations {', '.join(measured)}"
    if entry not in data["measured_on"]:
        data["measured_on"].append(entry)
    PINS_PATH.write_text(json.dumps(data, indent=1) + "\n")


def repin(data: dict, names: list, data_dir: Path) -> None:
    """Replace the expected values of `names` by this machine's baseline run, and drop their tolerances
    (the measurement that follows writes new ones)."""
    names = list(names) + (["table1_odenet"] if "figure3" in names and "table1_odenet" not in names else [])
    got = run_perturbation(names, "baseline", data_dir)
    for name in names:
        pin = data["pins"][name]
        pin["expected"] = {key: got[name][key] for key in pin["expected"]}
        pin["pinned_on"] = f"{machine_name()}, one thread"
        pin.pop("tolerance", None)
    PINS_PATH.write_text(json.dumps(data, indent=1) + "\n")


def machine_name() -> str:
    """The CPU model with the instruction-set extensions that pick PyTorch's kernels, and torch's version."""
    import platform

    import torch

    model, flags = platform.processor() or platform.machine(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
    extensions = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                          ("amx_tile", "AMX")) if flag in flags]
    return f"{model} ({platform.machine()}; {', '.join(extensions) or 'no AVX2'}), torch {torch.__version__}"


def main() -> None:
    data = json.loads(PINS_PATH.read_text())
    pins = data["pins"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pins", nargs="*", default=list(pins), choices=list(pins))
    parser.add_argument("--perturbations", nargs="*", default=list(PERTURBATIONS), choices=list(PERTURBATIONS))
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--json", help="also write every measured value to this file")
    parser.add_argument("--repin", nargs="*", default=[], choices=list(pins), metavar="PIN",
                        help="pin these anew: their expected values become this machine's baseline run (for a "
                             "change meant to change behaviour); their tolerances are then measured afresh")
    parser.add_argument("--write", action="store_true",
                        help="widen the tolerances in tests/data/smoke_pins.json to cover what was measured")
    args = parser.parse_args()
    names = list(args.pins)
    if "figure3" in names and "table1_odenet" not in names:
        names.append("table1_odenet")
    if args.repin:
        repin(data, args.repin, Path(args.data_dir))
        pins = data["pins"]
    measured = {}
    for perturbation in args.perturbations:
        measured[perturbation] = run_perturbation(names, perturbation, Path(args.data_dir))
        print(f"ran {perturbation}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1))
    for name in args.pins:
        expected = pins[name]["expected"]
        for key, pinned in expected.items():
            cells = []
            unit = ""
            for perturbation in args.perturbations:
                got = measured[perturbation][name].get(key)
                if got is None:
                    continue
                size, unit = deviation(key, got, pinned)
                cells.append(f"{perturbation}={size:.3g}" if not key.startswith("iter_nfe") else f"{perturbation}={size}")
            print(f"{name:18s} {key:18s} ({unit}): " + " ".join(cells))
    if args.write:
        write_tolerances(data, measured, machine_name())
        print(f"tolerances written to {PINS_PATH}")


if __name__ == "__main__":
    main()
