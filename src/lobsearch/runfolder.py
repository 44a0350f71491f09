"""A search's run folder: the record of what it was started with, and one driver at a time.

``lobsearch-search.json`` records, when a search starts, the space (command-line options
applied), the export and the storage. A resume takes them from there, so the printed resume
command needs no ``--data`` and cannot resume on other data. It is also what marks a folder as
lobsearch's: resuming unpickles Tune's ``tuner.pkl`` and the searcher's state, which can run
code, so a Tune experiment without the record is refused before Ray reads any of it.

``.lobsearch.lock`` holds the host and process id of the driver using the folder; a second
driver is refused while that process lives; a lock left by a dead process on this host is
taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lobsearch import __version__
from lobsearch.errors import DataError
from lobsearch.files import dump_json

RECORD = "lobsearch-search.json"
LOCK = ".lobsearch.lock"
TUNE_STATE = ("tuner.pkl", "experiment_state*.json")
"""Files Tune leaves in an experiment folder: their presence means there is something to restore."""


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The record of the search in ``run_dir``, or None when there is none.

    Raises DataError when the record is unreadable, or when ``run_dir`` holds a Tune experiment
    that lobsearch did not write (no record): resuming it would unpickle its files.
    """
    path = run_dir / RECORD
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable lobsearch search record ({error})") from None
        if not isinstance(record, dict) or record.get("written_by") != "lobsearch":
            raise DataError(f"{path}: not a lobsearch search record (no written_by: lobsearch)")
        return record
    if has_tune_state(run_dir):
        raise DataError(
            f"{run_dir}: holds a Tune experiment that lobsearch did not record (no {RECORD}); "
            "resuming it would unpickle its files, which can run code: refusing. Use another --name "
            "or --storage"
        )
    return None


def has_tune_state(run_dir: Path) -> bool:
    """Whether Tune left experiment state in ``run_dir``."""
    return run_dir.is_dir() and any(any(run_dir.glob(pattern)) for pattern in TUNE_STATE)


def write_record(run_dir: Path, *, name: str, space_source: str, space_name: str, space: dict[str, Any],
                 export: Path, storage: str, replay: dict[str, Any] | None = None) -> Path:
    """Record what the search in ``run_dir`` starts with (atomically); returns the file.
    ``replay``: what a replay replays (``lobsearch.replay.Replay.record``), for its resume."""
    return dump_json(run_dir / RECORD, {
        "written_by": "lobsearch",
        "version": __version__,
        "name": name,
        "space_source": space_source,
        "space_name": space_name,
        "space": space,
        "export": str(export),
        "storage": storage,
        **({"replay": replay} if replay is not None else {}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir`` for this driver (creating it) while the block runs.

    Raises DataError naming the folder when it cannot be created or written, and when another
    live driver holds it (its host, process id and start time). On leaving, the lock is removed,
    and so is the folder when the block left nothing else in it (a search refused before it
    started leaves no trace).
    """
    existed = run_dir.is_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(run_dir / LOCK)
    except PermissionError as error:
        raise DataError(f"{run_dir}: cannot write the search folder here ({error.strerror}); "
                        "give a writable --storage") from None
    except OSError as error:
        raise DataError(f"{run_dir}: cannot create the search folder ({error.strerror or error}); "
                        "give a writable --storage") from None
    try:
        yield run_dir
    finally:
        # on storage that turned read-only the lock stays; a later driver takes it over as stale
        with contextlib.suppress(OSError):
            lock.unlink(missing_ok=True)
            if not existed:
                run_dir.rmdir()  # only when empty


def _take_lock(path: Path) -> Path:
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_or_clear(path)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        return path
    raise DataError(f"{path}: another driver took this search folder at the same time")


def _refuse_or_clear(path: Path) -> None:
    """Raise DataError when the lock's holder is alive (or on another host); remove a stale one."""
    try:
        holder = json.loads(path.read_text())
        host, pid = holder["host"], int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # torn or foreign: nothing can be holding it
        return
    if host == socket.gethostname() and not _alive(pid):
        path.unlink(missing_ok=True)
        return
    since = datetime.fromtimestamp(float(holder.get("since", 0)), timezone.utc).isoformat(timespec="seconds")
    raise DataError(
        f"{path.parent}: this search is in use by another driver (host {host}, pid {pid}, since {since}); "
        f"wait for it to end, or if that process is gone, delete {path}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
