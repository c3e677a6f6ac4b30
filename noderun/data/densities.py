"""2-D densities of the flow experiments: target energies for density matching, toy data sets.

Energies (density matching, Figure 4): the potentials U1, U2, U3 of Rezende & Mohamed (2015),
Table 1, p(z) ∝ exp(-U(z)):

    U1 "ring":   ½((|z| - 2)/0.4)² - log(exp(-½((z1 - 2)/0.6)²) + exp(-½((z1 + 2)/0.6)²))
    U2 "wave":   ½((z2 - w1(z1))/0.4)²,                 w1(z) = sin(2πz/4)
    U3 "split":  -log(exp(-½((z2 - w1)/0.35)²) + exp(-½((z2 - w1 + w2)/0.35)²)),
                 w2(z) = 3 exp(-½((z1 - 1)/0.6)²)

U2 and U3 do not confine z1 (exp(-U) is not integrable over the plane), so both get the term
(z1/4)⁶, which leaves them as drawn in the original's [-4, 4]² window and makes them normalizable
(KL is then defined; log Z is computed on a grid by `log_normalizer`).

Data (maximum likelihood, Figure 5): Two Circles (radii 1 and 0.5, Gaussian noise, scaled by 3:
radii 3 and 1.5) and Two Moons (the classic interleaved half circles, centred, scaled by 2),
drawn with a seeded torch.Generator.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

ENERGIES = ("u1", "u2", "u3")
TOY_DATASETS = ("two_circles", "two_moons")


def _w1(z1):
    return torch.sin(2 * math.pi * z1 / 4)


def _confine(z1):
    return (z1 / 4) ** 6


def energy(name: str, z: torch.Tensor) -> torch.Tensor:
    """U(z) for z [..., 2]; p(z) ∝ exp(-U(z))."""
    z1, z2 = z[..., 0], z[..., 1]
    if name == "u1":
        ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
        lobes = torch.logsumexp(torch.stack([-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2]), 0)
        return ring - lobes
    if name == "u2":
        return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _confine(z1)
    if name == "u3":
        w1, w2 = _w1(z1), 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        split = torch.logsumexp(torch.stack([-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2]), 0)
        return -split + _confine(z1)
    raise ValueError(f"unknown energy {name!r}; valid: {list(ENERGIES)}")


@lru_cache(maxsize=None)
def log_normalizer(name: str, half_width: float = 8.0, points: int = 801) -> float:
    """log ∫ exp(-U(z)) dz by the midpoint rule on [-8, 8]², step 0.02 (float64): KL(q‖p) = E_q[log q + U] + log Z."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    step = float(axis[1] - axis[0])
    z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
    u = energy(name, torch.stack([z1, z2], -1))
    return float(torch.logsumexp(-u.reshape(-1), 0)) + 2 * math.log(step)


def sample_toy(name: str, n: int, generator: torch.Generator, noise: float | None = None) -> torch.Tensor:
    """n points of Two Circles or Two Moons, [n, 2] float32."""
    if name == "two_circles":
        noise = 0.08 if noise is None else noise
        outer = torch.rand(n, generator=generator) < 0.5
        radius = torch.where(outer, 1.0, 0.5)
        angle = torch.rand(n, generator=generator) * 2 * math.pi
        x = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * radius[:, None]
        return 3 * (x + noise * torch.randn(n, 2, generator=generator))
    if name == "two_moons":
        noise = 0.1 if noise is None else noise
        upper = torch.rand(n, generator=generator) < 0.5
        angle = torch.rand(n, generator=generator) * math.pi
        x = torch.where(upper[:, None], torch.stack([torch.cos(angle), torch.sin(angle)], -1),
                        torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], -1))
        x = x - torch.tensor([0.5, 0.25])
        return 2 * (x + noise * torch.randn(n, 2, generator=generator))
    raise ValueError(f"unknown data set {name!r}; valid: {list(TOY_DATASETS)}")


def toy_log_prob(name: str, x: torch.Tensor, noise: float | None = None, points: int = 4096) -> torch.Tensor:
    """log p(x) [N] of the data sample_toy draws, for x [N, 2]: the floor a flow's test NLL is measured against.

    Each data set is a mixture of two curves c(θ) (θ uniform) blurred by Gaussian noise and scaled by s,
    x = s (c(θ) + noise ε); so p(x) = E_θ N(x; s c(θ), (s noise)² I), computed in float64 by the midpoint
    rule over `points` values of θ per curve (the curves' spacing is far below the noise's width).
    """
    x = x.double()
    if name == "two_circles":
        noise, scale = (0.08 if noise is None else noise), 3.0
        theta = (torch.arange(points, dtype=torch.float64) + 0.5) * (2 * math.pi / points)
        unit = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
        centres = torch.cat([unit, 0.5 * unit])
    elif name == "two_moons":
        noise, scale = (0.1 if noise is None else noise), 2.0
        theta = (torch.arange(points, dtype=torch.float64) + 0.5) * (math.pi / points)
        upper = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
        lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], -1)
        centres = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    else:
        raise ValueError(f"unknown data set {name!r}; valid: {list(TOY_DATASETS)}")
    sigma, centres = scale * noise, scale * centres
    out = []
    for chunk in x.split(2048):  # [chunk, 2 * points] distances at a time
        log_normal = -torch.cdist(chunk, centres).pow(2) / (2 * sigma**2) - math.log(2 * math.pi * sigma**2)
        out.append(torch.logsumexp(log_normal, dim=1) - math.log(len(centres)))
    return torch.cat(out) if out else x.new_zeros(0)


# The window the flow figures draw: density images on GRID x GRID points of [-LIMIT, LIMIT]²,
# and the fractions of the CNF's flow time at which Figure 5 shows its samples.
GRID = 100
LIMIT = 4.0
SNAPSHOTS = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)


def density_grid(device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The GRID² points of the figures' window, [GRID * GRID, 2]; reshaped to [GRID, GRID], row = z2
    from -LIMIT up, column = z1."""
    axis = torch.linspace(-LIMIT, LIMIT, GRID, device=device, dtype=dtype)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([z1, z2], -1).reshape(-1, 2)
