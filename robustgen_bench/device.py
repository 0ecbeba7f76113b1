"""Where tensors live: ``--device auto|cpu|cuda[:N]`` resolved once at the command line.

Defenses, candidate caches, data batches and the attack libraries' inputs move to the device;
verification results and the store stay on the CPU. Rows computed on a GPU may differ from CPU
rows by floating-point noise in borderline samples, so a cell's key records the device type
(only when it is not the CPU, so CPU runs keep their keys).
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager

import torch

from robustgen_bench.errors import UserInputError

_SPEC = re.compile(r"^(auto|cpu|cuda(?::\d+)?)$")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]`` as a torch.device.

    Raises :class:`UserInputError` (key ``--device``) for anything else and for a CUDA device
    this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if not _SPEC.match(text):
        raise UserInputError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N",
                             key="--device")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {text!r}: no CUDA device is available on this machine "
                                 "(use --device cpu or auto)", key="--device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f"device {text!r}: this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)", key="--device")
    return dev


def fork_rng(device: torch.device) -> AbstractContextManager[None]:
    """``torch.random.fork_rng`` over the CPU and, for a CUDA device, that device's generator
    (``torch.manual_seed`` inside seeds both), so seeded batches stay reproducible on a GPU."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def device_type(device: torch.device | str) -> str:
    return torch.device(device).type
