"""lobsearch.trialfiles: each result is in the trial's folder of the experiment as soon as Tune
has logged it (Tune's own loggers leave it in the driver's staging folder until the next save);
a continued file keeps its columns and loses no line to a torn one."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

from lobsearch import trialfiles


class Checkpointed:
    """Tune's record of a trial's latest checkpoint: the result it was reported with."""

    def __init__(self, iteration: int):
        self.metrics = {"training_iteration": iteration}


class Trial:
    """What the loggers read of a Tune trial: its experiment folder (``path``), the driver's
    staging folder (``local_path``, where Tune's loggers write), its config and the result of the
    checkpoint it starts from (None: it starts afresh)."""

    checkpoint = latest_checkpoint_result = None

    def __init__(self, root: Path, name: str = "trial_a"):
        self.path, self.local_path = str(root / "experiment" / name), str(root / "staging" / name)
        self.config = {"model.name": "lstm", "train.learning_rate": 0.001}

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def result(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "val_macro_f1": (0.41, 0.42, 0.43)[epoch - 1], "training_iteration": epoch,
            "config": {"model.name": "lstm"}, **extra}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_result_is_in_the_experiment_folder_once_logged_unlike_tunes_loggers(tmp_path: Path):
    ours, tunes = trialfiles.callbacks(remote=False), trialfiles.callbacks(remote=True)
    for loggers, trial in ((ours, Trial(tmp_path, "ours")), (tunes, Trial(tmp_path, "tunes"))):
        trial.init_local_path()  # Tune makes it as it adds the trial
        for logger in loggers:
            logger.log_trial_start(trial)
            logger.log_trial_result(1, trial, result(1))
    folder = Path(Trial(tmp_path, "ours").path)
    assert [row["epoch"] for row in lines(folder / "result.json")] == [1], "written and flushed, files still open"
    assert list(csv.DictReader((folder / "progress.csv").open()))[0]["epoch"] == "1"
    assert json.loads((folder / "params.json").read_text()) == Trial(tmp_path).config
    assert pickle.loads((folder / "params.pkl").read_bytes()) == Trial(tmp_path).config
    tune_trial = Trial(tmp_path, "tunes")
    assert not (Path(tune_trial.path) / "result.json").exists(), "Tune's loggers write the staging folder only"
    assert [row["epoch"] for row in lines(Path(tune_trial.local_path) / "result.json")] == [1]


def test_a_trial_started_again_appends_and_keeps_the_csv_columns_of_its_header(tmp_path: Path):
    trial = Trial(tmp_path)
    loggers = trialfiles.callbacks(remote=False)
    for logger in loggers:
        logger.log_trial_start(trial)
        for epoch in (1, 2):
            logger.log_trial_result(epoch, trial, result(epoch))
    restored = pickle.loads(pickle.dumps(loggers))  # Tune pickles its callbacks; a resume restores them
    trial.latest_checkpoint_result = Checkpointed(2)
    for logger in restored:
        logger.log_trial_start(trial)
        # the keys in another order, one new: the rows stay under their columns
        logger.log_trial_result(3, trial, {"val_macro_f1": 0.43, "new_key": 1, "epoch": 3, "training_iteration": 3})
        logger.log_trial_end(trial)
    folder = Path(trial.path)
    assert [row["epoch"] for row in lines(folder / "result.json")] == [1, 2, 3]
    rows = list(csv.DictReader((folder / "progress.csv").open()))
    assert [(row["epoch"], row["val_macro_f1"]) for row in rows] == [("1", "0.41"), ("2", "0.42"), ("3", "0.43")]
    assert "new_key" not in rows[0] and "config" not in rows[0]


def test_a_line_torn_by_a_killed_driver_is_cut_before_appending(tmp_path: Path):
    trial = Trial(tmp_path)
    trial.latest_checkpoint_result = Checkpointed(1)
    folder = Path(trial.path)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result(1)) + "\n" + '{"epoch": 2, "val_ma')
    (folder / "progress.csv").write_text("epoch,val_macro_f1\n1,0.41\n2,0.4")
    for logger in trialfiles.callbacks(remote=False):
        logger.log_trial_start(trial)
        logger.log_trial_result(2, trial, result(2))
        logger.log_trial_end(trial)
    assert [row["epoch"] for row in lines(folder / "result.json")] == [1, 2]
    assert (folder / "progress.csv").read_text().splitlines() == ["epoch,val_macro_f1", "1,0.41", "2,0.42"]
    whole = Trial(tmp_path, "untorn")
    Path(whole.path).mkdir(parents=True)
    (Path(whole.path) / "result.json").write_text("torn without a newline anywhere")
    logger = trialfiles.ResultJson()
    logger.log_trial_start(whole)
    logger.log_trial_result(1, whole, result(1))
    assert [row["epoch"] for row in lines(Path(whole.path) / "result.json")] == [1]


def test_a_trial_started_again_from_its_checkpoint_loses_the_rows_past_it_and_has_each_epoch_once(tmp_path: Path):
    trial = Trial(tmp_path)
    loggers = trialfiles.callbacks(remote=False)
    for logger in loggers:
        logger.log_trial_start(trial)
        for epoch in (1, 2, 3):  # epoch 3 reported, its checkpoint not yet registered at the kill
            logger.log_trial_result(epoch, trial, result(epoch, note="a,b\nc" if epoch == 2 else ""))
    folder = Path(trial.path)
    trial.latest_checkpoint_result = Checkpointed(1)  # the checkpoint the resume restores
    for logger in pickle.loads(pickle.dumps(loggers)):
        logger.log_trial_start(trial)
        for epoch in (2, 3):
            logger.log_trial_result(epoch, trial, result(epoch, note="again"))
        logger.log_trial_end(trial)
    assert [(row["epoch"], row["note"]) for row in lines(folder / "result.json")] == [(1, ""), (2, "again"),
                                                                                      (3, "again")]
    rows = list(csv.DictReader((folder / "progress.csv").open(newline="")))
    assert [(row["epoch"], row["note"]) for row in rows] == [("1", ""), ("2", "again"), ("3", "again")]

    trial.latest_checkpoint_result = None  # retried with no checkpoint: it starts at epoch 1
    for logger in trialfiles.callbacks(remote=False):
        logger.log_trial_start(trial)
        logger.log_trial_result(1, trial, result(1, note="afresh"))
        logger.log_trial_end(trial)
    assert [(row["epoch"], row["note"]) for row in lines(folder / "result.json")] == [(1, "afresh")]
    assert [row["note"] for row in csv.DictReader((folder / "progress.csv").open(newline=""))] == ["afresh"]


def test_rows_without_an_iteration_are_kept_by_the_cut(tmp_path: Path):
    trial = Trial(tmp_path)
    folder = Path(trial.path)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"epoch": 1}\nnot json\n' + json.dumps(result(2)) + "\n")
    (folder / "progress.csv").write_text("epoch,val_macro_f1\n1,0.41\n2,0.42\n")
    for logger in trialfiles.callbacks(remote=False):
        logger.log_trial_start(trial)
        logger.log_trial_end(trial)
    assert (folder / "result.json").read_text().splitlines()[:2] == ['{"epoch": 1}', "not json"]
    assert len((folder / "result.json").read_text().splitlines()) == 2, "iteration 2 is past no checkpoint"
    assert (folder / "progress.csv").read_text().splitlines() == ["epoch,val_macro_f1", "1,0.41", "2,0.42"]
