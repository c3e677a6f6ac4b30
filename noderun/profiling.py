"""Measurements recorded beside every result: activation memory, time, hardware, versions."""

from __future__ import annotations

import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch


class SavedTensorMeter:
    """Bytes of the tensors autograd saves for backward while the context is open.

    The quantity the paper's O(L) / O(L~) / O(1) memory claim is about. Each distinct
    storage is counted once (a tensor saved by two operations is one allocation), so
    the number is the activation memory held between the forward and the backward pass.
    Storages are told apart by identity, and the meter holds each one until it closes, so
    a storage freed during the pass (a rejected solver step) cannot hand its address to
    another one that would then go uncounted: the count is the same on every device,
    whatever its allocator reuses.

        meter = SavedTensorMeter()
        with meter:
            loss = model(x).sum()
        meter.bytes  # int
    """

    def __init__(self) -> None:
        self.bytes = 0
        self._storages: dict[int, torch.UntypedStorage] = {}  # key -> the storage, held alive
        self._context = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata  # the storage object itself; unique while it is alive, and it is held
        if key not in self._storages:
            self._storages[key] = storage
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> "SavedTensorMeter":
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
        self._storages.clear()

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The commit of the checkout noderun runs from, with '+dirty' if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else must name a usable device."""
    from noderun.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0 ... cuda:{torch.cuda.device_count() - 1}, cuda or auto")
    return device


@contextmanager
def cpu_threads(threads: int | None, device: torch.device):
    """torch's intra-op CPU threads set to `threads` while open (None, or a GPU run: unchanged).

    Models with tiny tensors (the spirals and flow models) run fastest on one thread: with
    more, every small operation pays for waking and synchronising the thread pool, and on a
    busy machine the waiting threads spin (measured here: a planar CNF iteration took 0.017 s
    on one thread, 1.27 s on two while another job used the cores).
    """
    previous = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` does bfloat16 arithmetic natively (CPU: AVX512-BF16 or AMX; CUDA: Ampere or newer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextmanager
def float32_matmuls(device: torch.device):
    """On CUDA, float32 convolutions and matrix products in true float32 while open (PyTorch's default
    runs convolutions in TF32, which moves tight-tolerance NFE and solver errors); bf16-mixed runs its
    reduced-precision products under autocast, unaffected by this. Nothing to do on the CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
