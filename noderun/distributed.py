"""One run across processes: DistributedDataParallel under `torchrun`.

    torchrun --standalone --nproc_per_node=N -m noderun train model=odenet ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `World.from_environment()` reads them, and
`noderun.runner.train` opens the process group (NCCL on CUDA, gloo on CPU) around the run.
Without torchrun the world is one process and nothing here does anything.

What every rank does identically (same seed): the model's initialisation, each epoch's
permutation and each global batch's random crops. Each rank then trains on its contiguous
shard of the global batch (`profile.batch_size` is the global batch; it must divide by the
world size) and the runner averages the gradients across ranks (`average_gradients`) after
every rank has reported that its step succeeded, which is the one-process gradient of the
global batch because no layer mixes samples (GroupNorm, not BatchNorm). Sums (loss, errors, seen
samples) are all-reduced; only rank 0 writes checkpoints, logs, figures and the result row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @staticmethod
    def from_environment() -> "World":
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK when training on CUDA across processes."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (contiguous, equal sizes)."""
        local = global_batch // self.size
        return slice(self.rank * local, (self.rank + 1) * local)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over the ranks (float64, one collective)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op for one process)."""
        if self.distributed:
            dist.barrier()

    def main_first(self, work):
        """work() on rank 0 first, then on the other ranks (e.g. a download that the others then read)."""
        if not self.is_main:
            self.barrier()
        result = work()
        if self.is_main:
            self.barrier()
        return result

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights."""
        if self.distributed:
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Replace each gradient by its mean over the ranks (one flat collective)."""
        if not self.distributed:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def start(world: World, device: torch.device) -> None:
    """Open the default process group for this world (no-op for one process)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
