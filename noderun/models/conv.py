"""Stride-1 convolutions of the ODE block, with NNPACK as a faster CPU implementation.

PyTorch runs float32 CPU convolutions with oneDNN (direct algorithm). For the ODE block's
3x3 convolutions on small maps (64 channels, 6x6, batch 128) NNPACK, which PyTorch ships
and itself uses only without oneDNN, computes the forward with fast (Winograd/FFT)
transforms in about 60% of the time on the CPU measured here (benchmarks/README.md).
``conv2d(..., impl="nnpack")`` uses it for the forward pass and for the input gradient
(a convolution of the output gradient with the flipped, transposed kernel) and leaves
the weight and bias gradients to PyTorch. Its float32 results differ from oneDNN's by
~3e-6 relative (oneDNN: ~1.5e-7 against float64), far below the solver tolerances.

Anything NNPACK does not cover (other devices or dtypes, channels_last or otherwise
non-contiguous inputs, a PyTorch built without it) falls back to ``F.conv2d``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

CONV_IMPLS = ("torch", "nnpack")


@functools.lru_cache(maxsize=None)
def nnpack_available() -> bool:
    """Whether this PyTorch has NNPACK and it initialised on this CPU (also initialises it)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def nnpack_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous()
        and nnpack_available()
    )


class _NNPACKConv2d(torch.autograd.Function):
    """Stride-1 conv2d with symmetric zero padding: forward and input gradient by NNPACK."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        # The weight as given (often a view of a parameter, e.g. TimeConv2d's h-slice) is what is
        # saved, as F.conv2d saves it: no per-call copy is kept alive for the backward pass.
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch._nnpack_spatial_convolution(x, weight.contiguous(), bias, [padding, padding])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if need_x:
            # d(conv)/dx: full correlation of grad with the flipped kernel, in/out channels swapped.
            kh, kw = weight.shape[-2:]
            flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
            grad_x = torch._nnpack_spatial_convolution(grad, flipped, None, [kh - 1 - p, kw - 1 - p])
        if need_w or (need_b and ctx.has_bias):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [p, p], [1, 1], False,
                [0, 0], 1, [False, bool(need_w), bool(need_b and ctx.has_bias)],
            )
        return grad_x, grad_w, grad_b, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias, padding: int, impl: str = "torch") -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1), by ``impl`` where it applies."""
    kh, kw = weight.shape[-2:]
    if impl == "nnpack" and 0 <= padding < min(kh, kw) and nnpack_applies(x, weight):
        return _NNPACKConv2d.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)
