"""The runner's shared duties that no single task shows: import structure, bugs versus failures,
solver options reaching every model, resuming across devices, the default profile."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import noderun
from noderun.checkpoint import CheckpointError, restore_rng_states, run_key
from noderun.errors import ConfigError
from noderun.profiling import resolve_device
from noderun.runner import train

PACKAGE = Path(noderun.__file__).parent
QUIET = lambda *_: None  # noqa: E731


def _imports() -> dict[str, set[str]]:
    """noderun module -> the noderun modules it imports anywhere (module level or inside functions)."""
    modules = {".".join(("noderun", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x import y
                base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = f"{base}.{node.module}" if node.module else base
                edges |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("noderun"):
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("noderun")}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_nothing_imports_in_a_circle():
    graph, state, cycles = _imports(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_reporting_never_imports_training_and_results_and_tasks_never_import_plotting():
    code = textwrap.dedent("""
        import sys
        import noderun.results, noderun.tasks
        first = sorted(m for m in sys.modules if m.startswith(("matplotlib", "noderun.report", "noderun.models")))
        import noderun.report
        second = sorted(m for m in sys.modules if m.startswith(("matplotlib", "noderun.tasks.", "noderun.runner",
                                                                "noderun.models")))
        print(first, second)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_a_bug_keeps_its_traceback_and_writes_no_row(mnist_dir, tmp_path):
    script = textwrap.dedent("""
        import sys
        from noderun.tasks.classification import ClassificationTask
        def broken(self, batch):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x784 and 100x10)")
        ClassificationTask.loss = broken
        from noderun.cli import main
        main(["train", *sys.argv[1:]])
    """)
    args = ["model=mlp", "profile=smoke", f"data_dir={mnist_dir}", f"results_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "mat1 and mat2 shapes" in result.stderr
    assert "noderun: error:" not in result.stderr
    assert not (tmp_path / "table1.csv").exists()


def test_seminorm_reaches_the_cnf_solve_and_its_row(compose_config, tmp_path, monkeypatch):
    import noderun.ode

    seen = []
    real = noderun.ode.odeint_adjoint

    def spy(*args, **kwargs):
        seen.append(kwargs.get("adjoint_options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(noderun.ode, "odeint_adjoint", spy)
    cfg = compose_config(["experiment=mle_cnf", "dataset=two_moons", "profile=smoke", "model.width=4",
                          "model.eval_samples=100", "solver.seminorm=true", f"results_dir={tmp_path}"])
    row = train(cfg, log=QUIET)
    # the backward solve keeps the forward options (max_num_steps) beside the norm
    assert seen and all(options == {"max_num_steps": 10_000, "norm": "seminorm"} for options in seen)
    assert '"seminorm": true' in row["config"]


def test_seminorm_reaches_the_latent_ode_under_the_adjoint_and_is_refused_without(compose_config, tmp_path):
    from noderun.runner import validate
    from noderun.tasks.spirals import solver_spec

    base = ["experiment=latent_ode", "profile=smoke", "solver.seminorm=true", f"results_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="solver.seminorm=true.*set solver.adjoint=true") as info:
        validate(compose_config(base))
    assert "\n" not in str(info.value)
    cfg = compose_config([*base, "solver.adjoint=true"])
    validate(cfg)
    assert solver_spec(cfg).seminorm and solver_spec(cfg).adjoint


def test_a_generator_state_of_another_device_is_refused_in_one_line():
    saved = {"torch": torch.get_rng_state(), "cuda": [], "generators": [torch.zeros(16, dtype=torch.uint8)]}
    with pytest.raises(CheckpointError, match="another device type.*resume=false") as info:
        restore_rng_states(saved, torch.Generator(), path="run/checkpoint.pt")
    assert "\n" not in str(info.value)


def test_cuda_states_are_restored_for_the_devices_present(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append(index))
    saved = {"torch": torch.get_rng_state(), "cuda": ["state0", "state1", "state2"], "generators": []}
    restore_rng_states(saved)  # a job requeued with one GPU instead of three
    assert restored == [0]


def test_the_device_type_is_part_of_the_run_key(compose_config, monkeypatch):
    cfg = compose_config(["model=mlp", "profile=smoke"])
    on_cpu = run_key(cfg)
    monkeypatch.setattr("noderun.profiling.resolve_device", lambda name: torch.device("cuda"))
    assert run_key(cfg) != on_cpu


def test_a_cuda_index_the_machine_lacks_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device='cuda:3' but this machine has 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("overrides, expected", [([], "paper"), (["device=cpu"], "quick"),
                                                 (["device=cuda"], "paper"), (["profile=smoke"], None)])
def test_the_default_profile_follows_the_device_the_run_uses(monkeypatch, overrides, expected):
    from noderun.cli import _default_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = _default_profile(list(overrides))
    assert result == overrides if expected is None else result[-1] == f"profile={expected}"


def test_rank_0_clears_a_stale_run_before_any_rank_reads_it(compose_config, mnist_dir, tmp_path, monkeypatch):
    import noderun.runner as runner

    events = []
    real_directory = runner.RunDirectory

    class Recorded(real_directory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            events.append("run directory ready")

        def finished_row(self):
            events.append("read")
            return super().finished_row()

    monkeypatch.setattr(runner, "RunDirectory", Recorded)
    monkeypatch.setattr(runner.World, "barrier", lambda self: events.append("barrier"))
    train(compose_config(["model=mlp", "profile=smoke", "force=true", f"data_dir={mnist_dir}",
                          f"results_dir={tmp_path}"]), log=QUIET)
    assert events[:3] == ["run directory ready", "barrier", "read"]


def test_a_flow_row_has_memory_and_time_like_every_row(compose_config, tmp_path):
    cfg = compose_config(["experiment=density_nf", "profile=smoke", f"results_dir={tmp_path}"])
    train(cfg, log=QUIET)
    frame = pd.read_csv(tmp_path / "flows_density.csv")
    assert frame["memory_mib"][0] > 0 and frame["time_per_iter_s"][0] > 0


def test_options_added_at_their_neutral_value_leave_the_run_key_as_it_was(compose_config):
    """Finished runs stay found and interrupted ones resume: regularizer=none, solver.reuse_forward_step=true."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose_config(["model=odenet", "profile=smoke"])
    without_group = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(without_group):
        del without_group["regularizer"]
    assert run_key(cfg) == run_key(without_group)
    with open_dict(without_group):
        del without_group.solver["reuse_forward_step"]
    assert run_key(cfg) == run_key(without_group)
    assert run_key(compose_config(["model=odenet", "profile=smoke", "solver.reuse_forward_step=false"])) != run_key(cfg)
    with open_dict(without_group):
        del without_group.solver["first_step"]
    assert run_key(cfg) == run_key(without_group)
    assert run_key(compose_config(["model=odenet", "profile=smoke", "solver.first_step=0.5"])) != run_key(cfg)
    rnode = compose_config(["model=odenet", "profile=smoke", "regularizer=rnode", "regularizer.kinetic=0.01"])
    assert run_key(rnode) != run_key(cfg)
