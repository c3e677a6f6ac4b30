"""Layers shared by the convolutional models of Table 1 (ResNet, RK-Net, ODE-Net)."""

from __future__ import annotations

from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when there are fewer channels), as in the paper's code.

    For a channel count that 32 does not divide (the ANODE's 64 + 5 augmented channels), the most
    groups up to 32 that divide it (23 groups of 3 for 69); for every count min(32, channels)
    divides, this is min(32, channels), as before.
    """
    return nn.GroupNorm(max(g for g in range(1, min(32, channels) + 1) if channels % g == 0), channels)


def downsampling(channels: int = 64) -> nn.Sequential:
    """28x28 grey image -> [B, channels, 6, 6] features (Conv 3x3, then two 4x4 stride-2 convs).

    132,096 parameters at channels=64.
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


def classifier_head(channels: int = 64, num_classes: int = 10) -> nn.Sequential:
    """GroupNorm, ReLU, global average pool, Linear: [B, C, H, W] -> logits [B, num_classes]."""
    return nn.Sequential(
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )
