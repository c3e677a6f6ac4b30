"""Resumable runs: a run's directory, atomic checkpoints, RNG states and Ctrl-C.

Every run of `noderun train` owns one directory,

    <results_dir>/runs/<experiment>/<model>-<profile>-seed<seed>-<key>/

where ``key`` hashes the resolved config (less the keys that cannot change a result:
paths, the progress bar, the checkpoint interval, resume/force) and the type of the device
the run resolves to (a CPU and a CUDA run of one command keep separate checkpoints: their
random generator states do not transfer). Re-running the same command therefore finds the
same directory. It holds:

- ``run.json``: the run id (kept across resumes, so a resumed run writes its result row
  under the id it started with) and the git commit it started from;
- ``checkpoint.pt``: the training state (model, optimiser, scheduler, RNG states,
  position in the epoch, running statistics), replaced atomically (temporary file,
  fsync, rename, fsync of the folder), so a kill at any instant leaves either the
  previous or the new checkpoint, never a torn one;
- ``train.log``: every line the run logged, across resumes;
- ``finished.json``: the result row, once it has been written to the result CSV. A
  rerun of a finished run is skipped (``force=true`` runs it again).

The runner (noderun.runner) writes a checkpoint at the end of every epoch, every
``checkpoint_every_s`` seconds at a step boundary, and when Ctrl-C asks it to stop: it
stops at the next step boundary, saves, and raises :class:`RunInterrupted`. A second
Ctrl-C stops at once.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

CHECKPOINT_VERSION = 2

# Config keys that do not change what a run computes: left out of the run's identity.
NON_IDENTITY_KEYS = ("results_dir", "data_dir", "resume", "force", "checkpoint_every_s", "logger")
NON_IDENTITY_PROFILE_KEYS = ("progress",)
# (section, key, value): an option whose value here computes what runs made before the option existed did
NEUTRAL_DEFAULTS = (("solver", "reuse_forward_step", True), ("solver", "first_step", None), ("dataset", "val_size", 0))


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written."""


class RunInterrupted(Exception):
    """Training stopped on Ctrl-C after saving a checkpoint."""


def run_identity(cfg: DictConfig) -> dict:
    """The resolved config less the keys that cannot change a result, with the resolved device type."""
    from noderun.profiling import resolve_device

    identity = OmegaConf.to_container(cfg, resolve=True)
    identity["device_type"] = resolve_device(cfg.device).type
    if identity.get("regularizer", {}).get("name") == "none":  # its weights are refused with none
        identity.pop("regularizer")
    return drop_non_identity(identity)


def drop_non_identity(config: dict) -> dict:
    """`config` (a plain dict, changed in place) less the keys that cannot change a result and the options
    added after runs were made, at the value that computes what those runs computed, so that finished runs
    keep their key (found again) and interrupted ones resume."""
    for key in NON_IDENTITY_KEYS:
        config.pop(key, None)
    for key in NON_IDENTITY_PROFILE_KEYS:
        config.get("profile", {}).pop(key, None)
    for section, key, value in NEUTRAL_DEFAULTS:
        if config.get(section, {}).get(key, value) == value:
            config.get(section, {}).pop(key, None)
    return config


def run_key(cfg: DictConfig) -> str:
    """12 hex digits identifying what a config computes."""
    text = json.dumps(run_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_dir(cfg: DictConfig) -> Path:
    name = f"{cfg.model.name}-{cfg.profile.name}-seed{cfg.seed}-{run_key(cfg)}"
    return Path(cfg.results_dir) / "runs" / cfg.experiment_name / name


# ----------------------------------------------------------------- atomic files


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write {path}: {error.strerror or error}; the previous version (if any) is intact. "
            "Free disk space or choose another results_dir, then rerun the same command"
        ) from None


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` atomically (see atomic_write_bytes)."""
    import io

    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by save_checkpoint; CheckpointError in one line if it cannot be."""
    try:
        # weights_only: a checkpoint is data (tensors, numbers, lists, dicts), never code.
        # MultiStepLR keeps its milestones in a Counter.
        with torch.serialization.safe_globals([collections.Counter]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, tampered or foreign: all read the same to the user
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({reason}); delete it, or rerun with resume=false to start over"
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was not written by this version of noderun (expected version "
            f"{CHECKPOINT_VERSION}); delete it, or rerun with resume=false to start over"
        )
    return state


# ------------------------------------------------------------------------ RNG


def rng_states(*generators: torch.Generator) -> dict:
    """States of torch's global generators (CPU, every CUDA device) and of `generators`."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
    }


def restore_rng_states(states: dict, *generators: torch.Generator, path: Path | str = "the checkpoint") -> None:
    """Restore what rng_states saved. CUDA states are restored for the devices present (a job
    requeued with fewer GPUs uses the first ones); a generator state saved on another kind of
    device raises CheckpointError in one line."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        for index, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    if len(states["generators"]) != len(generators):
        raise CheckpointError(f"{path} holds {len(states['generators'])} random generators, this run has "
                              f"{len(generators)}; rerun with resume=false to start over")
    for generator, state in zip(generators, states["generators"]):
        try:
            generator.set_state(state)
        except RuntimeError:
            raise CheckpointError(
                f"{path} holds random generator states of another device type than this run's "
                f"({generator.device.type}); run on the device it was saved on, or rerun with resume=false"
            ) from None


# ---------------------------------------------------------------- run directory


class RunDirectory:
    """The files of one run (see the module docstring). `resume=False` starts it over.

    writer=False (ranks other than 0 of a distributed run): reads the checkpoint, writes nothing.
    """

    def __init__(self, cfg: DictConfig, resume: bool = True, writer: bool = True):
        self.writer = writer
        self.path = run_dir(cfg)
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.log_path = self.path / "train.log"
        self.finished_path = self.path / "finished.json"
        self.meta_path = self.path / "run.json"
        self.stop_requested = False
        if not writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in (self.checkpoint_path, self.finished_path, self.meta_path):
                stale.unlink(missing_ok=True)

    # -- identity kept across resumes
    def meta(self, new_run_id: str, commit: str | None) -> dict:
        """{'run_id', 'git_commit', 'started'} of this run, created on its first start."""
        if self.meta_path.exists():
            try:
                return json.loads(self.meta_path.read_text())
            except (OSError, ValueError):
                raise CheckpointError(
                    f"{self.meta_path} is unreadable; delete it, or rerun with resume=false to start over"
                ) from None
        meta = {"run_id": new_run_id, "git_commit": commit,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self.writer:
            atomic_write_bytes(self.meta_path, json.dumps(meta).encode())
        return meta

    def update_meta(self, **values) -> None:
        """Add keys to run.json (e.g. the MLflow run id a resumed run continues)."""
        if not self.writer:
            return
        meta = json.loads(self.meta_path.read_text())
        meta.update(values)
        atomic_write_bytes(self.meta_path, json.dumps(meta).encode())

    def forget_run_id(self) -> None:
        if self.writer:
            self.meta_path.unlink(missing_ok=True)

    # -- finished runs
    def finished_row(self) -> dict | None:
        if not self.finished_path.exists():
            return None
        try:
            return json.loads(self.finished_path.read_text())
        except (OSError, ValueError):
            return None  # a torn marker: the run is treated as unfinished and its row deduplicated

    def mark_finished(self, row: dict) -> None:
        if self.writer:
            atomic_write_bytes(self.finished_path, json.dumps(row, default=str).encode())

    # -- training state
    def load(self) -> dict | None:
        """The last checkpoint, or None when there is none."""
        return load_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def save(self, state: dict) -> None:
        if self.writer:
            save_checkpoint(self.checkpoint_path, state)

    # -- log
    def tee(self, log):
        """A log function that also appends each line to train.log (other ranks: log nothing)."""
        if not self.writer:
            return lambda *_: None

        def write(line: str) -> None:
            with open(self.log_path, "a") as handle:
                handle.write(line.rstrip("\n") + "\n")
            log(line)

        return write

    # -- Ctrl-C
    @contextmanager
    def stop_on_interrupt(self):
        """While open, the first SIGINT sets `stop_requested` (the task checkpoints and stops at
        the next step); a second one raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
