"""Every finished trial and every trial checkpoint recorded the moment Tune registers it, and a
resume's saved state made to agree.

Tune saves the experiment state a resume starts from only every so often (``lobsearch.snapshots``:
within 5 % of the driver's time, so seconds apart in a small search and about a minute apart at
1,000 trials). A driver killed between two saves resumes from the older one: trials that finished
since are run again (the state holds them running), trials that also started since are lost (the
state does not hold them), and running trials train again the epochs since the checkpoint that
save names.

So the driver appends, beside the results, one flushed JSON line per event (a killed process's
written lines survive in the page cache; a partly written last line is ignored):

- ``finished_trials.jsonl``: each finished trial, as Tune's own record of it
  (``Trial.get_json_state``: the static part with its status set to TERMINATED, and the runtime
  part with its last result and checkpoints);
- ``trial_checkpoints-<n>.jsonl``: the runtime part of a trial when Tune starts it and each time
  Tune registers a checkpoint of it (pickled, made Tune's JSON at a resume; the first time in a
  segment with its static part too), in segment ``n``, the number of experiment-state saves begun so far
  (``snapshots.saves_begun``). Tune uploads a save while the driver goes on and waits for that
  upload before its next save, so once save ``n`` has begun save ``n - 1`` is in the experiment
  folder, holding every line of the segments before ``n - 1``: those are removed. At most two
  segments exist, each a few seconds of checkpoints.

Before Tune restores the experiment, ``reconcile`` applies those lines to the files of Tune's last
save (Ray 2.60's formats, read and written as Tune does):

- ``experiment_state-*.json``: a journaled finished trial saved as unfinished is replaced by its
  journaled record; a journaled finished trial missing from the state is added; an unfinished
  trial whose last journaled checkpoint is of a later epoch than the state's gets that runtime
  record (it resumes from that checkpoint); an unfinished trial missing from the state (started
  after the save) is added with its static part and last journaled runtime record (it resumes in
  its own folder under its own id, from its last checkpoint, or from its start when it had none);
- ``searcher-state-*.pkl`` (OptunaSearch): the study is told each added or finished trial's
  result, as ``OptunaSearch.on_trial_complete`` would have been; a missing trial is added to the
  study with the parameters and distributions its configuration gives the space's define-by-run
  function (an added unfinished one as a running trial, asked with those parameters enqueued);
- ``search_gen_state-*.json``: the trial counter counts the added trials (the search still ends at
  ``num_samples``), the concurrency limiter no longer holds the finished trials as live and holds
  the added unfinished ones.

The checkpoint segments are then removed: the state holds what they held. It applies to a local
experiment folder; with remote storage the journal is written but not applied (the resume then
runs those trials and epochs again, as Tune alone would).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE = "finished_trials.jsonl"
CHECKPOINTS = "trial_checkpoints-{}.jsonl"
_SEGMENT = re.compile(r"trial_checkpoints-(\d+)\.jsonl")
TERMINATED = "TERMINATED"


def start(folder: str | Path) -> None:
    """A new search in ``folder``: a journal left there by an experiment no longer on disk is removed."""
    Path(folder, FILE).unlink(missing_ok=True)
    drop_checkpoints(folder)


def _append(path: Path, line: str) -> None:
    try:
        journal = open(path, "a", encoding="utf-8")
    except FileNotFoundError:  # the first line: the folder made once, not stat'ed at every line
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = open(path, "a", encoding="utf-8")
    with journal:
        journal.write(line + "\n")
        journal.flush()


def record(folder: str | Path, trial: Any) -> None:
    """Append ``trial`` (a Tune ``Trial`` that Tune is ending) as finished, as one JSON line."""
    static, runtime = trial.get_json_state()
    state = json.loads(static)
    state["status"] = TERMINATED
    _append(Path(folder, FILE), json.dumps({"trial_id": trial.trial_id, "state": json.dumps(state), "run": runtime}))


def record_checkpoint(folder: str | Path, trial: Any, segment: int, *, with_state: bool = False) -> None:
    """Append the runtime record of ``trial`` (a Tune ``Trial`` that Tune is starting, or whose
    newest checkpoint it has just registered) to checkpoint segment ``segment`` (the saves begun so
    far); ``with_state`` (the trial's first record in the segment) adds its static record
    (``Trial.get_json_state``'s first part), which a resume needs for a trial started after the
    save it resumes from.

    The runtime record is pickled, not Tune's JSON of it: this runs at every epoch of every trial,
    and Tune's JSON (its checkpoint manager cloudpickled into hex inside it) took 10 % of the
    driver's event loop in a 300-trial replay (py-spy); ``read_checkpoints`` makes the JSON, once,
    at a resume."""
    run = {key: value for key, value in vars(trial.run_metadata).items() if key != "_cached_json"}
    entry = {"trial_id": trial.trial_id,
             "run_pickle": base64.b64encode(pickle.dumps(run, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")}
    if with_state:
        entry["state"] = trial.get_json_state()[0]
    _append(Path(folder, CHECKPOINTS.format(segment)), json.dumps(entry))


def _run_json(entry: dict[str, str]) -> str:
    """Tune's JSON of a journaled checkpoint record (``Trial.get_json_state``'s runtime part)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    if "run_pickle" not in entry:  # a line Tune's JSON was journaled in
        return entry["run"]
    record = _TrainingRunMetadata()
    record.__dict__.update(pickle.loads(base64.b64decode(entry["run_pickle"])))
    record.invalidate_cache()
    return record.get_json_state()


def _segments(folder: str | Path) -> list[tuple[int, Path]]:
    """The checkpoint segments in ``folder`` as (number, path), oldest first."""
    found = ((_SEGMENT.fullmatch(path.name), path) for path in Path(folder).glob(CHECKPOINTS.format("*")))
    return sorted((int(match[1]), path) for match, path in found if match)


def drop_checkpoints(folder: str | Path, before: float = float("inf")) -> None:
    """Remove the checkpoint segments numbered below ``before`` (all of them by default). One that
    cannot be removed (storage turned read-only) stays: ``reconcile`` applies a journaled checkpoint
    only where it is later than the saved state's."""
    for number, path in _segments(folder):
        if number < before:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue


def _read_lines(path: Path, found: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Each trial's entry in the JSON lines of ``path`` (added to ``found``), by id: a later line
    of a trial replaces the fields it has, and keeps those only an earlier one has (the static
    part a trial's first checkpoint line in a segment carries)."""
    found = {} if found is None else found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the driver was killed while writing this line: Tune's state covers it
        found[entry["trial_id"]] = {**found.get(entry["trial_id"], {}), **entry}
    return found


def read(folder: str | Path) -> dict[str, dict[str, str]]:
    """The journaled finished trials by id, in the order they finished; a partly written last line is skipped."""
    path = Path(folder, FILE)
    return _read_lines(path) if path.is_file() else {}


def read_checkpoints(folder: str | Path) -> dict[str, dict[str, str]]:
    """Each trial's last journaled checkpoint record (``{"trial_id", "run"}``, ``run`` Tune's
    JSON of it, and ``state``, its static record, where one was journaled) by id."""
    found: dict[str, dict[str, str]] = {}
    for _, path in _segments(folder):
        _read_lines(path, found)
    records = {}
    for trial_id, entry in found.items():
        try:
            records[trial_id] = {"trial_id": trial_id, "run": _run_json(entry),
                                 **({"state": entry["state"]} if "state" in entry else {})}
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError):
            continue  # unreadable (another Ray's classes): the saved state's checkpoint of it stands
    return records


@dataclass(frozen=True)
class Reconciled:
    """What ``reconcile`` changed: ids of trials saved unfinished that the journal finished, of
    finished trials the saved state did not hold, of unfinished trials given a later checkpoint,
    and of unfinished trials the saved state did not hold (started after it, checkpointed)."""

    finished: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    advanced: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.finished or self.added or self.advanced or self.restarted)

    def line(self) -> str:
        parts = []
        if self.finished or self.added:
            parts.append(f"{len(self.finished) + len(self.added)} trials that finished after Tune's last save are "
                         f"kept from the journal ({len(self.finished)} saved as unfinished, {len(self.added)} not "
                         "saved at all); none is run again")
        if self.advanced:
            parts.append(f"{len(self.advanced)} running trials resume from their last journaled checkpoint, "
                         "later than the save's")
        if self.restarted:
            parts.append(f"{len(self.restarted)} running trials that started after the save resume under their own "
                         "id, from their last journaled checkpoint or their start")
        return "; ".join(parts)


def _newest(folder: str, pattern: str) -> str | None:
    found = glob.glob(os.path.join(glob.escape(folder), pattern))
    return max(found) if found else None  # Tune's own choice: names carry the session's timestamp


def _replace(path: str, data: bytes) -> None:
    temporary = f"{path}.lobsearch-tmp"
    with open(temporary, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def reconcile(experiment: str | Path, journal_folder: str | Path) -> Reconciled:
    """Apply the journal in ``journal_folder`` to the last save in the local ``experiment`` folder."""
    journaled, checkpoints = read(journal_folder), read_checkpoints(journal_folder)
    experiment = str(experiment)
    state_path = _newest(experiment, "experiment_state-*.json")
    if not (journaled or checkpoints) or state_path is None:
        return Reconciled()
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    saved = {json.loads(static)["trial_id"]: i for i, (static, _) in enumerate(state["trial_data"])}
    finished, added = [], []
    for trial_id, entry in journaled.items():
        if trial_id not in saved:
            state["trial_data"].append([entry["state"], entry["run"]])
            added.append(trial_id)
        elif json.loads(state["trial_data"][saved[trial_id]][0])["status"] not in (TERMINATED, "ERROR"):
            state["trial_data"][saved[trial_id]] = [entry["state"], entry["run"]]
            finished.append(trial_id)
    advanced, restarted = [], []
    for trial_id, entry in checkpoints.items():
        if trial_id in journaled:
            continue  # finished (above)
        if trial_id not in saved:
            if "state" in entry:  # started after the save: added running, as the searcher had suggested it
                state["trial_data"].append([entry["state"], entry["run"]])
                restarted.append(trial_id)
            continue
        static, run = state["trial_data"][saved[trial_id]]
        if json.loads(static)["status"] != TERMINATED and _iteration(entry["run"]) > _iteration(run):
            state["trial_data"][saved[trial_id]] = [static, entry["run"]]
            advanced.append(trial_id)
    if not finished and not added and not advanced and not restarted:
        drop_checkpoints(journal_folder)
        return Reconciled()
    changed = finished + added
    if changed or restarted:
        _tell_searcher(experiment, {trial_id: journaled[trial_id] for trial_id in changed},
                       running={trial_id: checkpoints[trial_id] for trial_id in restarted})
        _count_trials(experiment, added=len(added) + len(restarted), ended=set(changed), live=set(restarted))
    _replace(state_path, json.dumps(state).encode())  # a failure before leaves Tune's save as it was
    drop_checkpoints(journal_folder)  # last: the state now holds what they held
    return Reconciled(tuple(finished), tuple(added), tuple(advanced), tuple(restarted))


def _iteration(run: str) -> int:
    """The training iteration of a runtime record's last result (0 before its first)."""
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    return int((_loads_with_cloudpickle(run).get("last_result") or {}).get("training_iteration") or 0)


def _last_result(entry: dict[str, str]) -> dict[str, Any]:
    from ray.tune.utils import flatten_dict
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    return flatten_dict(_loads_with_cloudpickle(entry["run"]).get("last_result") or {})


def _tell_searcher(experiment: str, entries: dict[str, dict[str, str]], *,
                   running: dict[str, dict[str, str]] | None = None) -> None:
    """Each of ``entries``' last result told to the pickled OptunaSearch (the metric Tune would
    have passed); each of ``running`` (a trial it suggested after its save) asked of its study
    again with the trial's parameters, as a running trial its completion is then told to."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.utils import flatten_dict
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    path = _newest(experiment, "searcher-state-*.pkl")
    if path is None:
        return
    with open(path, "rb") as f:
        saved = pickle.load(f)
    searcher = OptunaSearch.__new__(OptunaSearch)
    searcher.__dict__.update(saved)
    for trial_id, entry in entries.items():
        result = _last_result(entry)
        if trial_id in searcher._ot_trials:
            searcher.on_trial_complete(trial_id, result=result)
            continue
        config = flatten_dict(_loads_with_cloudpickle(entry["state"]).get("config") or {}, delimiter="/")
        fixed = optuna.trial.FixedTrial(config)
        searcher._space(fixed)  # the define-by-run function: which parameters, from which distributions
        metrics = searcher.metric if isinstance(searcher.metric, list) else [searcher.metric]
        values = [result.get(metric) for metric in metrics]
        complete = all(v is not None for v in values)
        searcher._ot_study.add_trial(optuna.trial.create_trial(
            params=fixed.params, distributions=fixed.distributions,
            values=values if complete else None,
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
        ))
        searcher._completed_trials.add(trial_id)
    for trial_id, entry in (running or {}).items():
        if trial_id in searcher._ot_trials:
            continue
        config = flatten_dict(_loads_with_cloudpickle(entry["state"]).get("config") or {}, delimiter="/")
        fixed = optuna.trial.FixedTrial(config)
        searcher._space(fixed)
        searcher._ot_study.enqueue_trial(fixed.params)
        asked = searcher._ot_study.ask()
        searcher._space(asked)  # the enqueued parameters, suggested through the space's function
        searcher._ot_trials[trial_id] = asked
    _replace(path, pickle.dumps(searcher.__dict__))


def _count_trials(experiment: str, *, added: int, ended: set[str], live: set[str] = frozenset()) -> None:
    """The search generator's counter counts ``added`` more trials; no wrapper holds ``ended`` as
    live, each holds ``live`` (trials added running) as live."""
    import ray.cloudpickle as cloudpickle

    path = _newest(experiment, "search_gen_state-*.json")
    if path is None:
        return
    with open(path, "rb") as f:
        saved = cloudpickle.load(f)
    saved["counter"] += added
    for key, wrapper in saved.items():
        if key.startswith("name:") and isinstance(wrapper, dict) and isinstance(wrapper.get("live_trials"), set):
            wrapper["live_trials"] = (wrapper["live_trials"] - ended) | live
    _replace(path, cloudpickle.dumps(saved))
