"""The run folder: one driver at a time, a record that resumes on the right data, no foreign pickles."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lobsearch import runfolder
from lobsearch.errors import DataError
from lobsearch.tune import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def _lock(run_dir: Path, pid: int, host: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runfolder.LOCK).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "since": 0}))


def test_a_live_driver_keeps_the_folder_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "s"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            _lock(run_dir, other.pid)
            with pytest.raises(DataError, match=f"in use by another driver .*pid {other.pid}"):
                with runfolder.claimed(run_dir):
                    pass
        finally:
            other.kill()
    other.wait()
    with runfolder.claimed(run_dir):  # its process is gone: the lock is stale
        holder = json.loads((run_dir / runfolder.LOCK).read_text())
        assert holder["pid"] == os.getpid()
    assert not (run_dir / runfolder.LOCK).exists()


def test_a_lock_from_another_host_is_respected(tmp_path: Path) -> None:
    _lock(tmp_path / "s", 1, host="some-other-host")
    with pytest.raises(DataError, match="host some-other-host"):
        with runfolder.claimed(tmp_path / "s"):
            pass


def test_a_refused_search_leaves_no_folder_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(SMOKE), "--data", str(tmp_path / "missing"), "--storage", str(tmp_path / "runs"), "--name", "x"])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()


def test_a_tune_experiment_lobsearch_did_not_record_is_not_resumed(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "runs" / "x"
    foreign.mkdir(parents=True)
    (foreign / "tuner.pkl").write_bytes(b"not to be unpickled")
    code = main([str(SMOKE), "--storage", str(tmp_path / "runs"), "--name", "x", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "did not record" in err and "can run code" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["tuner.pkl"]


def test_resume_refuses_other_data_than_recorded(tmp_path: Path, small_export: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    from lobsearch.space import load_space

    spec = load_space(SMOKE).spec.model_dump(mode="json")
    runfolder.write_record(run_dir, name="x", space_source=str(SMOKE), space_name="smoke", space=spec,
                           export=small_export, storage=str(tmp_path / "runs"))
    code = main([str(SMOKE), "--data", str(tmp_path), "--storage", str(tmp_path / "runs"), "--name", "x", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and f"was started on {small_export}" in err


def test_an_unwritable_storage_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main([str(SMOKE), "--storage", str(blocker), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and str(blocker) in err and "Traceback" not in err


def test_a_resume_without_a_record_has_nothing_to_continue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(SMOKE), "--storage", str(tmp_path / "runs"), "--name", "none", "--resume"])
    assert code == 2 and "nothing to continue" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "none").exists()


def test_a_restored_progress_callback_reports_with_the_resuming_drivers_plan() -> None:
    """Tune pickles the callbacks with the experiment; after a resume they must use the new
    driver's plan (its clock and printer), not the one the search was started with."""
    import dataclasses
    import pickle
    import time

    from lobsearch.plan import Plan
    from lobsearch.space import load_space
    from lobsearch.tuner import ACTIVE_PLANS, Progress

    said: dict[str, list[str]] = {"first": [], "second": []}
    first = Plan(space=load_space(SMOKE), export=Path("/e"), name="p", storage="/s", run_dir=Path("/s/p"),
                 resume=False, address=None, metric="val_macro_f1", mode="max", sign=1, max_epochs=2,
                 gpus_per_trial=0.0, started=time.monotonic() - 3600, started_at="t", say=said["first"].append)
    pickled = pickle.dumps(Progress(first))
    ACTIVE_PLANS["p"] = dataclasses.replace(first, started=time.monotonic(), say=said["second"].append)
    restored = pickle.loads(pickled)
    restored.on_experiment_end(trials=[])
    assert said["first"] == [] and len(said["second"]) == 1 and "elapsed 00:0" in said["second"][0]
