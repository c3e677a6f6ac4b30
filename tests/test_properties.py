"""Property-based tests (hypothesis): config validation and the result-CSV reader on arbitrary input."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from noderun.errors import ConfigError
from noderun.results import COMMON_COLUMNS, _csv_line, append_row, read_results
from noderun.report import render_all
from noderun.tasks.classification import ClassificationTask

TASK_COLUMNS = ClassificationTask.columns
from noderun.runner import validate

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))


@pytest.fixture(scope="module")
def base_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from noderun.config import CONF_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=odenet", "profile=smoke"])
    GlobalHydra.instance().clear()
    return cfg


def with_value(cfg, key: str, value):
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, key, value, merge=False)
    return changed


def valid(key: str, value) -> bool:
    """What each key accepts (the specification the checks implement)."""
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return {
        "profile.lr": finite and value > 0,
        "profile.momentum": finite and 0 <= value < 1,
        "profile.weight_decay": finite and value >= 0,
        "solver.rtol": finite and value > 0,
        "solver.atol": finite and value > 0,
        "profile.epochs": value >= 1,
        "profile.batch_size": 1 <= value <= 60_000,  # MNIST's training images
        "solver.max_num_steps": value >= 1,
    }[key]


@SETTINGS
@given(key=st.sampled_from(["profile.lr", "profile.momentum", "profile.weight_decay", "solver.rtol", "solver.atol"]),
       value=numbers)
def test_float_options_are_accepted_exactly_when_valid(base_config, key, value):
    cfg = with_value(base_config, key, float(value))
    if valid(key, float(value)):
        validate(cfg)
    else:
        with pytest.raises(ConfigError) as caught:
            validate(cfg)
        message = str(caught.value)
        assert key in message and "\n" not in message


@SETTINGS
@given(key=st.sampled_from(["profile.epochs", "profile.batch_size", "solver.max_num_steps"]),
       value=st.integers(-10**9, 10**9))
def test_integer_options_are_accepted_exactly_when_valid(base_config, key, value):
    cfg = with_value(base_config, key, value)
    if key == "profile.batch_size":  # also bounded by the training subset
        cfg = with_value(cfg, "profile.train_size", None)
    if valid(key, value):
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(cfg)


HEADER = COMMON_COLUMNS + list(TASK_COLUMNS)
cell_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@SETTINGS
@given(good=st.lists(st.fixed_dictionaries({"run_id": st.uuids().map(str), "seed": st.integers(0, 9),
                                             "test_error": st.floats(0, 100)}), max_size=4),
       junk=st.lists(st.lists(cell_text, max_size=len(HEADER) + 2), max_size=6),
       raw=st.text(max_size=200))
def test_the_reader_keeps_complete_rows_and_never_crashes(tmp_path_factory, good, junk, raw):
    folder = tmp_path_factory.mktemp("results")
    path = folder / "table1.csv"
    for row in good:
        append_row(path, {"experiment": "table1", "task": "classification", "status": "ok", "model": "odenet",
                          "profile": "quick", **row}, HEADER)
    with open(path, "a", newline="") as handle:
        if not good:
            handle.write(_csv_line(HEADER))
        for record in junk:
            handle.write(_csv_line(record))
        handle.write(raw.replace("\x00", ""))
    (folder / "foreign.csv").write_text(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = read_results(folder)
        render_all(frame)
    ours = frame[frame["run_id"].isin([row["run_id"] for row in good])]
    assert len(ours) == len(good)  # every complete row survives whatever follows it
    assert set(frame.columns) >= set(COMMON_COLUMNS)
