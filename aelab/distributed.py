"""Data-parallel training on ``torch.distributed``: the process group torchrun describes, and the
few collectives the rest of aelab needs.

``torchrun --nproc_per_node N -m aelab train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`init_from_environment` joins them into one process group (gloo on CPU, NCCL on CUDA).
Every helper here is a no-op in a single process, so layers below the trainer (the vector
quantizer's EMA statistics, for one) call them unconditionally.

How a global batch is split: the trainer draws the same global batch of ``trainer.batch_size``
indices on every rank (a pure function of seed and epoch) and rank ``r`` keeps the ``r``-th of
``world_size`` contiguous pieces (:func:`shard`). Contiguous pieces mean that gathering the ranks'
pieces in rank order gives back the global batch in its order (:func:`all_gather_cat`), so a
statistic over the gathered batch equals the single-process one.

Example:
    >>> world_size(), rank()
    (1, 0)
    >>> shard(torch.arange(10), 1, 4).tolist()  # rank 1 of 4: the second of 4 near-equal pieces
    [3, 4, 5]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedSetup",
    "all_gather_cat",
    "all_reduce_",
    "broadcast_",
    "environment_rank",
    "environment_world_size",
    "init_from_environment",
    "is_distributed",
    "rank",
    "shard",
    "world_size",
]

#: how long a rank waits at a collective for the others (rank 0 evaluates and draws pictures at
#: each epoch's end while the others wait for it)
TIMEOUT = timedelta(hours=2)


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset); a malformed value is a :class:`ValueError`."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE: expected a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"environment variable WORLD_SIZE: expected a positive integer, got {n}")
    return n


def environment_rank() -> int:
    """``RANK`` as torchrun sets it (0 when unset): known before the process group exists."""
    value = os.environ.get("RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable RANK: expected an integer, got {value!r}") from None


@dataclass(frozen=True)
class DistributedSetup:
    """What :func:`init_from_environment` did.

    Attributes:
        rank, world_size, local_rank: this process's place (torchrun's ``RANK``, ``WORLD_SIZE``,
            ``LOCAL_RANK``).
        backend: ``gloo`` or ``nccl``.
        device: the device this rank trains on (``cuda:LOCAL_RANK`` on CUDA).
        created: whether this call created the process group (and so should destroy it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    created: bool

    def close(self) -> None:
        """Destroy the process group if this setup created it."""
        if self.created and dist.is_initialized():
            dist.destroy_process_group()


def init_from_environment(device: torch.device) -> DistributedSetup | None:
    """Join the process group torchrun describes in the environment, or ``None`` for one process.

    The backend follows the device: NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``), gloo
    otherwise. A process group that already exists (a script that created its own) is used as
    it is.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 on a build of torch without ``torch.distributed``, on a
            device other than CPU or CUDA, or with fewer CUDA devices than local ranks.
    """
    n = environment_world_size()
    if n == 1 and not (dist.is_available() and dist.is_initialized()):
        return None
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={n}: this build of torch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA device(s): "
                             "start at most that many processes per node (torchrun --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"trainer.device={device.type}: torchrun training runs on cpu (gloo) or cuda (nccl)")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend, timeout=TIMEOUT)
    return DistributedSetup(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), device, created)


def shard(idx: Tensor, r: int, n: int) -> Tensor:
    """Rank ``r``'s contiguous piece of a global batch ``idx`` split into ``n`` near-equal
    pieces (sizes differ by at most one; a piece may be empty when ``len(idx) < n``)."""
    return torch.tensor_split(idx, n)[r]


def _comm(t: Tensor) -> Tensor:
    """``t`` on the device the backend communicates from (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over the ranks, in place (no-op in one process); returns ``t``."""
    if is_distributed():
        c = _comm(t)
        dist.all_reduce(c)
        if c is not t:
            t.copy_(c)
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` with rank ``src``'s value, in place (no-op in one process); returns ``t``."""
    if is_distributed():
        c = _comm(t)
        dist.broadcast(c, src)
        if c is not t:
            t.copy_(c)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """The ranks' ``t`` concatenated along dim 0 in rank order (``t`` itself in one process).

    Pieces may differ in length along dim 0 (the last, uneven batch of an epoch); other
    dimensions must agree."""
    if not is_distributed():
        return t
    c = _comm(t.contiguous())
    n = world_size()
    sizes = [torch.zeros((), dtype=torch.long, device=c.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor(c.shape[0], dtype=torch.long, device=c.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *c.shape[1:]), dtype=c.dtype, device=c.device)
    padded[: c.shape[0]] = c
    pieces = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(pieces, sizes)]).to(t.device)
