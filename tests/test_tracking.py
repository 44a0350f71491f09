"""W&B tracking: offline runs read back from their transaction logs; failures are warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lobsearch.errors import ConfigError, DataError
from lobsearch.tracking import (
    TrackingWarning,
    TrialTracker,
    WandbSettings,
    read_offline_run,
    resolve_mode,
    sync_command,
)

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


def test_importing_tracking_does_not_import_wandb():
    code = "import sys, lobsearch.tracking; sys.exit('wandb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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


def test_online_without_reachable_server_warns_quickly(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: like no network
    with pytest.warns(TrackingWarning, match="tracking is off"):
        tracker = start(offline(tmp_path, mode="online", init_timeout=1.0))
    tracker.log_epoch(EPOCHS[0], step=1)
    tracker.finish(SUMMARY)
    assert not tracker.active


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
