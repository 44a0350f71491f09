"""What a result was made with: code, library versions and device, recorded beside every trial.

A trial reports these keys with every epoch (strings, so Tune keeps them as they are);
``results.json`` and the trial's W&B run carry them, so a figure can be traced to the code, the
libraries and the device that produced it. The data a trial trained on is named by its
``data_hash`` (the prepared data's key, which fingerprints the export's files, the data config
and the normalization statistics) and its seed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

from lobsearch import __version__

LIBRARIES = ("torch", "ray", "optuna", "numpy")

KEYS = ("lobsearch_version", "lobsearch_commit", "python_version",
        *(f"{name}_version" for name in LIBRARIES), "device", "data_hash", "seed")
"""The provenance keys of a trial's results, in the order they are shown."""


@functools.cache
def code_versions() -> dict[str, str]:
    """lobsearch's version and git commit ("unknown" outside a git checkout), Python's and the
    libraries' versions, as found in this process."""
    versions = {"lobsearch_version": __version__, "lobsearch_commit": _commit(),
                "python_version": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[f"{name}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"{name}_version"] = "not installed"
    return versions


def trial_provenance(*, device: str, data_hash: str, seed: int) -> dict[str, str]:
    """Every key of ``KEYS`` for one trial, as strings."""
    return {**code_versions(), "device": device, "data_hash": data_hash, "seed": str(seed)}


def _commit() -> str:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), else "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head
