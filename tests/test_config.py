"""Every config option composes, and typed schemas reject typos before any work."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from noderun.config import CONF_DIR, TASK_SCHEMAS
from noderun.errors import ConfigError
from noderun.profiling import resolve_device
from noderun.runner import validate

GROUPS = ("model", "solver", "regularizer", "logger", "dataset", "profile", "experiment")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def _schema_owner(group: str, option: str) -> str | None:
    """The task whose `schemas` type conf/<group>/<option>.yaml; None for the root config's schemas."""
    defaults = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()).get("defaults", [])
    for entry in defaults:
        if isinstance(entry, str) and entry.startswith(f"/schema/{group}/"):
            name = entry.split("/")[-1].split("@")[0]
            for task, schema_group, schema_name, _ in TASK_SCHEMAS:
                if (schema_group, schema_name) == (group, name):
                    return task
    return None


def _experiment_for(group: str, option: str, task: str) -> str:
    """An experiment of `task`, preferring one that selects this option itself."""
    candidates = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        if spec.get("task") != task:
            continue
        chosen = {k: v for entry in spec.get("defaults", []) if isinstance(entry, dict) for k, v in entry.items()}
        candidates.append((chosen.get(f"override /{group}") != option, path.stem))
    assert candidates, f"conf/{group}/{option}.yaml belongs to task {task!r}, but no experiment sets task: {task}"
    return min(candidates)[1]


def _overrides(group: str, option: str) -> list[str]:
    """Options typed by a task's own schema compose with an experiment of that task (the only way
    they are meant to run: e.g. model=latent_ode with experiment=latent_ode, not with MNIST)."""
    owner = _schema_owner(group, option) if group in ("model", "dataset") else None
    if group in ("solver", "regularizer"):  # the default model (the MLP) has no ODE block: it refuses both
        return ["model=odenet", f"{group}={option}"]
    if owner is None:
        return [f"{group}={option}"]
    return [f"experiment={_experiment_for(group, option, owner)}", f"{group}={option}"]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(compose_config, group, option):
    cfg = compose_config(_overrides(group, option))
    if group != "experiment":
        assert cfg[group] is not None
    validate(cfg)


def test_defaults(compose_config):
    cfg = compose_config()
    assert (cfg.model.name, cfg.solver.method, cfg.dataset.name) == ("mlp", "dopri5", "mnist")
    assert cfg.solver.rtol == 1e-3 and cfg.results_dir == "results" and cfg.data_dir == "data"


def test_mistyped_key_fails_at_composition(compose_config):
    with pytest.raises(ConfigCompositionException, match="rtoll"):
        compose_config(["solver.rtoll=1e-3"])


def test_unknown_option_lists_valid_ones(compose_config):
    with pytest.raises(ConfigCompositionException, match="resnett"):
        compose_config(["model=resnett"])


def test_wrong_type_fails_at_composition(compose_config):
    with pytest.raises(ConfigCompositionException):
        compose_config(["profile.epochs=many"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("profile.lr=-0.1", "profile.lr"),
        ("profile.lr=0", "profile.lr"),
        ("profile.epochs=0", "profile.epochs"),
        ("profile.batch_size=0", "profile.batch_size"),
        ("solver.rtol=0", "solver.rtol"),
        ("solver.method=dopri6", "valid methods"),
        ("device=tpu", "device"),
    ],
)
def test_invalid_values_are_rejected_with_the_accepted_range(compose_config, override, message):
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
