"""Sharding benchmark work across processes (torchrun / torch.distributed): gloo on the CPU, nccl on GPUs.

Work is cut into fixed chunks of samples that do not depend on the number of processes; rank r takes the chunks
c with c % world == r, computes them exactly as a single process would (same chunk size, same per-sample seeds),
and every rank receives every chunk's result in chunk order. The output is therefore identical to a one-process
run's, whatever the number of processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import InvalidArgument


@dataclass
class Dist:
    """This process's place in the group: rank, world size, and whether it started the group itself.

    Attributes:
        rank: this process's rank (0: the main one).
        world: the number of processes.
        local_rank: the rank on this machine (the GPU index).
        owns_group: whether `close` must end the group.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes files and prints)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> "Dist":
        """Join the group torchrun describes in the environment (WORLD_SIZE, RANK, ...), or a group already made.

        Args:
            device: the run's device: "cuda" picks nccl and this process's local GPU; otherwise gloo.

        Returns:
            The Dist; one process (rank 0 of 1) without WORLD_SIZE > 1.

        Raises:
            InvalidArgument: WORLD_SIZE > 1 but torch has no torch.distributed.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise InvalidArgument(f"WORLD_SIZE={world} asks for {world} processes (torchrun), but this torch build has "
                                  "no torch.distributed; run one process (unset WORLD_SIZE) or install a torch with it")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local, owns_group=True)

    def device(self, device: str | torch.device | None) -> torch.device | None:
        """One GPU per process: 'cuda' becomes this process's local GPU.

        Args:
            device: the run's device, or None.

        Returns:
            The device to use here, or None.
        """
        if device is None:
            return None
        d = torch.device(device)
        if d.type == "cuda" and d.index is None and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return d

    def my_chunks(self, n_chunks: int) -> list[int]:
        """The chunk indices this rank computes: c with c % world == rank.

        Args:
            n_chunks: the total number of chunks.

        Returns:
            The indices, increasing.
        """
        return [c for c in range(n_chunks) if c % self.world == self.rank]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order (a one-element list without a group).

        Args:
            obj: a picklable object.

        Returns:
            One object per rank.
        """
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_chunks(self, mine: dict[int, Any]) -> list[Any]:
        """All chunks' results in chunk order, from each rank's {chunk index: result}.

        Args:
            mine: this rank's results by chunk index.

        Returns:
            Every chunk's result, in chunk order (the same on every rank).
        """
        merged: dict[int, Any] = {}
        for part in self.all_gather(mine):
            merged.update(part)
        return [merged[c] for c in sorted(merged)]

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        """End the process group if this Dist started it."""
        if self.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.owns_group = False


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each fixed-size chunk of n samples (the last may be shorter).

    Args:
        n: the number of samples.
        chunk_size: samples per chunk.

    Returns:
        The (start, stop) pairs.
    """
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


def sample_seeds(seed: int, n: int) -> list[int]:
    """One seed per sample, so sample i is the same whatever chunk or process draws it.

    Args:
        seed: the run's seed.
        n: the number of samples.

    Returns:
        seed * 2**24 + i for each sample i.

    Raises:
        ValueError: n >= 2**24.
    """
    if n >= 2 ** 24:
        raise ValueError("at most 2**24 samples per benchmark")
    return [int(seed) * 2 ** 24 + i for i in range(n)]
