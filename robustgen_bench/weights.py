"""Read one weights file into a state dict; a file that cannot be read is a ZooError naming it.

``.safetensors`` files are read with safetensors (no code runs). Families that accept upstream
``torch.save`` files (the authors' ABS) pass ``pickle_ok``: those are read with
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from robustgen_bench.errors import ZooError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_state_file(path: str | Path, *, pickle_ok: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` by name; :class:`ZooError` naming the file when it is unreadable."""
    path = Path(path)
    if path.suffix == ".safetensors" or not pickle_ok:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            hint = ("" if path.suffix == ".safetensors" else
                    "; a torch.save file? save its state dict with safetensors.torch.save_file")
            raise ZooError(f"weights file {path} is not a safetensors file ({_first_line(e)}){hint}"
                           ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as e:
        raise ZooError(f"weights file {path} is not a state dict that torch.load(weights_only=True) "
                       f"can read ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise ZooError(f"weights file {path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


__all__ = ["load_state_file"]
