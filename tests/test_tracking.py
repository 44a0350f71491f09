"""W&B tracking: offline runs read back from their transaction logs; failures are warnings."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from lobsearch.errors import ConfigError, DataError
from lobsearch.space import Objective, Tracking
from lobsearch.tracking import (
    TrackingWarning,
    TrialTracker,
    WandbSettings,
    resolve_mode,
    sync_command,
)
from wandb_offline import read_offline_run

EPOCHS = [
    {"train_loss": 1.05, "val_macro_f1": 0.35, "val_accuracy": 0.50},
    {"train_loss": 0.98, "val_macro_f1": 0.39, "val_accuracy": 0.53},
    {"train_loss": 0.91, "val_macro_f1": 0.41, "val_accuracy": 0.55},
]
CONFIG = {"data": {"window": 40, "horizon": 10}, "model": {"name": "lstm", "hidden_size": 64}, "train": {"lr": 1e-3}}
SUMMARY = {"best_val_macro_f1": 0.41, "best_epoch": 3, "val_f1": {"down": 0.4, "stable": 0.45, "up": 0.38}}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No key, no network, every W&B folder inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return home


def offline(tmp_path: Path, **kw) -> WandbSettings:
    return WandbSettings(mode=kw.pop("mode", "offline"), project="lobsearch-test", entity=None, dir=tmp_path / "run", **kw)


def start(settings: WandbSettings, name: str = "a1b2_00000") -> TrialTracker:
    return TrialTracker.start(settings, group="lstm-20261126-1200", job_type="lstm", name=name, config=CONFIG)


def test_importing_tracking_does_not_import_wandb_or_ray():
    code = "import sys, lobsearch.tracking; sys.exit(' '.join({'wandb', 'ray'} & set(sys.modules)) or None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_offline_run_records_config_history_summary_and_model(tmp_path, wandb_env):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights" * 10)
    tracker = start(offline(tmp_path))
    assert tracker.active
    for epoch, metrics in enumerate(EPOCHS, start=1):
        tracker.log_epoch(metrics, step=epoch)
    folder = tracker.path
    tracker.finish(SUMMARY, artifact=checkpoint)

    assert folder.parent == (tmp_path / "run" / "wandb").resolve() and folder.name.startswith("offline-run-")
    run = read_offline_run(folder)
    assert (run["group"], run["job_type"], run["name"], run["project"]) == (
        "lstm-20261126-1200", "lstm", "a1b2_00000", "lobsearch-test")
    assert run["config"] == CONFIG
    assert [{k: row[k] for k in EPOCHS[0]} for row in run["history"]] == EPOCHS
    assert [row["_step"] for row in run["history"]] == [1, 2, 3]
    assert {k: run["summary"][k] for k in SUMMARY} == SUMMARY
    assert run["artifacts"] == [{"name": "model-a1b2_00000", "type": "model"}]
    assert run["exit_code"] == 0
    assert sync_command(tmp_path / "run") == f"wandb sync {(tmp_path / 'run' / 'wandb').resolve()}/offline-run-*"


@pytest.mark.integration
def test_finish_marks_a_failed_trial_and_is_idempotent(tmp_path, wandb_env):
    tracker = start(offline(tmp_path))
    folder = tracker.path
    tracker.finish({"error": "CUDA out of memory"}, failed=True)
    tracker.finish({"ignored": 1})
    run = read_offline_run(next(folder.glob("*.wandb")))
    assert run["exit_code"] == 1 and run["summary"]["error"] == "CUDA out of memory"
    assert "ignored" not in run["summary"]


def test_disabled_mode_records_nothing(tmp_path, wandb_env):
    tracker = start(offline(tmp_path, mode="disabled"))
    tracker.log_epoch(EPOCHS[0], step=1)
    tracker.finish(SUMMARY)
    assert not tracker.active and tracker.path is None
    assert not (tmp_path / "run" / "wandb").exists()
    assert sync_command(tmp_path / "run") is None


def test_init_failure_is_a_warning_and_a_no_op_tracker(tmp_path, wandb_env, monkeypatch):
    import wandb

    def broken_init(**_):
        raise wandb.errors.CommError("network is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(TrackingWarning, match="a1b2_00000.*CommError: network is unreachable"):
        tracker = start(offline(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.log_epoch(EPOCHS[0], step=1)
        tracker.finish(SUMMARY)
    assert not tracker.active


@pytest.mark.integration
def test_online_without_reachable_server_warns_quickly(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: like no network
    with pytest.warns(TrackingWarning, match="tracking is off"):
        tracker = start(offline(tmp_path, mode="online", init_timeout=1.0))
    tracker.log_epoch(EPOCHS[0], step=1)
    tracker.finish(SUMMARY)
    assert not tracker.active


@pytest.mark.integration
def test_a_failing_log_warns_once_and_the_run_still_finishes(tmp_path, wandb_env):
    tracker = start(offline(tmp_path))
    folder = tracker.path

    def broken_log(*_, **__):
        raise OSError("disk full")

    tracker.run.log = broken_log
    with pytest.warns(TrackingWarning, match="W&B log failed.*OSError: disk full") as caught:
        for epoch, metrics in enumerate(EPOCHS, start=1):
            tracker.log_epoch(metrics, step=epoch)
    assert len([w for w in caught if w.category is TrackingWarning]) == 1
    tracker.finish(SUMMARY)
    run = read_offline_run(folder)
    assert run["history"] == [] and run["summary"]["best_val_macro_f1"] == 0.41 and run["exit_code"] == 0


@pytest.mark.integration
def test_read_offline_run_tolerates_a_torn_tail_and_rejects_other_files(tmp_path, wandb_env):
    tracker = start(offline(tmp_path))
    for epoch, metrics in enumerate(EPOCHS, start=1):
        tracker.log_epoch(metrics, step=epoch)
    log = next(tracker.path.glob("*.wandb"))
    tracker.finish(SUMMARY)
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(log.read_bytes()[:-40])
    assert read_offline_run(torn)["config"] == CONFIG
    assert read_offline_run(torn)["exit_code"] is None
    (tmp_path / "other.wandb").write_bytes(b"PK\x03\x04 not a log")
    with pytest.raises(DataError, match="other.wandb: not a W&B transaction log"):
        read_offline_run(tmp_path / "other.wandb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no W&B transaction log"):
        read_offline_run(tmp_path / "empty")


def test_settings_need_a_resolved_mode_and_make_the_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert WandbSettings(mode="offline", project="p", entity=None, dir=Path("runs/x")).dir == tmp_path / "runs" / "x"
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        WandbSettings(mode="auto", project="p", entity=None, dir=tmp_path)


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_modes_stay(mode, wandb_env):
    assert resolve_mode(mode) == mode


def test_auto_is_offline_without_a_key(wandb_env):
    assert resolve_mode("auto") == "offline"


def test_auto_is_online_with_an_api_key_in_the_environment(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"


def test_auto_follows_wandb_mode_in_the_environment(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("auto") == "offline"


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("api.wandb.ai", "online"), ("api.forge.coreweave.com", "online"), ("github.com", "offline")],
)
def test_auto_reads_the_netrc_entry_of_the_wandb_host(machine, expected, wandb_env):
    netrc = wandb_env / ".netrc"
    netrc.write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    assert resolve_mode("auto") == expected


def test_auto_reads_a_netrc_entry_for_a_custom_server(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    (wandb_env / ".netrc").write_text(f"machine wandb.example.com login user password {'k' * 40}\n")
    (wandb_env / ".netrc").chmod(0o600)
    assert resolve_mode("auto") == "online"


def test_auto_reads_the_api_key_of_the_settings_file(tmp_path, wandb_env):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings").write_text("[default]\napi_key = " + "k" * 40 + "\n")
    assert resolve_mode("auto") == "online"


def test_an_unknown_mode_names_the_field_and_the_closest_choice():
    with pytest.raises(ConfigError, match=r"(?s)tracking.wandb.*unknown W&B mode 'ofline'; did you mean 'offline'\?"):
        resolve_mode("ofline")


def tune_result(epoch: int, metrics: dict) -> dict:
    """A result as Ray Tune hands it to callbacks: the trial's metrics plus Tune's bookkeeping."""
    return {**metrics, "epoch": epoch, "fit_status": "running", "training_iteration": epoch, "timestamp": 1795693019,
            "time_this_iter_s": 2.5, "pid": 4242, "done": False, "trial_id": "a1b2_00000", "n_params": 12_345,
            "torch_version": "2.13.0", "data_hash": "0123456789abcdef", "seed": "0"}


def fake_search(tmp_path: Path, mode: str) -> SimpleNamespace:
    def run_config(params):
        return SimpleNamespace(model_dump=lambda mode: {"data": {"window": params["data.window"]}, "model": {"name": "lstm"}})

    space = SimpleNamespace(spec=SimpleNamespace(tracking=Tracking(wandb=mode, project="lobsearch-test"), objective=Objective()),
                            families=["lstm"], run_config=run_config)
    return SimpleNamespace(space=space, name="lstm-20261126-1200", run_dir=tmp_path / "run",
                           metric="val_macro_f1", sign=1)


@pytest.mark.integration
def test_the_tune_callback_records_one_run_per_trial(tmp_path, wandb_env):
    from lobsearch.tracking import WandbCallback

    callback = WandbCallback.for_search(fake_search(tmp_path, "offline"))
    checkpoint = tmp_path / "checkpoint_000002"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"weights")
    ok = SimpleNamespace(trial_id="a1b2_00000", config={"data.window": 40}, checkpoint=SimpleNamespace(path=str(checkpoint)))
    bad = SimpleNamespace(trial_id="a1b2_00001", config={"data.window": 80}, checkpoint=None, error_file=str(tmp_path / "error.txt"))
    (tmp_path / "error.txt").write_text("Traceback ...\nlobsearch.trial.TrialFailed: loss is nan at epoch 2\n")
    for trial in (ok, bad):
        callback.on_trial_start(iteration=0, trials=[ok, bad], trial=trial)
    epochs = [EPOCHS[0], EPOCHS[2], EPOCHS[1]]  # the best epoch (the 2nd) is not the last
    for epoch, metrics in enumerate(epochs, start=1):
        callback.on_trial_result(iteration=epoch, trials=[ok, bad], trial=ok, result=tune_result(epoch, metrics))
    callback.on_trial_complete(iteration=4, trials=[ok, bad], trial=ok)
    callback.on_trial_error(iteration=4, trials=[ok, bad], trial=bad)
    callback.on_experiment_end(trials=[ok, bad])

    runs = {r["name"]: r for r in map(read_offline_run, (tmp_path / "run" / "wandb").glob("offline-run-*"))}
    assert set(runs) == {"a1b2_00000", "a1b2_00001"}
    good = runs["a1b2_00000"]
    assert good["group"] == "lstm-20261126-1200" and good["job_type"] == "lstm"
    assert good["config"] == {"params": {"data.window": 40}, "data": {"window": 40}, "model": {"name": "lstm"}}
    assert [{k: v for k, v in row.items() if not k.startswith("_")} for row in good["history"]] == [
        {**m, "epoch": e, "n_params": 12_345} for e, m in enumerate(epochs, start=1)]
    assert good["summary"]["best_val_macro_f1"] == 0.41 and good["summary"]["best_epoch"] == 2
    assert good["summary"]["best_train_loss"] == 0.91, "the summary is the best epoch's row, not the last's"
    assert (good["summary"]["torch_version"], good["summary"]["data_hash"]) == ("2.13.0", "0123456789abcdef")
    assert good["artifacts"] == [] and good["exit_code"] == 0, "only the best configuration's run carries the model"
    failed = runs["a1b2_00001"]
    assert failed["exit_code"] == 1 and failed["summary"]["error"].endswith("loss is nan at epoch 2")


def test_the_tune_callback_is_off_when_disabled_and_survives_pickling(tmp_path, wandb_env):
    from lobsearch.tracking import WandbCallback

    assert WandbCallback.for_search(fake_search(tmp_path, "disabled")) is None
    callback = WandbCallback.for_search(fake_search(tmp_path, "auto"))
    assert callback.settings.mode == "offline" and callback.settings.dir == (tmp_path / "run").resolve()
    callback.run_config = None  # the fake space's closures are not the point: Tune pickles the callback itself
    restored = pickle.loads(pickle.dumps(callback))
    assert type(restored) is WandbCallback and restored.settings == callback.settings


def test_the_run_book_stops_trying_after_a_failed_start(tmp_path, wandb_env, monkeypatch):
    import wandb

    from lobsearch.tracking import RunBook

    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs["name"])
        raise wandb.errors.CommError("timed out")

    monkeypatch.setattr(wandb, "init", unreachable)
    book = RunBook(offline(tmp_path, mode="online"), "lstm-20261126-1200")
    with pytest.warns(TrackingWarning) as caught:
        for i in range(3):
            book.start(f"a1b2_0000{i}", "lstm", {"params": {}})
    assert [str(w.message) for w in caught] == [
        "W&B tracking is off for trial 'a1b2_00000': CommError: timed out",
        "W&B tracking is off for the rest of this search",
    ]
    for i in range(3):
        book.log(f"a1b2_0000{i}", EPOCHS[0], 1)
        book.close(f"a1b2_0000{i}", {}, False)
    assert calls == ["a1b2_00000"] and book.trackers == {}


def test_a_trial_started_again_after_a_retry_goes_on_in_its_own_run(tmp_path, wandb_env):
    """Tune starts a retried trial again (a lost node): one run, closed once, its history moving
    forward from the epochs it had (the repeated ones keep their first report)."""
    from lobsearch.tracking import RunBook

    book = RunBook(offline(tmp_path), "lstm-20261126-1200")
    book.start("a1b2_00000", "lstm", {"params": {}})
    for epoch in (1, 2, 3):
        book.log("a1b2_00000", {"val_macro_f1": epoch / 10}, epoch)
    book.start("a1b2_00000", "lstm", {"params": {}})  # retried from its checkpoint of epoch 1
    for epoch in (2, 3, 4):
        book.log("a1b2_00000", {"val_macro_f1": epoch / 10 + 0.05}, epoch)
    book.close("a1b2_00000", {}, False)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = read_offline_run(runs[0])
    assert run["exit_code"] == 0 and book.trackers == {}
    assert [(row["_step"], row["val_macro_f1"]) for row in run["history"]] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.45)]


@pytest.mark.integration
def test_the_callback_child_forwards_its_warnings_and_closes_open_runs_at_its_end(tmp_path, wandb_env, monkeypatch):
    """W&B runs in the callback's child process: a failed start there is a TrackingWarning here,
    before ``wait`` returns; a run left open when the driver stops sending is closed as failed."""
    from lobsearch.tracking import WandbCallback

    callback = WandbCallback.for_search(fake_search(tmp_path, "offline"))
    trials = [SimpleNamespace(trial_id=f"a1b2_0000{i}", config={"data.window": 40}, checkpoint=None) for i in range(2)]
    for trial in trials:
        callback.on_trial_start(iteration=0, trials=trials, trial=trial)
        callback.on_trial_result(iteration=1, trials=trials, trial=trial, result=tune_result(1, EPOCHS[0]))
    callback.on_trial_complete(iteration=1, trials=trials, trial=trials[0])
    assert callback.runs.close(60), "the child ends with its input, running what it was sent first"
    runs = {r["name"]: r for r in map(read_offline_run, (tmp_path / "run" / "wandb").glob("offline-run-*"))}
    assert runs["a1b2_00000"]["exit_code"] == 0 and runs["a1b2_00000"]["summary"]["best_val_macro_f1"] == 0.35
    assert runs["a1b2_00001"]["exit_code"] == 1
    assert runs["a1b2_00001"]["summary"]["error"] == "the search stopped before this trial ended"

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: like no network
    online = WandbCallback.for_search(fake_search(tmp_path, "online"))
    online.runs.args = (offline(tmp_path, mode="online", init_timeout=1.0), "g")
    with pytest.warns(TrackingWarning) as caught:
        online.on_trial_start(iteration=0, trials=trials, trial=trials[0])
        assert online.wait(60)
    assert [str(w.message) for w in caught][-1] == "W&B tracking is off for the rest of this search"
    assert online.runs.close(30)


def test_the_tune_hooks_leave_w_and_b_out_of_the_driver(tmp_path, wandb_env):
    """The hooks pickle a message to the child: the driver never imports wandb, and a thousand
    epochs' hooks take milliseconds."""
    code = """
import sys, time
from types import SimpleNamespace
from lobsearch.space import Objective, Tracking
from lobsearch.tracking import WandbCallback
space = SimpleNamespace(spec=SimpleNamespace(tracking=Tracking(wandb="disabled"), objective=Objective()),
                        families=["lstm"], run_config=lambda p: SimpleNamespace(model_dump=lambda mode: {}))
from lobsearch.tracking import WandbSettings
callback = WandbCallback(WandbSettings(mode="offline", project="p", entity=None, dir=sys.argv[1]), group="g",
                         metric="val_macro_f1", sign=1, families=("lstm",), run_config=space.run_config)
trial = SimpleNamespace(trial_id="t0", config={}, checkpoint=None)
started = time.perf_counter()
callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
for epoch in range(1, 1001):
    callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial,
                             result={"epoch": epoch, "val_macro_f1": 0.3, "training_iteration": epoch})
callback.on_trial_complete(iteration=1000, trials=[trial], trial=trial)
hooks_s = time.perf_counter() - started
assert callback.wait(120)
print(hooks_s, "wandb" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    hooks_s, imported = done.stdout.split()
    assert imported == "False" and float(hooks_s) < 5.0


@pytest.mark.integration
def test_numpy_values_paths_and_tuples_are_recorded_as_plain_json(tmp_path, wandb_env):
    import numpy as np

    tracker = TrialTracker.start(offline(tmp_path), group="g", job_type="lstm", name="a1b2_00000",
                                 config={"export": tmp_path / "export", "shape": (40, 98), "lr": np.float32(0.5)})
    folder = tracker.path
    tracker.log_epoch({"val_macro_f1": np.float64(0.375), "samples": np.int64(4096)}, step=1)
    tracker.finish({"best_epoch": np.int64(1), "f1": np.array([0.25, 0.5])})
    run = read_offline_run(folder)
    assert run["config"] == {"export": str(tmp_path / "export"), "shape": [40, 98], "lr": 0.5}
    assert {k: run["history"][0][k] for k in ("val_macro_f1", "samples")} == {"val_macro_f1": 0.375, "samples": 4096}
    assert run["summary"]["best_epoch"] == 1 and run["summary"]["f1"] == [0.25, 0.5]


