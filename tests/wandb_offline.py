"""Read back what an offline W&B run recorded, from its ``.wandb`` transaction log (no network).

wandb has no public reader for offline runs (``wandb sync`` uploads them; ``wandb.Api`` reads the
server), so the tests decode the log's protobuf records here. The log's framing is read by
``lobsearch.tracking._log_records``, which the library itself needs to wait for a run's exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lobsearch.errors import DataError
from lobsearch.tracking import _log_records


def read_offline_run(run_path: Path) -> dict:
    """What an offline run recorded, read from its ``.wandb`` transaction log.

    ``run_path`` is the ``offline-run-*`` folder or its ``.wandb`` file. Returns a dict with
    ``id``, ``project``, ``group``, ``job_type``, ``name``, ``config`` (nested dict),
    ``history`` (one dict per ``log`` call, W&B's ``_step``/``_runtime``/``_timestamp`` included),
    ``summary``, ``artifacts`` (``{"name", "type"}`` each) and ``exit_code`` (None if the run
    never finished). Raises DataError when the file is missing or not a W&B transaction log.
    """
    from wandb.proto import wandb_internal_pb2

    run = {"config": {}, "history": [], "summary": {}, "artifacts": [], "exit_code": None}
    for payload in _log_records(transaction_log(Path(run_path))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        apply_record(run, record)
    run["config"].pop("_wandb", None)
    run["summary"].pop("_wandb", None)
    return run


def transaction_log(run_path: Path) -> Path:
    """``run_path`` itself when it is a ``.wandb`` file, else the first ``*.wandb`` in the folder."""
    found = [run_path] if run_path.suffix == ".wandb" else sorted(run_path.glob("*.wandb"))
    if not found or not found[0].is_file():
        raise DataError(f"{run_path}: no W&B transaction log (*.wandb) found")
    return found[0]


def apply_record(run: dict, record: Any) -> None:
    """Fold one protobuf ``Record`` (run, config, history, summary, artifact, exit) into ``run``."""
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        run.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type, name=r.display_name)
        apply_items(run["config"], r.config.update)
    elif kind == "config":
        apply_items(run["config"], record.config.update)
    elif kind == "history":
        row: dict = {}
        apply_items(row, record.history.item)
        run["history"].append(row)
    elif kind == "summary":
        apply_items(run["summary"], record.summary.update)
    elif kind == "artifact":
        run["artifacts"].append({"name": record.artifact.name, "type": record.artifact.type})
    elif kind == "exit":
        run["exit_code"] = record.exit.exit_code


def apply_items(target: dict, items: Any) -> None:
    """Set each ``(key | nested_key, value_json)`` item into ``target``, nesting by key path."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
