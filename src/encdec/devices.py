"""Which device to run on: `--device auto | cpu | cuda | cuda:N`, checked against the machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from encdec.errors import EncdecError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device `name` asks for, checked; `auto` and `cuda` take this process's own GPU."""
    import torch  # here, so that the command line shows DEVICE_HELP without loading torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EncdecError(f"unknown device '{name}': use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise EncdecError(f"device '{name}' is not supported: use {DEVICE_HELP}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is not None and device.index >= count:
            raise EncdecError(
                f"device '{name}' asked for, but this machine has {count} CUDA device(s); "
                "use --device cpu, or a GPU that exists"
            )
    return device
