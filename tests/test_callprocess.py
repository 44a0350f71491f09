"""lobsearch.callprocess: calls run in order in a child process, failures come back as warnings,
a child that dies makes later calls no-ops, and the object pickles unstarted."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest

from lobsearch.callprocess import CallProcess


class Recorder:
    """A target for the child: appends to a file, so the test reads what ran and in what order."""

    def __init__(self, path: str) -> None:
        self.path = path

    def add(self, text: str) -> None:
        print("noise on stdout must not reach the protocol")
        with open(self.path, "a") as out:
            out.write(text + "\n")

    def fail(self) -> None:
        raise RuntimeError("planted")

    def warn(self, text: str) -> None:
        warnings.warn(text, RuntimeWarning, stacklevel=1)

    def die(self) -> None:
        import os

        os._exit(3)

    def end(self) -> None:
        self.add("end")


@pytest.fixture(autouse=True)
def importable_here(monkeypatch):
    """The child imports this module by name: put tests/ on its path."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_calls_run_in_order_and_the_end_runs_at_the_end_of_input(tmp_path):
    out = tmp_path / "calls.txt"
    calls = CallProcess(f"{__name__}:Recorder", str(out))
    for i in range(200):
        calls.submit("add", f"call {i}")
    assert calls.wait(60)
    assert lines(out) == [f"call {i}" for i in range(200)]
    assert calls.close(60) and lines(out)[-1] == "end"
    calls.submit("add", "after close")  # a new child
    assert calls.wait(60) and calls.close(60)
    assert lines(out)[-2:] == ["after close", "end"]


def test_a_failing_call_and_a_warning_come_back_as_warnings_and_the_next_call_runs(tmp_path):
    out = tmp_path / "calls.txt"
    calls = CallProcess(f"{__name__}:Recorder", str(out))
    with pytest.warns(UserWarning, match="fail failed in the child process: RuntimeError: planted"):
        calls.submit("fail")
        calls.submit("add", "after")
        assert calls.wait(60)
    with pytest.warns(RuntimeWarning, match="from the child"):
        calls.submit("warn", "from the child")
        assert calls.wait(60)
    assert lines(out) == ["after"]
    assert calls.close(60)


def test_a_child_that_dies_makes_later_calls_no_ops_after_one_warning(tmp_path):
    out = tmp_path / "calls.txt"
    calls = CallProcess(f"{__name__}:Recorder", str(out))
    calls.submit("add", "before")
    with pytest.warns(UserWarning, match="exited \\(code 3\\) before its calls ran"):
        calls.submit("die")
        assert not calls.wait(60)
    calls.submit("add", "dropped")
    assert not calls.wait(1) and lines(out) == ["before"]
    assert not calls.close(10)


def test_a_target_that_cannot_be_built_is_one_warning(tmp_path):
    calls = CallProcess("lobsearch.no_such_module:Nothing")
    with pytest.warns(UserWarning) as caught:
        calls.submit("add", "x")
        calls.submit("add", "y")
        assert not calls.wait(60)
    assert [str(w.message).split(":")[0] for w in caught] == [
        "lobsearch.no_such_module", "the process running lobsearch.no_such_module"]


def test_it_pickles_unstarted_with_its_target(tmp_path):
    out = tmp_path / "calls.txt"
    calls = CallProcess(f"{__name__}:Recorder", str(out))
    calls.submit("add", "one")
    restored = pickle.loads(pickle.dumps(calls))
    assert (restored.target, restored.args) == (calls.target, calls.args) and restored._child is None
    assert calls.close(60)
    restored.submit("add", "two")
    assert restored.close(60)
    assert lines(out) == ["one", "end", "two", "end"]
