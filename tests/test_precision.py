"""precision=bf16-mixed and the fast profile's training settings (warm-up, Nesterov, label smoothing, EMA)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.nn.functional as F

from noderun.checkpoint import RunInterrupted
from noderun.errors import ConfigError
from noderun.models.odenet import build_odenet
from noderun.models.solver import SolverSpec
from noderun.profiling import bf16_supported
from noderun.runner import train, validate

QUIET = lambda *_: None  # noqa: E731
needs_bf16 = pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")


class Recorder(torch.nn.Module):
    """The dynamics, recording the dtype of every state they are called with."""

    def __init__(self, func):
        super().__init__()
        self.func, self.states, self.outputs = func, [], []

    def forward(self, t, h):
        self.states.append(h.dtype)
        out = self.func(t, h)
        self.outputs.append(out.dtype)
        return out


def _gradient(model, x, y, mixed: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
        logits = model(x).float()
    F.cross_entropy(logits, y).backward()
    return logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@needs_bf16
@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_bf16_mixed_keeps_the_ode_state_and_adjoint_in_float32(one_thread, adjoint):
    torch.manual_seed(0)
    model = build_odenet(channels=8, solver=SolverSpec(method="rk4", options={"step_size": 0.25}, adjoint=adjoint))
    block = model[1]
    block.func = Recorder(block.func)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    reference_logits, reference = _gradient(model, x, y, mixed=False)
    block.func.states.clear()
    block.func.outputs.clear()
    logits, mixed = _gradient(model, x, y, mixed=True)
    # every evaluation, forward and adjoint backward, sees a float32 state; the convolutions inside ran in
    # bfloat16 (their output dtype, before the block casts it back to the state's)
    calls = 16 * (2 if adjoint else 1)
    assert block.func.states == [torch.float32] * calls
    assert set(block.func.outputs) == {torch.bfloat16}
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    # bfloat16 keeps 8 bits of mantissa. At initialisation the gradient of the first layers is a sum of
    # cancelling terms, so it moves most there: measured here 18 % of the whole gradient's norm, a cosine
    # of 0.98 with the float32 gradient (at 64 channels, batch 128: 18 % on the first conv, 7 % and 4 % on
    # the dynamics' convs, 0.3 % on the head)
    assert (logits - reference_logits).abs().max() < 0.05
    assert F.cosine_similarity(mixed, reference, dim=0) > 0.95


def test_bf16_mixed_without_native_bfloat16_is_refused_in_one_line(compose_config, monkeypatch):
    monkeypatch.setattr("noderun.runner.bf16_supported", lambda device: False)
    with pytest.raises(ConfigError, match="precision=bf16-mixed needs native bfloat16.*use precision=32") as info:
        validate(compose_config(["model=odenet", "precision=bf16-mixed"]))
    assert "\n" not in str(info.value)


def test_bf16_mixed_is_refused_by_the_tasks_without_it(compose_config):
    with pytest.raises(ConfigError, match="precision=bf16-mixed is not available for task=spirals"):
        validate(compose_config(["experiment=latent_ode", "precision=bf16-mixed"]))


@needs_bf16
def test_the_fast_profile_trains_smoke_sized_in_bf16_and_records_its_precision(compose_config, mnist_dir, tmp_path):
    cfg = compose_config(["model=odenet", "model.channels=8", "profile=fast", "profile.epochs=2",
                          "profile.train_size=256", "profile.test_size=64", "profile.batch_size=64",
                          "profile.warmup_epochs=0.5", "precision=bf16-mixed", "profile.progress=false",
                          f"data_dir={mnist_dir}", f"results_dir={tmp_path}"])
    row = train(cfg, log=QUIET)
    assert row["status"] == "ok" and row["precision"] == "bf16-mixed" and row["nfe_backward"] > 0


FAST_TINY = ["model=resnet", "model.n_blocks=1", "model.channels=8", "profile=fast", "profile.epochs=3",
             "profile.train_size=256", "profile.test_size=64", "profile.batch_size=64", "profile.warmup_epochs=0.5",
             "profile.ema_decay=0.9", "profile.progress=false"]


def test_the_schedule_and_the_average_resume_bit_identical_after_ctrl_c(compose_config, mnist_dir, tmp_path,
                                                                       monkeypatch):
    import noderun.tasks.classification as classification
    from noderun.tasks.classification import final_weights_path

    def weights(folder):
        return torch.load(final_weights_path(folder, "table1", "resnet", "fast", 0), weights_only=True)["state_dict"]

    train(compose_config([*FAST_TINY, f"data_dir={mnist_dir}", f"results_dir={tmp_path / 'once'}"]), log=QUIET)
    calls, crop = 0, classification.random_crop

    def crop_then_interrupt(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:  # inside the warm-up, the average already updated once
            os.kill(os.getpid(), signal.SIGINT)
        return crop(*args, **kwargs)

    monkeypatch.setattr(classification, "random_crop", crop_then_interrupt)
    cfg = compose_config([*FAST_TINY, f"data_dir={mnist_dir}", f"results_dir={tmp_path / 'twice'}"])
    with pytest.raises(RunInterrupted, match="epoch 1, step 2"):
        train(cfg, log=QUIET)
    monkeypatch.setattr(classification, "random_crop", crop)
    train(cfg, log=QUIET)
    once, twice = weights(tmp_path / "once"), weights(tmp_path / "twice")
    assert once.keys() == twice.keys()
    for key in once:
        assert torch.equal(once[key], twice[key]), key
