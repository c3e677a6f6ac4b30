"""The regression tasks of Dupont, Doucet & Teh (2019) that an ODE flow cannot represent, seeded.

1-D (`crossing_1d`): g(-1) = 1, g(1) = -1. Inputs are drawn uniformly from [-1 - w, -1 + w]
(target +1) and [1 - w, 1 + w] (target -1), half and half; w = 0 gives the two points of the
paper's g_1d. An ODE flow on the line keeps the order of any two points, so it cannot swap them.

2-D (`crossing_2d`): points uniform by area in the disc r < r_in (target -1) and in the ring
r_out_min < r < r_out_max (target +1), the paper's concentric spheres in two dimensions. A flow
of the plane keeps the disc enclosed by the ring, so no linear map of its final state separates
the two exactly; it gets close only by squeezing points through narrow gaps in the ring, a
complicated flow that costs many function evaluations.
"""

from __future__ import annotations

import math

import torch


def sample_1d(n: int, half_width: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [n, 1], y [n, 1]): the first n // 2 around -1 (target +1), the rest around +1 (target -1)."""
    negative = n // 2
    centre = torch.cat([-torch.ones(negative), torch.ones(n - negative)])
    offset = (2 * torch.rand(n, generator=generator) - 1) * half_width
    return (centre + offset).unsqueeze(1), (-centre).unsqueeze(1)


def _uniform_in_annulus(n: int, r_min: float, r_max: float, generator: torch.Generator) -> torch.Tensor:
    """n points uniform by area in r_min <= r < r_max: [n, 2]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    radius = torch.sqrt(u * (r_max**2 - r_min**2) + r_min**2)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).float()


def sample_2d(n: int, inner_radius: float, outer_min: float, outer_max: float, inner_fraction: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [n, 2], y [n, 1]): round(n * inner_fraction) points in the disc (target -1), then the ring (+1)."""
    inner = round(n * inner_fraction)
    x = torch.cat([_uniform_in_annulus(inner, 0.0, inner_radius, generator),
                   _uniform_in_annulus(n - inner, outer_min, outer_max, generator)])
    y = torch.cat([-torch.ones(inner), torch.ones(n - inner)]).unsqueeze(1)
    return x, y


def sample(dataset_cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the data set a `dataset` config describes, drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    if dataset_cfg.name == "crossing_1d":
        return sample_1d(n, dataset_cfg.half_width, generator)
    return sample_2d(n, dataset_cfg.inner_radius, dataset_cfg.outer_min, dataset_cfg.outer_max,
                     dataset_cfg.inner_fraction, generator)
