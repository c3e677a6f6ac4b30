"""ODE-Net and RK-Net rows of Table 1: the ResNet with its residual blocks replaced by one ODE block.

ODE-Net integrates the block with the adjoint method (constant memory in the number of
function evaluations); RK-Net is the same network with gradients backpropagated through
every operation of the Runge-Kutta solver (memory grows with the evaluations L~).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from noderun.errors import ConfigError
from noderun.models.blocks import classifier_head, downsampling, group_norm
from noderun.models.conv import CONV_IMPLS, conv2d
from noderun.models.solver import SolverSpec


class TimeConv2d(nn.Module):
    """A 3x3 convolution that sees t as an extra input channel, computed without the concat.

    Its parameters are those of ``nn.Conv2d(channels + 1, channels, 3, padding=1)`` applied
    to ``cat([t * ones, h])`` (time channel first). Convolution is linear, so

        conv(cat(t*1, h)) = conv_h(h) + t * conv_1(1)

    where conv_h uses the weight's h-slice with the bias, and conv_1(1) is the t-slice of
    the weight applied to a ones image with the same zero padding: a fixed [C, H, W] map
    (its border differs from the interior because of the padding). Computing it costs a
    batch-1, one-channel convolution instead of building a [B, C+1, H, W] tensor per call.

    conv_impl="nnpack" runs the convolution over h (or the concatenation) with
    noderun.models.conv's NNPACK path where it applies (float32 on the CPU).
    """

    def __init__(self, channels: int, kernel_size: int = 3, padding: int = 1, conv_impl: str = "torch"):
        super().__init__()
        self.padding = padding
        self.conv_impl = conv_impl
        self.weight = nn.Parameter(torch.empty(channels, channels + 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same initialisation nn.Conv2d gives a weight of this shape.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)

    def time_map(self, height: int, width: int) -> torch.Tensor:
        """conv_1(1): the output of the time channel for t = 1, float [C, H, W]."""
        ones = torch.ones(1, 1, height, width, dtype=self.weight.dtype, device=self.weight.device)
        return F.conv2d(ones, self.weight[:, :1], padding=self.padding)[0]

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """t: 0-dim tensor; h: float [B, C, H, W] -> [B, C, H, W]."""
        out = conv2d(h, self.weight[:, 1:], self.bias, self.padding, self.conv_impl)
        return out + t * self.time_map(h.shape[-2], h.shape[-1])

    def forward_concat(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The reference form: concatenate a t-filled channel, then convolve. Same result."""
        time_channel = torch.ones_like(h[:, :1]) * t
        return conv2d(torch.cat([time_channel, h], dim=1), self.weight, self.bias, self.padding, self.conv_impl)


TIME_CHANNELS = ("exact", "concat")


def check_time_channel(time_channel: str) -> None:
    if time_channel not in TIME_CHANNELS:
        raise ConfigError(f"model.time_channel={time_channel!r} is invalid; valid values: {sorted(TIME_CHANNELS)}")


def check_conv_impl(conv_impl: str) -> None:
    if conv_impl not in CONV_IMPLS:
        raise ConfigError(f"model.conv_impl={conv_impl!r} is invalid; valid values: {list(CONV_IMPLS)}")


class ConvODEFunc(nn.Module):
    """Dynamics f(t, h) = GN(conv_t(ReLU(GN(conv_t(ReLU(GN(h))))))), float [B, C, H, W] -> same.

    time_channel="exact" computes each conv_t with :meth:`TimeConv2d.forward` (no concat);
    "concat" with :meth:`TimeConv2d.forward_concat`, the published form. Same parameters
    (and parameter names), same function: a state_dict loads into either. conv_impl
    selects the implementation of the two convolutions (see noderun.models.conv).
    """

    def __init__(self, channels: int = 64, time_channel: str = "exact", conv_impl: str = "torch"):
        super().__init__()
        check_time_channel(time_channel)
        check_conv_impl(conv_impl)
        self.time_channel = time_channel
        self.norm1 = group_norm(channels)
        self.conv1 = TimeConv2d(channels, conv_impl=conv_impl)
        self.norm2 = group_norm(channels)
        self.conv2 = TimeConv2d(channels, conv_impl=conv_impl)
        self.norm3 = group_norm(channels)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.time_channel == "concat":
            out = self.conv1.forward_concat(t, F.relu(self.norm1(h)))
            out = self.conv2.forward_concat(t, F.relu(self.norm2(out)))
        else:
            out = self.conv1(t, F.relu(self.norm1(h)))
            out = self.conv2(t, F.relu(self.norm2(out)))
        return self.norm3(out)


class ODEBlock(nn.Module):
    """h(1) from h(0) = input by solving dh/dt = func(t, h) over [0, 1] as `solver` says.

    solver.adjoint=True: the adjoint method (ODE-Net, O(1) activation memory); False:
    backprop through the solver (RK-Net, O(L~) memory). channels_last=True solves in NHWC
    memory order: the input is made channels_last once, the solver's flat state keeps that
    order (no per-step copies), the dynamics see channels_last views, and the output is
    returned contiguous (NCHW).
    """

    def __init__(self, func: nn.Module, solver: SolverSpec | None = None, *, t1: float = 1.0,
                 channels_last: bool = False):
        super().__init__()
        self.func = func
        self.solver = solver or SolverSpec()
        self.channels_last = channels_last
        self.register_buffer("integration_times", torch.tensor([0.0, t1]), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        device_type = h.device.type
        func = self.func
        if torch.is_autocast_enabled(device_type):
            # Mixed precision: the dynamics' convolutions run in the caller's autocast dtype (bfloat16),
            # in the forward solve and in the adjoint's backward solve alike, while the ODE state, the
            # solver's combinations and error control and the adjoint state stay in float32.
            func = _AutocastDynamics(self.func, device_type, torch.get_autocast_dtype(device_type))
            h = h.float()
        t = self.integration_times.to(h.dtype)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, enabled=False):
            out = self.solver.solve(func, h, t)[-1]
        return out.contiguous() if self.channels_last else out


class AugmentedODEBlock(ODEBlock):
    """h(1)[:, :C] of dh/dt = func(t, h) over [0, 1] from h(0) = [input, 0] (A zero channels).

    The solve, mixed precision and memory layout are ODEBlock's (the augmented state is what it
    solves); func must map C + A channels to C + A channels.
    """

    def __init__(self, func: nn.Module, solver: SolverSpec | None = None, *, augment_channels: int,
                 t1: float = 1.0, channels_last: bool = False):
        super().__init__(func, solver, t1=t1, channels_last=channels_last)
        if augment_channels < 0:
            raise ValueError(f"augment_channels={augment_channels} must be >= 0")
        self.augment_channels = augment_channels

    def augment(self, h: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C + A, H, W], the A appended channels zero."""
        return F.pad(h, (0, 0, 0, 0, 0, self.augment_channels)) if self.augment_channels else h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        channels = h.shape[1]
        return super().forward(self.augment(h))[:, :channels]



class _AutocastDynamics(nn.Module):
    """func under autocast to `dtype`, its output cast back to the state's dtype."""

    def __init__(self, func: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.func, self.device_type, self.dtype = func, device_type, dtype

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.func(t, h).to(h.dtype)


def build_odenet(
    channels: int = 64,
    num_classes: int = 10,
    solver: SolverSpec | None = None,
    *,
    time_channel: str = "exact",
    channels_last: bool = False,
    conv_impl: str = "torch",
    augment_channels: int = 0,
) -> nn.Sequential:
    """208,266 parameters at 64 channels. Input float [B, 1, 28, 28]; output logits [B, 10].

    solver: how the ODE block is solved (default: dopri5 at 1e-3 with the adjoint, the ODE-Net;
    adjoint=False gives the RK-Net). The reference network as published (time concatenated as a
    channel, NCHW, torchdiffeq) is ``time_channel="concat", channels_last=False`` with
    ``solver.backend="torchdiffeq"``; every variant has the same parameter names, so a
    state_dict loads into any of them. augment_channels > 0: the ANODE (noderun.models.anode),
    its ODE state [B, C + A, 6, 6] with A zero channels appended and dropped before the head.
    """
    func = ConvODEFunc(channels + augment_channels, time_channel=time_channel, conv_impl=conv_impl)
    if channels_last:
        func = func.to(memory_format=torch.channels_last)
    if augment_channels:
        block = AugmentedODEBlock(func, solver, augment_channels=augment_channels, channels_last=channels_last)
    else:
        block = ODEBlock(func, solver, channels_last=channels_last)
    return nn.Sequential(downsampling(channels), block, classifier_head(channels, num_classes))
