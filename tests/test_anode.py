"""ANODE (beyond the paper): the ODE-Net with zero channels appended to its ODE state (Dupont et al. 2019)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from noderun.errors import ConfigError
from noderun.models import MODELS, build_model, ode_blocks
from noderun.models.anode import AugmentedODEBlock, build_anode
from noderun.models.blocks import group_norm
from noderun.models.odenet import build_odenet
from noderun.models.solver import SolverSpec
from noderun.profiling import bf16_supported
from noderun.report import figure3 as figure3_report
from noderun.report import table1
from noderun.runner import train, validate

QUIET = lambda *_: None  # noqa: E731
RK4 = SolverSpec(method="rk4", options={"step_size": 0.25})


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Recorder(torch.nn.Module):
    """The dynamics, keeping every state they are called with."""

    def __init__(self, func):
        super().__init__()
        self.func, self.states = func, []

    def forward(self, t, h):
        self.states.append(h.detach().clone())
        return self.func(t, h)


# ------------------------------------------------------------------------ the model


def test_parameters_grow_only_by_the_wider_dynamics():
    assert count(build_anode()) == 220_366 and count(build_odenet()) == 208_266
    c, a = 64, 5
    # two time-aware 3x3 convs (C+A+1 -> C+A, with bias) and three GroupNorms, on C+A instead of C channels
    dynamics = lambda n: 2 * (n * (n + 1) * 9 + n) + 3 * 2 * n  # noqa: E731
    assert count(build_anode()) - count(build_odenet()) == dynamics(c + a) - dynamics(c)
    assert MODELS["anode"].has_ode_block


def test_forward_shapes_and_the_block_returns_the_kept_channels():
    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=3, solver=RK4)
    x = torch.rand(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    block = model[1]
    assert isinstance(block, AugmentedODEBlock) and ode_blocks(model) == [block]
    h0 = model[0](x)
    assert h0.shape == (4, 8, 6, 6) and block(h0).shape == (4, 8, 6, 6)
    assert block.func.conv1.weight.shape == (11, 12, 3, 3)  # the dynamics act on C + A channels


def test_the_augmented_channels_start_at_zero():
    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=3, solver=RK4)
    block = model[1]
    block.func = Recorder(block.func)
    h0 = model[0](torch.rand(2, 1, 28, 28))
    block(h0)
    first = block.func.states[0]
    assert first.shape == (2, 11, 6, 6)
    assert torch.equal(first[:, 8:], torch.zeros(2, 3, 6, 6))
    assert torch.equal(first[:, :8], h0.detach())
    assert any(state[:, 8:].abs().max() > 0 for state in block.func.states[1:])  # they do move


def test_the_block_drops_the_augmented_channels_of_the_solved_state():
    """Projection = dropping: h(1)[:, :C] of the solve from [h(0), 0], nothing mixed back in."""
    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=3, solver=RK4).double()
    block = model[1]
    h0 = torch.rand(2, 8, 6, 6, dtype=torch.float64)
    state = RK4.solve(block.func, torch.cat([h0, torch.zeros(2, 3, 6, 6, dtype=torch.float64)], 1),
                      torch.tensor([0.0, 1.0], dtype=torch.float64))[-1]
    assert torch.allclose(block(h0), state[:, :8], rtol=0, atol=1e-12)
    # the head sees only the kept channels: the final values of the augmented ones do not reach the output
    head = model[2]
    assert torch.allclose(head(block(h0)), head(state[:, :8]), rtol=0, atol=1e-12)


def test_with_no_augmented_channels_it_is_the_odenet():
    torch.manual_seed(0)
    odenet = build_odenet(channels=8, solver=RK4)
    anode = build_anode(channels=8, augment_channels=0, solver=RK4)
    assert list(anode.state_dict()) == list(odenet.state_dict())
    anode.load_state_dict(odenet.state_dict())
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(anode(x), odenet(x))


def test_gradients_reach_every_parameter_through_the_adjoint():
    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=2, solver=SolverSpec(rtol=1e-2, atol=1e-2))
    F.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.randint(0, 10, (4,))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_group_norm_takes_the_most_groups_that_divide_the_channels():
    assert group_norm(64).num_groups == 32 and group_norm(8).num_groups == 8 and group_norm(128).num_groups == 32
    assert group_norm(69).num_groups == 23 and group_norm(11).num_groups == 11 and group_norm(70).num_groups == 14


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_bf16_mixed_keeps_the_augmented_state_in_float32(one_thread):
    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=3, solver=RK4)
    block = model[1]
    block.func = Recorder(block.func)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x).float()
    F.cross_entropy(logits, y).backward()
    assert block.func.states and all(s.dtype == torch.float32 and s.shape[1] == 11 for s in block.func.states)
    assert torch.isfinite(logits).all()


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_a_smoke_run_trains_in_bf16_mixed(compose_config, mnist_dir, tmp_path, one_thread):
    cfg = compose_config(["model=anode", "model.channels=8", "model.augment_channels=2", "profile=smoke",
                          "profile.train_size=128", "profile.test_size=64", "precision=bf16-mixed", "device=cpu",
                          f"data_dir={mnist_dir}", f"results_dir={tmp_path}"])
    row = train(cfg, log=QUIET)
    assert row["status"] == "ok" and row["precision"] == "bf16-mixed" and row["model"] == "anode"
    assert row["params"] == count(build_anode(channels=8, augment_channels=2)) and row["nfe_backward"] > 0


# ---------------------------------------------------------------------- the configs


def test_model_anode_composes_and_validates(compose_config):
    cfg = compose_config(["model=anode"])
    assert (cfg.model.name, cfg.model.augment_channels, cfg.model.adjoint) == ("anode", 5, True)
    assert validate(cfg).name == "classification"
    assert count(build_model(cfg.model, SolverSpec())) == 220_366


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=anode", "model.augment_channels=0"], "model.augment_channels"),
        (["model=anode", "model.augment_channels=-1"], "model.augment_channels"),
        (["model=odenet", "model.augment_channels=3"], "applies to model=anode only"),
        (["model=resnet", "model.augment_channels=3"], "applies to model=anode only"),
    ],
)
def test_invalid_augment_channels_are_rejected(compose_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides))


def test_the_depth_experiment_sweeps_the_anode(compose_config):
    import yaml

    from noderun.config import CONF_DIR

    swept = yaml.safe_load((CONF_DIR / "experiment" / "depth_ode.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert swept["model"].split(",") == ["rknet", "odenet", "anode"]
    cfg = compose_config(["experiment=depth_ode", "model=anode", "solver.rtol=1e-1"])
    assert cfg.experiment_name == "depth" and cfg.solver.atol == 1e-1
    validate(cfg)


# --------------------------------------------------------------------------- figure3


def test_figure3_sweeps_the_trained_anode(compose_config, tmp_path, mnist_dir, one_thread):
    from noderun.tasks.classification import final_weights_path

    torch.manual_seed(0)
    model = build_anode(channels=8, augment_channels=2)
    path = final_weights_path(tmp_path, "table1", "anode", "smoke", 0)
    path.parent.mkdir(parents=True)
    config = {"model": {"name": "anode", "hidden": 300, "channels": 8, "n_blocks": 6, "adjoint": True,
                        "augment_channels": 2}}
    torch.save({"state_dict": model.state_dict(), "config": config, "history": {"epoch": [1]}}, path)
    base = ["experiment=figure3", "profile=smoke", "device=cpu", f"results_dir={tmp_path}", f"data_dir={mnist_dir}",
            "dataset.test_size.smoke=8", "dataset.batch_size=4", "dataset.reference_rtol=1e-7",
            "dataset.reference_atol=1e-7", "solver.rtol=1e-2"]
    row = train(compose_config([*base, "model=anode"]), log=QUIET)
    assert row["model"] == "anode" and row["nfe_forward"] > 0 and row["nfe_backward"] > 0
    assert 0 < row["ode_error"] < 0.1 and row["params"] == count(model)
    with pytest.raises(ConfigError, match="noderun train model=odenet profile=smoke"):
        train(compose_config([*base, "model=odenet"]), log=QUIET)  # no ODE-Net checkpoint there
    from noderun.results import read_results

    sections = figure3_report.render(read_results(tmp_path), "smoke")
    assert [title for title, _ in sections] == [
        "Figure 3 (a)-(c): tolerance sweep of the trained ANODE (beyond the paper), full norm"]
    assert [p.name for p in figure3_report.figures(tmp_path)] == ["figure3abc_anode_smoke.png"]


def test_figure3_refuses_other_models(compose_config):
    with pytest.raises(ConfigError, match=r"the figure3 task takes: \['odenet', 'anode'\]"):
        validate(compose_config(["experiment=figure3", "model=rknet"]))


# ---------------------------------------------------------------------------- tables


def _row(model, error, seed=0, experiment="table1", profile="quick", **extra):
    return {"experiment": experiment, "task": "classification", "status": "ok", "model": model, "profile": profile,
            "seed": seed, "test_error": error, "params": {"anode": 220366}.get(model, 208266), "memory_mib": 1.0,
            "time_per_iter_s": 0.1, "nfe_forward": 26.0, "nfe_backward": 20.0, "train_time_s": 60.0,
            "precision": "32", "timestamp": f"2026-01-0{seed + 1}T00:00:00+00:00", **extra}


def _body(text: str) -> list[list[str]]:
    """The table's rows as lists of cell texts (the column widths depend on the longest cell)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| Model")]


def test_table1_shows_the_anode_row_after_the_papers_four():
    without = pd.DataFrame([_row("odenet", 1.0), _row("resnet", 0.9)])
    plain = table1.render_table1(without, "quick")
    assert "ANODE" not in plain and len(_body(plain)) == 4
    frame = pd.DataFrame([_row("odenet", 1.0), _row("resnet", 0.9), _row("anode", 0.8), _row("anode", 0.6, seed=1)])
    text = table1.render_table1(frame, "quick")
    body = _body(text)
    assert len(body) == 5 and _body(plain) == body[:4]  # the paper's rows are unchanged
    cells = body[4]
    assert cells[0] == "ANODE (beyond the paper)" and cells[1] == "0.70 ± 0.14"
    assert cells[2] == "-" and cells[3] == "0.220" and cells[4] == "-" and cells[6] == "-" and cells[9] == "-"
    assert cells[-1] == "2"
    failed = pd.DataFrame([_row("anode", 0.8) | {"status": "failed: diverged"}])
    assert _body(table1.render_table1(failed, "quick"))[4][:2] == ["ANODE (beyond the paper)", "failed"]


def test_depth_table_and_figure_take_anode_rows(tmp_path):
    rows = [_row(model, 10.0, experiment="depth", rtol=rtol, atol=rtol, n_blocks=None,
                 nfe_forward=nfe, memory_mib=2.0 if model != "rknet" else 0.3 * nfe)
            | {"timestamp": f"2026-01-01T00:00:0{i}+00:00"}
            for i, (model, rtol, nfe) in enumerate([(m, r, n) for m in ("rknet", "odenet", "anode")
                                                    for r, n in ((1e-1, 14.0), (1e-2, 26.0))])]
    text = table1.render_depth(pd.DataFrame(rows), "quick")
    assert text.count("ANODE (beyond the paper)") == 3  # two settings and the fit
    path = table1.plot_depth(pd.DataFrame(rows), tmp_path / "depth.png")
    assert path.is_file() and path.stat().st_size > 1000
