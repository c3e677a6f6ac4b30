from fractions import Fraction as F

import pytest
import torch

from noderun.ode import RUNGE_KUTTA_METHODS, ButcherTableau, get_method


@pytest.mark.parametrize("name", list(RUNGE_KUTTA_METHODS))
def test_registered_tableaus_are_consistent(name):
    tab = RUNGE_KUTTA_METHODS[name].tableau
    assert tab.name == name
    assert tab.source
    coeffs = tab.tensors(torch.float64, torch.device("cpu"))
    assert coeffs is tab.tensors(torch.float64, torch.device("cpu"))  # cached
    assert torch.isclose(coeffs.b.sum(), torch.tensor(1.0, dtype=torch.float64))


def _heun(**overrides):
    kw = dict(name="t", c=(0, 1), a=((), (1,)), b=(F(1, 2), F(1, 2)), order=2, b_error=(F(-1, 2), F(1, 2)), error_order=1)
    kw.update(overrides)
    return ButcherTableau(**kw)


def test_valid_tableau():
    assert _heun().num_stages == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(a=((), (F(1, 2),))), "row 1 of A sums"),
        (dict(b=(F(1, 2), F(1, 3))), "solution weights b sum"),
        (dict(b_error=(F(-1, 2), F(1, 3))), "error weights b_error sum"),
        (dict(a=((), (1, 0))), "row 1 of A must have 1 entries"),
        (dict(b=(1,)), "b has 1 entries"),
        (dict(fsal=True), "fsal requires"),
        (dict(b_error=None), "given together"),
    ],
)
def test_invalid_tableau_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        _heun(**overrides)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; valid methods: .*dopri5"):
        get_method("nope")
