"""Each trial's result files written straight into its folder of the experiment, every result.

Ray Tune 2.60's result loggers (``JsonLoggerCallback``, ``CSVLoggerCallback``) write a trial's
``result.json`` and ``progress.csv`` into the driver's staging folder
(``/tmp/ray/session_*/artifacts/...``), which reaches the experiment folder only at the next
experiment-state save. A driver killed between two saves leaves the experiment folder without
the epochs reported since. A resume in the same Ray session uploads them from the staging folder
first, but one in another session (a local Ray is started per search; a restarted cluster;
another machine) has no staging folder: it read 28 of 300 trials with gaps or no epochs at all
(a replay of 32 trials at a time killed at 90 % and resumed in a fresh Ray; docs/benchmarks.md
"Scale"), and a trial kept finished from the journal had no history, so no best epoch.

``callbacks(remote)``: for an experiment folder on this machine, loggers that write there
directly, one line appended and flushed per result (``params.json`` and ``params.pkl`` as Tune
writes them); for remote storage (a URI) Tune's own, whose files reach it only through Tune's
upload. A ``progress.csv`` continued after a resume keeps the columns of its header (Tune's
logger writes a continued file's rows in the order of the new result's keys). A trial started
again from its checkpoint (a retry, a resume) reports again the epochs after it: its files lose
the rows past the checkpoint's ``training_iteration`` first (all rows when it starts without
one), so each epoch is in them once, as the trial's history now runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from ray.air._internal.json import SafeFallbackEncoder
from ray.cloudpickle import dump as pickle_dump
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback
from ray.tune.utils import flatten_dict

RESULT_FILE, PROGRESS_FILE, PARAMS_FILE, PARAMS_PICKLE = "result.json", "progress.csv", "params.json", "params.pkl"


def callbacks(remote: bool) -> list[Any]:
    """The result loggers of a search whose experiment folder is remote (a URI) or not."""
    if remote:
        return [JsonLoggerCallback(), CSVLoggerCallback()]
    return [ResultJson(), ProgressCsv()]


class _TrialFile(LoggerCallback):
    """One file per trial in its experiment folder, opened for appending when the trial starts
    (again after a retry or a resume) and closed when it ends. Open files are not pickled: Tune
    pickles its callbacks with the experiment."""

    NAME = ""

    @staticmethod
    def _iterations(lines: Iterable[str]) -> Iterator[Any]:
        """The ``training_iteration`` of each record of the file's ``lines`` in turn (None for a
        header or a record without one), each read only as far as its record."""
        raise NotImplementedError

    def __init__(self) -> None:
        self._files: dict[Any, TextIO] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def log_trial_start(self, trial: Any) -> None:
        self.log_trial_end(trial)
        folder = Path(trial.path)
        folder.mkdir(parents=True, exist_ok=True)
        self._started(trial, folder)
        _drop_torn_line(folder / self.NAME)
        _cut_rows_after(folder / self.NAME, _restored_iteration(trial), self._iterations)
        self._files[trial] = (folder / self.NAME).open("a", encoding="utf-8", newline="")

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        file = self._files.pop(trial, None)
        if file is not None:
            file.close()

    def _file(self, trial: Any) -> TextIO:
        if trial not in self._files:
            self.log_trial_start(trial)
        return self._files[trial]

    def _started(self, trial: Any, folder: Path) -> None:
        """What else a trial's start writes into ``folder``."""


class ResultJson(_TrialFile):
    """``result.json``: each result as one JSON line, as Tune's ``JsonLoggerCallback`` writes it;
    and the trial's configuration in ``params.json`` and ``params.pkl``."""

    NAME = RESULT_FILE

    @staticmethod
    def _iterations(lines: Iterable[str]) -> Iterator[Any]:
        for line in lines:
            try:
                yield json.loads(line).get("training_iteration")
            except ValueError:  # not a result line: kept as it is
                yield None

    def _started(self, trial: Any, folder: Path) -> None:
        with (folder / PARAMS_FILE).open("w", encoding="utf-8") as out:
            json.dump(trial.config, out, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        with (folder / PARAMS_PICKLE).open("wb") as out:
            pickle_dump(trial.config, out)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        file = self._file(trial)
        file.write(json.dumps(result, cls=SafeFallbackEncoder) + "\n")
        file.flush()


class ProgressCsv(_TrialFile):
    """``progress.csv``: each result flattened (``a/b`` keys, no ``config``) as one row; the
    header is the first result's keys, or the existing file's when it is continued."""

    NAME = PROGRESS_FILE

    @staticmethod
    def _iterations(lines: Iterable[str]) -> Iterator[Any]:
        records = csv.reader(lines)
        header = next(records, [])
        column = header.index("training_iteration") if "training_iteration" in header else None
        yield None  # the header: kept
        for record in records:
            yield record[column] if column is not None and column < len(record) else None

    def __init__(self) -> None:
        super().__init__()
        self._writers: dict[Any, csv.DictWriter] = {}

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_writers": {}}

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        self._writers.pop(trial, None)
        super().log_trial_end(trial, failed)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        file = self._file(trial)
        row = flatten_dict({k: v for k, v in result.items() if k != "config"}, delimiter="/")
        writer = self._writers.get(trial)
        if writer is None:
            path = Path(trial.path) / PROGRESS_FILE
            header = _header(path)
            writer = csv.DictWriter(file, header or list(row), extrasaction="ignore")
            if header is None:
                writer.writeheader()
            self._writers[trial] = writer
        writer.writerow(row)
        file.flush()


def _drop_torn_line(path: Path) -> None:
    """Cut a last line without its newline (a driver killed mid-write), so that appending
    continues on a line of its own; a file of complete lines is left as it is."""
    try:
        with path.open("rb+") as f:
            size = f.seek(0, 2)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)  # 0 when not one line is whole
    except FileNotFoundError:
        return


def _restored_iteration(trial: Any) -> int:
    """The ``training_iteration`` of the checkpoint ``trial`` starts from (0: none)."""
    restored = trial.latest_checkpoint_result
    return int(restored.metrics.get("training_iteration", 0)) if restored is not None else 0


class _Lines:
    """A file's lines as text for a parser, with the byte offset of the end of the last one read
    (a CSV record may span lines)."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.end = raw, 0

    def __iter__(self) -> Iterator[str]:
        for line in self.raw.splitlines(keepends=True):
            self.end += len(line)
            yield line.decode("utf-8")


def _cut_rows_after(path: Path, last: int, iterations: Any) -> None:
    """Truncate ``path`` before its first record whose iteration (``iterations`` of its lines
    yields one per record, read lazily) is past ``last``; records without one are kept."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    lines, start = _Lines(raw), 0
    for iteration in iterations(lines):
        if iteration not in (None, "") and int(float(iteration)) > last:
            with path.open("rb+") as f:
                f.truncate(start)
            return
        start = lines.end


def _header(path: Path) -> list[str] | None:
    """The column names of an existing, non-empty CSV file (None when there is none)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return next(csv.reader(f), None) or None
    except FileNotFoundError:
        return None
