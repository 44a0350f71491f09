"""``python -m lobsearch.data report``: the gate report as a table or JSON, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lobsearch.data.__main__ import main
from lobsearch.data.days import discover_export, load_day
from lobsearch.data.gating import candidate_ends, gate_rows, window_gate_counts


def report_json(export: Path, capsys, *extra: str) -> dict:
    assert main(["report", str(export), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_lists_every_day_rule_and_split_and_the_json_path(small_export, capsys):
    assert main(["report", str(small_export)]) == 0
    out = capsys.readouterr().out
    dates = [d.date for d in discover_export(small_export).days()]
    assert all(date in out for date in dates)
    for column in ("rows-book_valid", "rows-mbo_ready", "rows-invalidity", "win-invalidity", "windows kept"):
        assert column in out
    assert "T=100, stride 1" in out and "h10 D/S/U %" in out and "h100 D/S/U %" in out
    summary = {words[0]: words for words in map(str.split, out.splitlines()) if words[:1] in (["train"], ["val"], ["test"])}
    assert summary["train"][1:3] == ["4", "12,000"] and summary["test"][1] == "1"
    path = Path(out.strip().splitlines()[-1].removeprefix("JSON gate report: "))
    assert path.is_file() and path.name == "gate_report.json"
    assert path.parent.parent == Path(os.environ["LOBSEARCH_CACHE"]).resolve() / "prepared"


def test_json_counts_windows_for_the_given_window_and_stride(small_export, capsys):
    report = report_json(small_export, capsys, "--window", "30", "--stride", "7")
    assert (report["window"], report["stride"]) == (30, 7)
    for entry, day_file in zip(report["days"], discover_export(small_export).days()):
        features = load_day(day_file).features
        gates = gate_rows(features)
        assert entry["date"] == day_file.date
        windows = candidate_ends(len(features), 30, 7).size
        assert entry["windows"] == {"windows": windows, **window_gate_counts(gates, 30, 7)}
        assert entry["rows_dropped"] == gates.failed and entry["rows_kept"] == int(gates.row_ok.sum())
    assert Path(report["gate_report"]).is_file()


def test_json_split_summary_gives_label_balance_in_percent(small_export, capsys):
    report = report_json(small_export, capsys)
    train = report["splits"]["train"]
    labels = np.concatenate([load_day(d).labels for d in discover_export(small_export).splits["train"]])
    counts = np.bincount(labels[:, 0], minlength=3)
    expected = dict(zip(("down", "stable", "up"), np.round(100 * counts / counts.sum(), 1).tolist()))
    assert train["label_balance_percent"]["10"] == expected
    assert (train["days"], train["rows"]) == (4, 12_000)
    for split in report["splits"].values():
        for shares in split["label_balance_percent"].values():
            assert sum(shares.values()) == pytest.approx(100, abs=0.2)


def test_a_missing_export_prints_one_clean_line_and_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "nowhere" in captured.err and "no such folder" in captured.err
    assert "Traceback" not in captured.err


def test_a_bad_window_is_refused_by_the_parser(small_export, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(small_export), "--window", "0"])
    assert exit_info.value.code == 2
    assert "--window: must be an integer >= 1 (got 0)" in capsys.readouterr().err


@pytest.mark.integration
def test_the_module_runs_as_a_command(small_export, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lobsearch.data", "report", str(small_export), "--json", "--window", "10"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "LOBSEARCH_CACHE": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["window"] == 10
    missing = subprocess.run([sys.executable, "-m", "lobsearch.data", "report", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


@pytest.mark.ray
def test_the_ray_engine_gives_the_same_report(ray_session, small_export, capsys, tmp_path, monkeypatch):
    local = report_json(small_export, capsys)
    monkeypatch.setenv("LOBSEARCH_CACHE", str(tmp_path))  # an empty cache: Ray computes it again
    with_ray = report_json(small_export, capsys, "--engine", "ray")
    assert Path(with_ray.pop("gate_report")).parent.parent == tmp_path.resolve() / "prepared"
    assert Path(local.pop("gate_report")).name == "gate_report.json"
    assert with_ray == local
