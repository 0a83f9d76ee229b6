"""bench/perf_guard.py without valgrind: the verdicts, the skips, the committed baseline.

The guard itself (callgrind counts) runs as its own step of ``make test`` when valgrind is
installed (``make perf-guard``); these tests only check its decisions, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))
import perf_guard  # noqa: E402

BASE = {"paths": {"frame-only": 1000.0, "orjson": 10000.0, "typed": 8000.0}}


def test_within_threshold_passes() -> None:
    regressions, improvements, notes = perf_guard.compare(
        BASE, {"frame-only": 1029.0, "orjson": 9750.0, "typed": 8000.0})
    assert regressions == [] and improvements == []
    assert len(notes) == 3


def test_regression_names_path_and_change() -> None:
    regressions, improvements, _ = perf_guard.compare(BASE, {"orjson": 10400.0})
    assert improvements == []
    assert len(regressions) == 1
    assert regressions[0].startswith("orjson:") and "+4.00 %" in regressions[0]


def test_improvement_is_reported_not_failed() -> None:
    regressions, improvements, _ = perf_guard.compare(BASE, {"typed": 7000.0})
    assert regressions == []
    assert "typed" in improvements[0] and "-12.50 %" in improvements[0]


def test_new_and_missing_paths_are_notes() -> None:
    _, _, notes = perf_guard.compare(BASE, {"conflated": 500.0})
    assert any(n.startswith("conflated:") and "make perf-baseline" in n for n in notes)
    assert any(n.startswith("orjson: in the baseline but not measured") for n in notes)


def test_version_mismatch_is_named() -> None:
    recorded = {"python": "3.11.7", "picows": "2.3.1"}
    assert perf_guard.mismatches(recorded, dict(recorded), ("python", "picows")) == []
    got = perf_guard.mismatches(recorded, {"python": "3.11.9", "picows": "2.3.1"},
                                ("python", "picows"))
    assert got == ["python 3.11.7 (baseline) vs 3.11.9 (here)"]


def test_check_skips_on_other_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "perf_baseline.json"
    baseline.write_text(json.dumps({"environment": {"python": "2.7.18"}, "paths": {}}))
    monkeypatch.setattr(perf_guard, "BASELINE", baseline)
    monkeypatch.setattr(perf_guard, "environment", lambda python: {"python": "3.11.7"})

    def no_measure(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("measured despite a version mismatch")

    monkeypatch.setattr(perf_guard, "measure", no_measure)
    assert perf_guard.check(argparse.Namespace(
        python=sys.executable, paths=None, threshold=3.0)) == 0
    out = capsys.readouterr().out
    assert "SKIPPED" in out and "python 2.7.18 (baseline) vs 3.11.7 (here)" in out


def test_check_fails_on_regression(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = {"python": "3.11.7"}
    baseline = tmp_path / "perf_baseline.json"
    baseline.write_text(json.dumps({"environment": env, "paths": BASE["paths"]}))
    monkeypatch.setattr(perf_guard, "BASELINE", baseline)
    monkeypatch.setattr(perf_guard, "environment", lambda python: dict(env))
    monkeypatch.setattr(perf_guard, "measure", lambda python, names: (
        {"frame-only": 1000.0, "orjson": 10500.0, "typed": 7000.0}, ["conflated: not yet"]))
    args = argparse.Namespace(
        python=sys.executable, paths=None, threshold=3.0)
    assert perf_guard.check(args) == 1
    out = capsys.readouterr().out
    assert "REGRESSION  orjson: 10,000.0 -> 10,500.0" in out and "+5.00 %" in out
    assert "IMPROVED  typed" in out and "FAILED" in out


def test_no_valgrind_hint(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(perf_guard.shutil, "which", lambda name: None)
    assert perf_guard.main(["--if-available"]) == 0
    assert "apt-get install valgrind" in capsys.readouterr().out
    assert perf_guard.main([]) == 2


def test_committed_baseline_is_complete() -> None:
    data = json.loads(perf_guard.BASELINE.read_text())
    for key in perf_guard.MUST_MATCH + perf_guard.NOTED:
        assert data["environment"].get(key), key
    assert set(data["paths"]) <= set(perf_guard.PATHS)
    assert {"frame-only", "orjson", "typed"} <= set(data["paths"])
    assert all(v > 0 for v in data["paths"].values())
