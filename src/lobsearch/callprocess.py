"""A child process that runs submitted method calls in order, off the calling process's GIL.

``CallProcess("package.module:Class", *args)`` starts ``python -m lobsearch.callprocess`` on
its first ``submit``; the child builds ``Class(*args)`` and runs every submitted call on it, one
at a time, in the order submitted. ``submit`` never blocks (a sender thread writes the pickled
calls to the child's stdin); ``wait`` blocks until every call submitted before it has run.

Why a process and not a thread: the calls it exists for (W&B's ``wandb.init``, ``log`` and
``finish``, ``lobsearch.tracking.RunBook``) run Python in the calling process, about 100 ms of
CPU per trial on the 2-core bench machine, and on a driver thread they hold the GIL that Tune's
event loop needs (40 % of the driver's Python samples in a 150-trial replay, py-spy). In a child
they use a core of their own, and a call costs the driver one small pickle. The child also
outlives a killed caller: at the end of its input it runs the calls it was given, then the
target's ``end()`` when it has one, and exits.

In the child a call that raises, and every warning, is sent back and issued in the caller as a
warning of the same category (``UserWarning`` when that category cannot be imported there),
before ``wait`` returns. The child ignores SIGINT (a Ctrl-C meant for the search reaches the
whole process group): it ends with its input. Its stdout carries the protocol, so anything
printed there goes to its stderr. A child that cannot start, or exits early, makes later calls
no-ops after one warning.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, BinaryIO

_SYNC = "__sync__"
"""The method name of ``wait``'s marker call."""


class CallProcess:
    """Runs ``target``'s methods in a child process (see the module's docstring).

    ``target`` is ``"module:Class"``; ``args`` (picklable) build it in the child. Pickles as a
    new, unstarted CallProcess of the same target (Tune pickles its callbacks with the
    experiment).
    """

    def __init__(self, target: str, *args: Any) -> None:
        self.target, self.args = target, args
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._synced: dict[int, threading.Event] = {}
        self._next_sync = 0
        self._child: subprocess.Popen | None = None
        self._failed = False

    def submit(self, method: str, *args: Any) -> None:
        """Queue ``target.method(*args)``; returns at once."""
        if self._start():
            self._outbox.put((method, args))

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the calls submitted so far have run; False when ``timeout_s`` passed first
        or the child is gone."""
        with self._lock:
            if self._child is None or self._failed:
                return self._child is None
            self._next_sync += 1
            token, done = self._next_sync, threading.Event()
            self._synced[token] = done
        self._outbox.put((_SYNC, (token,)))
        return done.wait(timeout_s) and not self._failed

    def close(self, timeout_s: float | None = None) -> bool:
        """Let the child run what was submitted, then end it (a later ``submit`` starts a new
        one); False when it was still running after ``timeout_s``, or gone before."""
        with self._lock:
            child, outbox, failed = self._child, self._outbox, self._failed
            self._child, self._outbox, self._failed = None, queue.SimpleQueue(), False
        if child is None:
            return not failed
        outbox.put(None)  # the sender closes the child's stdin: its end of input
        try:
            code = child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return code == 0 and not failed

    def _start(self) -> bool:
        with self._lock:
            if self._child is not None or self._failed:
                return not self._failed
            try:
                self._child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, env=_child_environment())
            except OSError as error:
                self._failed = True
                warnings.warn(f"could not start the process for {self.target} ({error}): its calls are dropped",
                              UserWarning, stacklevel=3)
                return False
            self._outbox.put(("__init__", (self.target, self.args)))
            threading.Thread(target=self._send, args=(self._outbox, self._child.stdin), name="callprocess-send",
                             daemon=True).start()
            threading.Thread(target=self._receive, args=(self._child,), name="callprocess-receive",
                             daemon=True).start()
            return True

    def _send(self, outbox: queue.SimpleQueue, stream: BinaryIO) -> None:
        while (call := outbox.get()) is not None:
            try:
                pickle.dump(call, stream, protocol=pickle.HIGHEST_PROTOCOL)
                stream.flush()
            except (OSError, ValueError):
                return  # the child is gone: _receive reports it
            except pickle.PicklingError as error:
                warnings.warn(f"{self.target}.{call[0]}: not sent ({error})", UserWarning, stacklevel=2)
        stream.close()

    def _receive(self, child: subprocess.Popen) -> None:
        while True:
            try:
                kind, payload = pickle.load(child.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            if kind == "warning":
                category, message = payload
                warnings.warn(message, _category(category), stacklevel=2)
            elif kind == "synced":
                with self._lock:
                    done = self._synced.pop(payload, None)
                if done is not None:
                    done.set()
        code = child.wait()
        with self._lock:
            current = self._child is child  # not a child that close() already ended
            waiting = list(self._synced.values()) if current else []
            early = current and (bool(waiting) or code != 0)
            if current:
                self._synced, self._failed = {}, self._failed or early
        if early:
            warnings.warn(f"the process running {self.target} exited (code {code}) before its calls ran: "
                          "later calls are dropped", UserWarning, stacklevel=2)
        for done in waiting:
            done.set()

    def __getstate__(self) -> dict:
        return {"target": self.target, "args": self.args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["target"], *state["args"])


def _child_environment() -> dict[str, str]:
    """This environment, with the folder this lobsearch was imported from first on the child's
    path: the child runs the caller's code, installed or not."""
    here = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, path] if path else [here])}


def _category(name: str) -> type[Warning]:
    module, _, qualname = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError, ValueError):
        return UserWarning
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def _serve(calls: BinaryIO, replies: BinaryIO) -> int:
    """The child's loop: build the target, run each call, answer syncs, forward warnings."""
    reply_lock = threading.Lock()

    def reply(kind: str, payload: Any) -> None:
        with reply_lock:
            pickle.dump((kind, payload), replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()

    def forward(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        reply("warning", (f"{category.__module__}.{category.__qualname__}", str(message)))

    warnings.showwarning = forward  # the child's own filters apply first, as they would in the caller
    target: Any = None
    while True:
        try:
            method, args = pickle.load(calls)
        except EOFError:
            break
        if method == _SYNC:
            reply("synced", args[0])
            continue
        if method == "__init__":
            try:
                module, _, name = args[0].partition(":")
                target = getattr(importlib.import_module(module), name)(*args[1])
            except Exception as error:
                reply("warning", ("builtins.UserWarning", f"{args[0]} could not be built in the child process: "
                                                         f"{type(error).__name__}: {error}"))
                return 2
            continue
        try:
            getattr(target, method)(*args)
        except Exception as error:
            reply("warning", ("builtins.UserWarning", f"{method} failed in the child process: "
                                                     f"{type(error).__name__}: {error}"))
    try:
        end = getattr(target, "end", None)
        if callable(end):
            end()
    except Exception as error:
        reply("warning", ("builtins.UserWarning", f"end failed in the child process: {type(error).__name__}: {error}"))
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    with replies:
        return _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(main())
