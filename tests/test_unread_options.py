"""Every option acts or is refused: a key a run would not read is refused in one line, before any work,
when set to another value than its config file's (noderun.config.refuse_unread, Task.unread)."""

from __future__ import annotations

import pytest

from noderun.errors import ConfigError
from noderun.runner import validate

# (overrides, the start of the message, words it must name: the task's own keys or the fix)
REFUSED = [
    # the profile group outside the classification task: the task's own budget keys are named
    (["experiment=latent_ode", "profile.lr=0.5"], "profile.lr=0.5 has no effect on task=spirals",
     ["model.iterations.quick", "model.lr"]),
    (["experiment=rnn_spirals", "profile.ema_decay=0.99"], "profile.ema_decay=0.99 has no effect on task=spirals",
     ["model.iterations.quick", "model.lr"]),
    (["experiment=latent_ode_elbo", "profile.epochs=3"], "profile.epochs=3 has no effect on task=spirals",
     ["model.iterations.quick"]),
    (["experiment=density_cnf", "profile.lr=0.5"], "profile.lr=0.5 has no effect on task=flows",
     ["model.iterations.quick", "model.lr.quick"]),
    (["experiment=mle_nf", "profile.batch_size=64"], "profile.batch_size=64 has no effect on task=flows",
     ["model.batch_size"]),
    (["experiment=crossing", "profile.epochs=2"], "profile.epochs=2 has no effect on task=crossing",
     ["model.iterations.quick", "model.lr.quick"]),
    (["experiment=figure3", "profile.batch_size=64"], "profile.batch_size=64 has no effect on task=figure3",
     ["dataset.test_size.quick", "dataset.batch_size"]),
    # solver options of a model without an ODE
    (["model=mlp", "solver=rk4"], "solver.method='rk4' has no effect on model=mlp", ["no ODE block"]),
    (["model=resnet", "solver.rtol=1e-5"], "solver.rtol=1e-05 has no effect on model=resnet", ["no ODE block"]),
    (["experiment=rnn_spirals", "solver.rtol=1e-5"], "solver.rtol=1e-05 has no effect on model=rnn", ["no ODE"]),
    (["experiment=density_nf", "solver.atol=1e-6"], "solver.atol=1e-06 has no effect on model=planar_nf",
     ["no ODE"]),
    # model keys of another model
    (["model=resnet", "model.hidden=500"], "model.hidden=500 has no effect on model=resnet",
     ["model.channels", "model.n_blocks"]),
    (["model=mlp", "model.channels=32"], "model.channels=32 has no effect on model=mlp", ["model.hidden"]),
    (["model=odenet", "model.n_blocks=2"], "model.n_blocks=2 has no effect on model=odenet", ["model.channels"]),
    (["experiment=density_nf", "model.trace=hutchinson"], "model.trace='hutchinson' has no effect on "
     "model=planar_nf", ["planar CNF"]),
    (["experiment=mle_nf", "model.hidden=64"], "model.hidden=64 has no effect on model=planar_nf", ["planar CNF"]),
    # figure3 rebuilds the trained model from its checkpoint
    (["experiment=figure3", "model.channels=32"], "model.channels=32 has no effect on task=figure3",
     ["checkpoint"]),
    # options that only act together with another one
    (["model=mlp", "dataset.crop_padding=2"], "dataset.crop_padding=2 has no effect with model.augment=false",
     ["model.augment=true"]),
    (["model=odenet", "profile.lr_gamma=0.5"], "profile.lr_gamma=0.5 has no effect with profile.lr_schedule=cosine",
     ["multistep"]),
    (["model=odenet", "profile=fast", "profile.lr_milestones=[2]"], "profile.lr_milestones=[2] has no effect with "
     "profile.lr_schedule=linear", ["multistep"]),
    (["model=odenet", "model.adjoint=false", "solver.adjoint=true"], "model.adjoint=False has no effect while "
     "solver.adjoint=True overrides it", ["drop one"]),
    (["experiment=latent_ode", "model.adjoint=true", "solver.adjoint=false"], "model.adjoint=True has no effect "
     "while solver.adjoint=False overrides it", ["drop one"]),
    (["experiment=crossing", "model=crossing_ode", "dataset.anode_augment_dim=3"], "dataset.anode_augment_dim=3 has "
     "no effect with model=crossing_ode", ["model.augment_dim"]),
    # seminorm changes adaptive step-size control only
    (["model=odenet", "solver=rk4", "solver.seminorm=true"], "solver.seminorm=true changes the error norm of "
     "adaptive step-size control", ["fixed steps", "dopri5"]),
    (["model=odenet", "solver=euler", "solver.seminorm=true"], "solver.seminorm=true changes the error norm of "
     "adaptive step-size control", ["fixed steps"]),
    # reuse_forward_step=false changes the native adjoint's adaptive backward solve only
    (["model=rknet", "solver.reuse_forward_step=false"], "solver.reuse_forward_step=false changes how the native "
     "adjoint's", ["adjoint off", "solver.adjoint=true"]),
    (["model=odenet", "solver=rk4", "solver.step_size=0.25", "solver.reuse_forward_step=false"],
     "solver.reuse_forward_step=false changes", ["fixed steps", "dopri5"]),
    (["model=odenet", "solver.backend=torchdiffeq", "solver.reuse_forward_step=false"],
     "solver.reuse_forward_step=false changes", ["backend=torchdiffeq", "solver.backend=native"]),
    # first_step sets an adaptive method's first step
    (["model=odenet", "solver=rk4", "solver.step_size=0.25", "solver.first_step=0.5"],
     "solver.first_step=0.5 applies to adaptive methods", ["fixed steps", "dopri5"]),
    (["model=odenet", "solver.first_step=-1"], "solver.first_step=-1.0 is invalid", ["null", "> 0"]),
    # scipy_solver: a method of odeint, but without gradients
    (["model=odenet", "solver.method=scipy_solver"], "solver.method='scipy_solver' has no gradients", ["dopri5"]),
]

ACCEPTED = [
    ["model=odenet", "profile=paper", "profile.lr_gamma=0.5"],  # multistep reads it
    ["model=mlp", "model.hidden=500"],
    ["model=resnet", "dataset.crop_padding=2"],
    ["model=odenet", "solver.seminorm=true"],
    ["model=odenet", "solver.reuse_forward_step=false"],
    ["model=odenet", "solver.first_step=0.5"],
    ["model=rknet", "solver.first_step=0.5", "solver.backend=torchdiffeq"],
    ["model=odenet", "solver=rk4", "solver.step_size=0.25"],
    ["experiment=crossing", "model=crossing_anode", "dataset.anode_augment_dim=3"],  # its augment_dim follows
    ["experiment=density_cnf", "model.trace=hutchinson"],
    ["experiment=latent_ode", "solver.adjoint=true"],
    ["experiment=latent_ode", "profile=paper"],
    ["experiment=latent_ode", "profile.progress=false"],  # the runner's progress bar, every task reads it
    ["experiment=latent_ode", "data_dir=elsewhere", "results_dir=other"],  # locations, not settings of a run
]


@pytest.mark.parametrize("overrides, start, names", REFUSED, ids=[" ".join(c[0]) for c in REFUSED])
def test_an_option_the_run_would_not_read_is_refused_in_one_line(compose_config, overrides, start, names):
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides))
    message = str(info.value)
    assert message.startswith(start) and "\n" not in message, message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[" ".join(c) for c in ACCEPTED])
def test_options_the_run_reads_are_accepted(compose_config, overrides):
    validate(compose_config(overrides))


def test_the_cli_refuses_an_unread_option_before_any_work(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "noderun", "train", "experiment=latent_ode", "profile.lr=0.5",
                             f"results_dir={tmp_path}"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "profile.lr=0.5 has no effect on task=spirals" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written
