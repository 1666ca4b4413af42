"""Where training runs: the device, and the processes of a `torchrun` data-parallel job.

`torchrun --nproc_per_node=N -m encdec train ...` starts N copies of encdec with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in their environment. Each copy joins one
process group (gloo on the CPU, NCCL on CUDA), trains on its share of every batch, and
DistributedDataParallel averages the gradients, so all copies take the same step. Rank 0 is
the main process: it alone writes checkpoints and logs, and it alone validates.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import distributed as dist

from encdec.devices import resolve_device
from encdec.errors import EncdecError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place in the job; a run without torchrun is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise EncdecError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)"
        ) from None


@contextlib.contextmanager
def job(device_name: str = "auto") -> Iterator[Processes]:
    """Join torchrun's process group for the block (when there is one) and leave it after."""
    rank, world_size, local_rank = _torchrun_rank()
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        yield Processes(device=device)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # validation runs on rank 0 alone while the others wait: give it an hour, not the default
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))
    try:
        yield Processes(rank, world_size, device)
        # No process may tear its connections down while another still finishes a collective
        # call with it: gloo aborted a process that way, rarely, at the end of a job.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def sum_across(values: list[float], processes: Processes) -> list[float]:
    """Each value summed over all processes (unchanged in a single process)."""
    if not processes.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(total)
    return total.tolist()


def from_main(value: object, processes: Processes) -> object:
    """Rank 0's `value`, on every process."""
    if not processes.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: object, processes: Processes) -> list:
    """Every process's `value`, in rank order, on every process."""
    if not processes.distributed:
        return [value]
    values = [None] * processes.world_size
    dist.all_gather_object(values, value)
    return values


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a state dict: equal for two models only if every bit is equal."""
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def check_replicas_agree(model: torch.nn.Module, processes: Processes, when: str) -> str:
    """The weights' fingerprint; raises unless every process holds exactly the same weights."""
    fingerprints = gathered(weights_sha256(model.state_dict()), processes)
    if len(set(fingerprints)) > 1:
        differing = [rank for rank, value in enumerate(fingerprints) if value != fingerprints[0]]
        raise EncdecError(
            f"{when}: the weights of rank(s) {differing} differ from rank 0's; the processes "
            "no longer train one model (a nondeterministic kernel or a changed data order)"
        )
    return fingerprints[0]


def run_on_main(function: Callable[[], T], processes: Processes) -> T:
    """`function()` computed by rank 0 alone; its result, or its EncdecError, on every process.

    The other processes wait for it, so a check that fails on rank 0 stops them all at once
    instead of leaving them waiting for a collective call that never comes.
    """
    if not processes.distributed:
        return function()
    outcome = None
    if processes.is_main:
        try:
            outcome = (True, function())
        except EncdecError as error:
            outcome = (False, str(error))
    succeeded, value = from_main(outcome, processes)
    if not succeeded:
        raise EncdecError(value)
    return value
