"""torch.distributed for the stages: one process, or several started by ``torchrun``.

Nothing here launches processes: ``torchrun`` does (one machine: ``torchrun --nproc-per-node N``;
several: ``--nnodes M --rdzv-backend c10d --rdzv-endpoint host:port``; a cluster scheduler such as
SLURM starts one ``torchrun`` per node). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in every process; :func:`setup` reads them and joins the
process group with ``init_method="env://"``. Without them (a plain ``mambava train``, ``dvc
repro``) or with ``WORLD_SIZE=1`` it does nothing and every helper here is a no-op, so the
one-process code path is the multi-process one with ``world_size == 1``.

Backend: NCCL when the stage runs on CUDA (each process on GPU ``LOCAL_RANK``), gloo on CPU.
The collective timeout is ``MAMBAVA_DIST_TIMEOUT_MIN`` minutes (default 60): ranks wait for rank 0's
validation and for the slowest shard of a feature extraction, which can take longer than
torch's 10-minute NCCL default on real data.

Who does what with several processes is decided in :mod:`mambava.data.sharding` (which videos,
which windows); this module only moves things between processes.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("mambava.distributed")

TIMEOUT_ENV = "MAMBAVA_DIST_TIMEOUT_MIN"


@dataclass(frozen=True)
class Dist:
    """This process's place: rank of world_size (local_rank on its node); backend None = one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) without them."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
    return rank, world, local


def choose_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (no-op in one process); returns (Dist, this rank's device).

    On CUDA, rank ``LOCAL_RANK`` of a node uses GPU ``LOCAL_RANK``; it is an error to start more
    processes on a node than it has GPUs (use ``device: cpu`` for CPU processes).
    """
    rank, world, local = from_env()
    if world == 1:
        return SINGLE, device
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise RuntimeError(f"LOCAL_RANK={local} but this node has {n} CUDA device(s): "
                               f"start at most {n} processes per node (torchrun --nproc-per-node {n})")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = choose_backend(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "60")))
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
        atexit.register(shutdown)
        log.info("rank %d of %d (local %d): %s process group, device %s", rank, world, local, backend, device)
    return Dist(rank, world, local, dist.get_backend()), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Wait for every rank (no-op in one process)."""
    if not d.enabled:
        return
    if d.backend == "nccl":
        dist.barrier(device_ids=[d.local_rank])
    else:
        dist.barrier()


def broadcast(d: Dist, obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable object)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(d: Dist, obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


class _GatherRows(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of its rows' gradients."""

    @staticmethod
    def forward(ctx, t):
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum: every rank's loss depends on every rank's rows
        return grad[dist.get_rank()]


def gather_rows(d: Dist, t: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The rows of every rank's ``t`` in rank order, keeping the first ``counts[r]`` of rank r.

    Every rank passes a tensor of the same shape (padded to the longest share). Differentiable:
    the backward pass sums every rank's gradient for this rank's rows (all_gather's adjoint), so
    when all ranks compute the same loss from the gathered rows, each rank's gradient is
    ``world_size`` times its share of the global one, and DDP's averaging over ranks gives
    exactly the one-process gradient.
    """
    if not d.enabled:
        return t[: counts[0]]
    parts = _GatherRows.apply(t)
    return torch.cat([parts[r, :c] for r, c in enumerate(counts)])


def wrap_ddp(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (the model itself in one process)."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
