"""noderun.models.conv: the NNPACK convolution path against F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noderun.models.conv import conv2d, nnpack_available

needs_nnpack = pytest.mark.skipif(not nnpack_available(), reason="this PyTorch has no NNPACK")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest)


@needs_nnpack
@pytest.mark.parametrize("padding, bias, cin", [(1, True, 8), (0, True, 8), (1, False, 9)], ids=["same", "valid", "no-bias"])
def test_nnpack_forward_and_gradients_match_torch(padding, bias, cin):
    torch.manual_seed(0)
    x = torch.randn(16, cin, 6, 6, requires_grad=True)
    w = (0.2 * torch.randn(8, cin, 3, 3)).requires_grad_(True)
    b = torch.randn(8, requires_grad=True) if bias else None
    g = torch.randn(16, 8, 6 - 2 + 2 * padding, 6 - 2 + 2 * padding)
    results = []
    for impl in ("torch", "nnpack"):
        out = conv2d(x, w, b, padding, impl)
        grads = torch.autograd.grad(out, [x, w] + ([b] if bias else []), g)
        results.append((out, grads))
    (ref, ref_grads), (out, grads) = results
    assert out.grad_fn is not None and "NNPACK" in type(out.grad_fn).__name__
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, rtol=0, atol=1e-5 * r.abs().max().item())


@needs_nnpack
def test_nnpack_path_falls_back_where_it_does_not_apply():
    w = torch.randn(4, 4, 3, 3)
    for x in (torch.randn(2, 4, 5, 5, dtype=torch.float64),  # float64
              torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)):  # NHWC
        x = x.requires_grad_(True)
        out = conv2d(x, w.to(x.dtype), None, 1, "nnpack")
        assert "NNPACK" not in type(out.grad_fn).__name__
        assert torch.allclose(out, F.conv2d(x, w.to(x.dtype), padding=1))
