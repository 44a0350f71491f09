"""W&B tracking: one run per trial, grouped by search, that never breaks a trial.

W&B only observes. ``wandb`` is imported when a run starts, not when this module is imported,
so a search with tracking disabled never loads it. Every W&B failure (no network, a bad key, a
missing package) becomes a ``TrackingWarning`` and a tracker that does nothing.

Two ways to use it: ``TrialTracker`` inside any process that trains, or ``WandbCallback``, a Ray
Tune callback that records each trial as Tune reports its results (so trial processes never start
W&B). The callback's W&B calls run in order in one child process of the driver, which keeps one
``TrialTracker`` per trial (``RunBook``, run by ``lobsearch.callprocess``): Tune's event loop never
waits on ``wandb.init`` (about 50 ms) or a run's finish (about 20 ms) while trials are waiting to
start, and W&B's Python never holds the driver's GIL. Offline runs are written under
``<run dir>/wandb/offline-run-*`` (``sync_command`` prints how to upload them).

Why not Ray's ``WandbLoggerCallback`` (ray 2.60): besides id, name and group, ``log_trial_start``
passes ``wandb.init`` the constructor's ``**kwargs``, the same for every trial, so a per-trial job
type means rewriting it around the private ``_start_logging_actor``; ``wandb.init`` runs in a
logging actor, so a failed start is only an unhandled error of that actor's task (no warning, and
the next trial tries again); ``log_trial_end`` ignores ``failed``; and each trial costs two Ray
worker processes (the logging actor and its ``Queue`` actor), each logging actor its W&B service.
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import math
import netrc
import os
import shlex
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lobsearch.errors import ConfigError, DataError, unknown_choice
from lobsearch.files import plain
from lobsearch.provenance import KEYS as PROVENANCE_KEYS

MODES = ("auto", "online", "offline", "disabled")
"""Values of ``tracking.wandb`` in a search-space file."""

DEFAULT_BASE_URL = "https://api.forge.coreweave.com"
"""wandb 0.31's default server; its keys may also be stored under the upstream W&B host."""

UPSTREAM_HOSTS = {"api.forge.coreweave.com": "api.wandb.ai", "forge.coreweave.com": "api.wandb.ai"}


class TrackingWarning(UserWarning):
    """W&B could not record something; the trial goes on without it."""


def resolve_mode(requested: str) -> str:
    """The W&B mode to run in: ``auto`` becomes ``online`` with an API key, else ``offline``.

    ``auto`` follows ``WANDB_MODE`` when that is set to a mode (``dryrun`` means offline). An API
    key counts as configured when ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE`` is set, the
    netrc file has an entry for the W&B host, or the wandb settings file holds ``api_key``.
    Raises ConfigError for a value outside ``MODES``.
    """
    if requested not in MODES:
        raise ConfigError("tracking.wandb", [unknown_choice("W&B mode", requested, MODES)])
    if requested != "auto":
        return requested
    env_mode = {"dryrun": "offline"}.get(os.environ.get("WANDB_MODE", ""), os.environ.get("WANDB_MODE", ""))
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    return "online" if api_key_configured() else "offline"


def api_key_configured() -> bool:
    """Whether W&B would find credentials here (environment, netrc or settings file); no network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    settings = _settings_file()
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_BASE_URL
    return _netrc_has_key(base_url) or bool(settings.get("api_key"))


def _settings_file() -> dict[str, str]:
    """The ``[default]`` section of the global wandb settings file, or {} when absent/unreadable."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb"
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_dir) / "settings")
    except (configparser.Error, OSError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _netrc_has_key(base_url: str) -> bool:
    """Whether the netrc file (``$NETRC``, ``~/.netrc`` or ``~/_netrc``) has a password for the host."""
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    path = next((p for p in (Path(c).expanduser() for c in candidates) if p.is_file()), None)
    if path is None:
        return False
    try:
        entries = netrc.netrc(path)
    except (netrc.NetrcParseError, OSError):
        return False
    host = urlsplit(base_url).netloc
    for machine in (host, UPSTREAM_HOSTS.get(host)):
        found = entries.authenticators(machine) if machine else None
        if found and found[2]:
            return True
    return False


@dataclass(frozen=True)
class WandbSettings:
    """Where and how trials are recorded.

    ``mode`` is a resolved mode (online/offline/disabled; see ``resolve_mode``). ``dir`` is the
    search's run folder, made absolute here because trials run in other working directories;
    W&B writes its runs under ``dir / "wandb"``. ``init_timeout`` is in seconds.
    """

    mode: str
    project: str
    entity: str | None
    dir: Path
    init_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            choices = ("online", "offline", "disabled")
            raise ValueError(unknown_choice("resolved W&B mode", self.mode, choices) + " (resolve 'auto' first)")
        object.__setattr__(self, "dir", Path(self.dir).expanduser().resolve())


@dataclass
class TrialTracker:
    """One W&B run for one trial; a tracker whose ``run`` is None does nothing.

    Build it with ``TrialTracker.start``. Call ``log_epoch`` after every epoch and ``finish``
    once (in a ``finally``, so a stopped trial still closes its run).
    """

    run: Any = None
    _warned: set[str] = field(default_factory=set, init=False, repr=False)
    _last_step: int = field(default=-1, init=False, repr=False)

    @classmethod
    def start(cls, settings: WandbSettings, *, group: str, job_type: str, name: str, config: dict) -> TrialTracker:
        """Start the trial's run: ``group`` = search name, ``job_type`` = model family, ``name`` = trial id.

        Never raises: a failure warns (TrackingWarning naming the cause) and returns a no-op tracker.
        """
        if settings.mode == "disabled":
            return cls()
        try:
            return cls(run=_init_run(settings, group=group, job_type=job_type, name=name, config=config))
        except Exception as error:  # wandb's CommError, UsageError, AuthenticationError, ImportError, ...
            warnings.warn(f"W&B tracking is off for trial {name!r}: {_cause(error)}", TrackingWarning, stacklevel=2)
            return cls()

    @property
    def active(self) -> bool:
        """Whether a W&B run is recording."""
        return self.run is not None

    @property
    def path(self) -> Path | None:
        """The run's folder (``.../wandb/offline-run-*`` or ``run-*``), or None when not recording."""
        return Path(self.run.settings.sync_dir) if self.run is not None else None

    def log_epoch(self, metrics: dict, step: int) -> None:
        """Record one epoch's metrics at ``step`` (the epoch number); a failure warns once.

        A step up to the last one logged is skipped: W&B's history only moves forward, so a trial
        retried from an earlier checkpoint keeps the first report of the epochs it repeats (its
        results keep the later)."""
        if self.run is not None and step > self._last_step:
            self._last_step = step
            self._guard("log", lambda: self.run.log(plain(metrics), step=step))

    def finish(self, summary: dict, artifact: Path | None = None, *, failed: bool = False) -> None:
        """Write the final summary, attach ``artifact`` (a file or folder) as a "model" artifact, close.

        ``failed`` marks the run as failed in W&B. Calling it again does nothing.
        """
        if self.run is None:
            return
        self._guard("summary", lambda: self.run.summary.update(plain(summary)))
        if artifact is not None:
            self._guard("artifact", lambda: self.run.log_artifact(_model_artifact(self.run, Path(artifact))))
        run, self.run = self.run, None
        log = Path(run.settings.sync_file)
        if self._guard("finish", lambda: run.finish(exit_code=1 if failed else 0)):
            self._guard("flush", lambda: _wait_for_exit_record(log, FLUSH_TIMEOUT_S))

    def _guard(self, what: str, action: Any) -> bool:
        """Run ``action``; on failure warn (once per ``what``) and return False."""
        try:
            action()
        except Exception as error:
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(f"W&B {what} failed (the trial goes on): {_cause(error)}", TrackingWarning, stacklevel=3)
            return False
        return True


FLUSH_TIMEOUT_S = 10.0
"""How long ``finish`` waits for W&B's service to write the run's last record (usually ~10 ms)."""


def _wait_for_exit_record(log: Path, timeout_s: float) -> None:
    """Block until the transaction log ``log`` ends the run, so a trial process may exit safely.

    ``run.finish()`` returns before W&B's service has written the log. Raises TimeoutError.
    """
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if any(_is_exit(p, wandb_internal_pb2) for p in _log_records(log)):
                return
        except (DataError, OSError):
            pass  # not created, or the header not written yet
        time.sleep(0.01)
    raise TimeoutError(f"{log}: the run's exit record was not written within {timeout_s:g} s")


def _is_exit(payload: bytes, pb: Any) -> bool:
    record = pb.Record()
    record.ParseFromString(payload)
    return record.WhichOneof("record_type") == "exit"


def _init_run(settings: WandbSettings, *, group: str, job_type: str, name: str, config: dict) -> Any:
    import wandb

    settings.dir.mkdir(parents=True, exist_ok=True)
    quiet = wandb.Settings(
        init_timeout=settings.init_timeout,
        silent=True,
        console="off",
        x_disable_stats=True,
        x_disable_machine_info=True,
        disable_git=True,
        save_code=False,
        x_save_requirements=False,
    )
    return wandb.init(
        mode=settings.mode,
        project=settings.project,
        entity=settings.entity,
        dir=str(settings.dir),
        group=group,
        job_type=job_type,
        name=name,
        config=plain(config),
        settings=quiet,
        reinit="create_new",
    )


def _model_artifact(run: Any, path: Path) -> Any:
    """A W&B artifact of type "model" named after the run, holding ``path`` (file or folder)."""
    import wandb

    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in run.name or run.id)
    artifact = wandb.Artifact(f"model-{safe}", type="model")
    if path.is_dir():
        artifact.add_dir(str(path))
    else:
        artifact.add_file(str(path))
    return artifact


def _cause(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no message'}"


TUNE_BOOKKEEPING = frozenset(
    {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
     "iterations_since_restore", "pid", "done", "trial_id", "date", "hostname", "node_ip", "experiment_tag"}
)
"""Keys Ray Tune adds to every result; they are not the model's metrics."""


def epoch_metrics(result: dict) -> dict[str, float]:
    """The finite numbers of a Tune result, without Tune's bookkeeping (booleans and text dropped)."""
    return {
        k: v for k, v in result.items()
        if k not in TUNE_BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class RunBook:
    """The W&B runs of a search's trials, by trial id: what ``WandbCallback``'s child process
    keeps (``lobsearch.callprocess``), one call at a time.

    The first trial whose run cannot start turns tracking off for the rest of the search (one
    start waits for the server's timeout: every trial's must not). ``end`` closes the runs still
    open when the driver stops sending (a killed or interrupted search) as failed.
    """

    def __init__(self, settings: WandbSettings, group: str) -> None:
        self.settings, self.group = settings, group
        self.trackers: dict[str, TrialTracker] = {}

    def start(self, trial_id: str, family: str, config: dict) -> None:
        if trial_id in self.trackers:
            return  # Tune starts a trial again after a retry (a lost node, a failure within max_failures): its run goes on
        tracker = TrialTracker.start(self.settings, group=self.group, job_type=family, name=trial_id, config=config)
        self.trackers[trial_id] = tracker
        if not tracker.active and self.settings.mode != "disabled":
            warnings.warn("W&B tracking is off for the rest of this search", TrackingWarning, stacklevel=2)
            self.settings = dataclasses.replace(self.settings, mode="disabled")

    def log(self, trial_id: str, metrics: dict, step: int) -> None:
        tracker = self.trackers.get(trial_id)
        if tracker is not None:
            tracker.log_epoch(metrics, step=step)

    def close(self, trial_id: str, summary: dict, failed: bool) -> None:
        tracker = self.trackers.pop(trial_id, None)
        if tracker is not None:
            tracker.finish(summary, failed=failed)

    def end(self) -> None:
        for trial_id in list(self.trackers):
            self.close(trial_id, {"error": "the search stopped before this trial ended"}, failed=True)


END_WAIT_S = 120.0
"""How long the end of a search waits for the W&B calls still queued (each run's finish waits
at most FLUSH_TIMEOUT_S for its last record)."""


def __getattr__(name: str) -> Any:
    # The Tune callback subclasses ray.tune.Callback; building it on first use keeps
    # `import lobsearch.tracking` free of Ray (and of wandb).
    if name == "WandbCallback":
        return _wandb_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _wandb_callback_class() -> type:
    from ray import tune

    class WandbCallback(tune.Callback):
        """One W&B run per trial, written from the driver as Tune reports each epoch.

        A run starts with the trial (group = search name, job type = model family, name = trial
        id, config = the trial's full run config), logs every result's metrics at step ``epoch``,
        and ends with a summary of the best epoch (``best_<metric>``) and the trial's provenance
        (``lobsearch.provenance.KEYS``: code, library versions, device, data hash, seed), the
        trial's last checkpoint as a "model" artifact, and failed = True when the trial errored.
        Tune's hooks only queue the W&B calls, which a child process runs in order (``RunBook``
        in ``lobsearch.callprocess.CallProcess``); the end of the experiment waits for them, and
        ``wait`` does at any time.
        """

        def __init__(self, settings: WandbSettings, *, group: str, metric: str, sign: int,
                     families: tuple[str, ...] = (), run_config: Any = None):
            from lobsearch.callprocess import CallProcess

            self.settings, self.group, self.metric, self.sign = settings, group, metric, sign
            self.families, self.run_config = tuple(families), run_config
            self.best: dict[str, dict] = {}
            self.provenance: dict[str, dict] = {}
            self.runs = CallProcess(f"{__name__}:RunBook", settings, group)

        @classmethod
        def for_search(cls, plan: Any) -> Any:
            """The callback for a search's ``lobsearch.plan.Plan``, or None when tracking is disabled."""
            settings = settings_for_search(plan)
            if settings is None:
                return None
            return cls(settings, group=plan.name, metric=plan.metric, sign=plan.sign,
                       families=tuple(plan.space.families), run_config=plan.space.run_config)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            params = dict(trial.config or {})
            family = params.get("model.name") or (self.families[0] if self.families else "model")
            self.runs.submit("start", trial.trial_id, str(family), self._config(params))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.provenance[trial.trial_id] = {k: result[k] for k in PROVENANCE_KEYS if k in result}
            metrics = epoch_metrics(result)
            if not metrics:
                return
            step = int(metrics.get("epoch", result.get("training_iteration", 0)))
            self.runs.submit("log", trial.trial_id, metrics, step)
            best = self.best.get(trial.trial_id)
            if self.metric in metrics and (best is None or self.sign * metrics[self.metric] > self.sign * best[self.metric]):
                self.best[trial.trial_id] = metrics

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, failed=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, failed=True)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            for trial in trials:
                self._finish(trial, failed=False)
            if not self.runs.close(END_WAIT_S):
                warnings.warn(f"W&B calls still queued after {END_WAIT_S:g} s at the end of the search: the last "
                              "runs may be incomplete", TrackingWarning, stacklevel=2)

        def wait(self, timeout_s: float | None = None) -> bool:
            """Block until every W&B call queued so far has run; False when ``timeout_s`` passed first."""
            return self.runs.wait(timeout_s)

        def _config(self, params: dict) -> dict:
            try:
                return {"params": params, **self.run_config(params).model_dump(mode="json")}
            except Exception:  # a config the space rejects still gets its run; the trial reports the error
                return {"params": params}

        def _finish(self, trial: Any, *, failed: bool) -> None:
            summary = {f"best_{k}": v for k, v in self.best.pop(trial.trial_id, {}).items()}
            summary.update(self.provenance.pop(trial.trial_id, {}))
            if failed:
                summary["error"] = last_error_line(trial)
            self.runs.submit("close", trial.trial_id, summary, failed)

    WandbCallback.__module__, WandbCallback.__qualname__ = __name__, "WandbCallback"
    return WandbCallback


def settings_for_search(plan: Any) -> WandbSettings | None:
    """W&B settings of a search's ``lobsearch.plan.Plan`` (runs go in its run folder); None when disabled."""
    tracking = plan.space.spec.tracking
    mode = resolve_mode(tracking.wandb)
    if mode == "disabled":
        return None
    return WandbSettings(mode=mode, project=tracking.project, entity=tracking.entity, dir=plan.run_dir)


def record_best(settings: WandbSettings, *, group: str, best: dict, config: dict, checkpoint: Path | None) -> None:
    """One more run in the search's group (job type "best"): the chosen configuration, its
    validation and test metrics with lift over the naive baselines, its re-evaluation (mean and
    interval over fresh seeds) when it won one, and its checkpoint as a "model" artifact. Like every W&B call here, a failure is a warning, never an error."""
    summary: dict[str, Any] = {"trial_id": best.get("trial_id")}
    for split in ("val", "test"):
        for key, value in (best.get(split) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                summary[f"{split}_{key}"] = value
        if split in (best.get("lift") or {}):
            summary[f"{split}_lift_macro_f1"] = best["lift"][split]
    row = best.get("reeval") or {}  # the winner of the re-evaluation: its mean over fresh seeds
    summary.update({f"reeval_{key}": row[key] for key in ("mean", "low", "high", "p_beats_rival") if row.get(key) is not None})
    if best.get("seed") is not None:
        summary["seed"] = best["seed"]
    tracker = TrialTracker.start(settings, group=group, job_type="best", name=f"{group}-best", config=config)
    tracker.finish(summary, artifact=checkpoint)


def last_error_line(trial: Any) -> str:
    """The last line of the trial's error file (Tune writes the traceback there), or a placeholder."""
    path = getattr(trial, "error_file", None)
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines() if path else []
    except OSError:
        lines = []
    return lines[-1][:500] if lines else "the trial failed (no error file)"


def sync_command(run_dir: Path) -> str | None:
    """``wandb sync <run_dir>/wandb/offline-run-*`` when offline runs exist there, else None."""
    runs = Path(run_dir).resolve() / "wandb"
    if not any(runs.glob("offline-run-*")):
        return None
    return f"wandb sync {shlex.quote(str(runs))}/offline-run-*"


# The transaction log (run-*.wandb) is a LevelDB-style log of protobuf ``Record`` messages:
# a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header
# (crc32 uint32, length uint16, type uint8); types 1 = full, 2 = first, 3 = middle, 4 = last.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_MAGIC = (b":W&B", 0xBEE1, 0)


def _log_records(path: Path) -> list[bytes]:
    """The payloads of the complete records in a LevelDB-style log; a torn tail is ignored."""
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size or _FILE_HEADER.unpack_from(data) != _MAGIC:
        raise DataError(f"{path}: not a W&B transaction log (no ':W&B' header)")
    records, pending, pos = [], b"", _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:
            pos += left
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start, pos = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        if kind == 0 or pos > len(data):
            break
        pending = data[start:pos] if kind in (1, 2) else pending + data[start:pos]
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records
