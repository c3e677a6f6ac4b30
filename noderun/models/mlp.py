"""The 1-Layer MLP row of Table 1 (784-300-10; LeCun et al. 1998)."""

from __future__ import annotations

from torch import nn


def build_mlp(hidden: int = 300, in_features: int = 28 * 28, num_classes: int = 10) -> nn.Module:
    """784 -> hidden -> 10 with a ReLU; 238,510 parameters at hidden=300.

    Input: float [B, 1, 28, 28]; output: logits float [B, 10].
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
