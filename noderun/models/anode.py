"""ANODE (beyond the paper): the ODE-Net with its ODE state augmented by zero channels.

Augmented Neural ODEs (Dupont, Doucet & Teh, NeurIPS 2019): the flow of an ODE is a
homeomorphism of its state space, so trajectories cannot cross and some maps (g(1) = -1,
g(-1) = 1) cannot be represented at all. Solving in a larger space, the state concatenated
with zeros, lifts that restriction and gives simpler flows (fewer function evaluations).

Here the ODE-Net of Table 1 gets `augment_channels` zero channels appended to the
[B, C, 6, 6] features after the downsampling; its dynamics (ConvODEFunc) act on C + A channels
(both time-aware 3x3 convolutions map C + A to C + A), solved like the ODE-Net (same SolverSpec:
method, tolerances, the adjoint); the first C channels of h(1) go to the ODE-Net's head and the
A augmented ones are dropped. Dropping is the projection used here (rather than a learned 1x1
convolution from C + A to C): the head is the ODE-Net's, so the row differs from the ODE-Net
only by the augmented state, and with A = 0 the network is the ODE-Net, parameter for parameter.
The augmented channels still shape the result: the kept channels' trajectories depend on them.
Dupont et al.'s own convolutional ANODE feeds all C + A channels to a linear layer instead.
"""

from __future__ import annotations

from torch import nn

from noderun.models.odenet import AugmentedODEBlock, build_odenet
from noderun.models.solver import SolverSpec

__all__ = ["AugmentedODEBlock", "build_anode"]


def build_anode(
    channels: int = 64,
    augment_channels: int = 5,
    num_classes: int = 10,
    solver: SolverSpec | None = None,
    *,
    time_channel: str = "exact",
    channels_last: bool = False,
    conv_impl: str = "torch",
) -> nn.Sequential:
    """Downsampling to C channels, the augmented ODE block on C + A channels, the ODE-Net's head.

    Input float [B, 1, 28, 28]; output logits [B, num_classes]. 220,366 parameters at C = 64,
    A = 5 (the ODE-Net: 208,266); with A = 0 the ODE-Net itself (same parameter names).
    """
    return build_odenet(channels, num_classes, solver, augment_channels=augment_channels,
                        time_channel=time_channel, channels_last=channels_last, conv_impl=conv_impl)
