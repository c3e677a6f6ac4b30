"""On-device batching for image classification: no DataLoader, no per-sample Python.

The whole uint8 dataset lives as one tensor on the training device; an epoch is a
``randperm`` cut into index slices, and augmentation (random crop with zero padding)
is done for the whole batch with one gather.
"""

from __future__ import annotations

import torch


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float32 [B, 1, 28, 28] in [0, 1] (no mean/std normalisation, as in the paper's code)."""
    return images_uint8.unsqueeze(1).to(torch.float32).div_(255.0)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the original size from the zero-padded image, batched.

    images: float [B, C, H, W]. Each sample gets its own offset in [0, 2*padding] on both axes,
    drawn from `generator` (so a seeded run is reproducible). Returns float [B, C, H, W].
    """
    if padding == 0:
        return images
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=generator.device)
    offsets = offsets.to(images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # [B, W]
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def epoch_permutation(num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of the samples: int64 [num_samples] on the generator's device.

    Step k of the epoch takes ``order[k * batch_size : (k + 1) * batch_size]``; the last
    partial batch is dropped. Kept whole in a checkpoint, so a run resumes mid-epoch.
    """
    return torch.randperm(num_samples, generator=generator, device=generator.device)


def epoch_batches(num_samples: int, batch_size: int, generator: torch.Generator, drop_last: bool = True):
    """Yield index tensors (int64 [batch_size]) covering a random permutation of the samples."""
    order = epoch_permutation(num_samples, generator)
    stop = num_samples - num_samples % batch_size if drop_last else num_samples
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
