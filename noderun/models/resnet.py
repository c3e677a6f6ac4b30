"""The ResNet row of Table 1: downsampling, L pre-activation residual blocks, head."""

from __future__ import annotations

import torch
from torch import nn

from noderun.models.blocks import classifier_head, downsampling, group_norm


class PreActResidualBlock(nn.Module):
    """h + conv(relu(norm(conv(relu(norm(h)))))) with 3x3 bias-free convolutions.

    Shape-preserving: float [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.norm1(h)))
        out = self.conv2(self.relu(self.norm2(out)))
        return h + out


def build_resnet(n_blocks: int = 6, channels: int = 64, num_classes: int = 10) -> nn.Module:
    """576,778 parameters at the paper's 6 blocks of 64 channels.

    Input: float [B, 1, 28, 28]; output: logits float [B, num_classes].
    """
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    return nn.Sequential(
        downsampling(channels),
        *[PreActResidualBlock(channels) for _ in range(n_blocks)],
        classifier_head(channels, num_classes),
    )
