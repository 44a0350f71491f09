"""A run's checkpoint file: written atomically, read back only for the same data.

A checkpoint is one ``checkpoint.pt`` (torch's zip format, read with ``weights_only=True``): the
model, optimizer and scheduler states, the loop's progress, every random generator's state, and
the data hash of the run that wrote it, so a resume on other data is refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lobsearch.errors import DataError
from lobsearch.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
VERSION = 1


def save_checkpoint(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``version`` set) to ``directory/checkpoint.pt`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write(directory / CHECKPOINT_NAME, lambda tmp: torch.save({**payload, "version": VERSION}, tmp))

def load_checkpoint(path: str | Path, data_hash: str) -> dict[str, Any]:
    """Read a checkpoint (its file, or the folder holding ``checkpoint.pt``) onto the CPU.

    Raises DataError when it is missing, unreadable, or written for another ``data_hash``
    (naming both hashes).
    """
    path = Path(path)
    file = path / CHECKPOINT_NAME if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"resume: no checkpoint at {file}")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != VERSION:
        raise DataError(f"resume: {file} is not a lobsearch checkpoint (version {VERSION})")
    if payload["data_hash"] != data_hash:
        raise DataError(
            f"resume: {file} was written for data hash {payload['data_hash']!r}, but this run's "
            f"data hash is {data_hash!r}: the export, data config or normalization statistics "
            "differ; resume with the same data or start a new run"
        )
    return payload


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """The states of python's, numpy's and torch's global generators (CUDA's too when present)
    and of ``generator`` (the loop's batch order)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what ``rng_states`` captured."""
    random.setstate(_as_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    generator.set_state(states["sampler"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
