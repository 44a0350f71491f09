"""What one search is, decided once by the driver and read by everything below it.

``search`` resolves the export, the name, the storage and the GPUs per trial, then hands a frozen
``Plan`` to the Tuner, the callbacks, the results and the tracking: none of them reaches back
into the driver or into the space's raw settings for a rule the plan already decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lobsearch.space import SearchSpace


@dataclass(frozen=True)
class Plan:
    """One search, resolved.

    space: the validated space (command-line overrides applied); export: the export folder,
    absolute; name: the search's name; storage: where Tune keeps the experiment (an absolute
    folder or a URI such as ``s3://bucket/path``); run_dir: where the results files go;
    resume: it continues a recorded search; address: the Ray cluster joined (None:
    a local Ray); metric and mode: the objective ASHA and the searcher follow, sign: +1 when
    larger is better, else -1; max_epochs: the most epochs any trial can run; gpus_per_trial:
    the resolved share of a GPU each trial holds; started and started_at: the driver's start
    (``time.monotonic()`` and ISO-8601 UTC); say: prints one progress line (a no-op when
    ``quiet``, which also shortens the final summary to one line); replay: the recorded curves
    trials replay instead of training (a ``lobsearch.replay.Replay``; None for a real search).
    """

    space: SearchSpace
    export: Path
    name: str
    storage: str
    run_dir: Path
    resume: bool
    address: str | None
    metric: str
    mode: str
    sign: int
    max_epochs: int
    gpus_per_trial: float
    started: float
    started_at: str
    say: Callable[[str], None]
    quiet: bool = False
    replay: Any = None

    @property
    def experiment_path(self) -> str:
        """The Tune experiment's folder or URI: ``<storage>/<name>``."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def remote_storage(self) -> bool:
        """Whether the experiment lives on shared storage (a URI) rather than a local folder."""
        return "://" in self.storage

    def better(self, value: float, than: float | None) -> bool:
        """Whether objective ``value`` beats ``than`` (None: anything does)."""
        return than is None or self.sign * value > self.sign * than
