"""Shared samples for the core tests: a G4-like prereg and hand-written archive records (schema 1)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.archive import write_run
from pytest_ladder.postmortem import render_plots, render_postmortem
from pytest_ladder.seal import compute_seal

G4_PREREG: dict[str, Any] = {
    "claim": "a static rank-16 basis per task replaces the expert inputs",
    "metric": "activation error ||(W_eff - W')X||_F / ||W_eff X||_F on the tokens routed to each expert",
    "data_points": 1000,
    "random_seeds": 10,
    "decision_threshold": "error < tau * (1 - margin)",
    "tau_margin": 0.1,
    "model": "allenai/OLMoE-1B-7B-0924",
    "tasks": ["code", "math", "text"],
    "cells": [{"layer": 3, "task": "text"}, {"layer": 3, "task": "code"}, {"id": "deep", "layer": 7, "task": "math"}],
    "hardest_cell": "layer=3-task=text",
    "prefilters": {"bytes": {"op": "<", "threshold": 0, "note": "global_delta_bytes"}},
    "gates": {"activation_error": {"op": "<=", "threshold": 0.2, "vs_tau": True}, "route_flip_rate": 0.1},
    "traps": {"trivial_pass": "observed == 0", "random_basis": {"expect": "observed > method", "note": "must lose"}},
    "requires": ["g0"],
    "params": {"rank": 16, "scope": {"layers": [3, 7]}},
    "theorems": ["task_union_basis_contains_task_basis"],
}

KILL_CELL = "layer=3-task=text"
TAU_ROW = {"tau": 0.35, "values": [0.35, 0.37, 0.41], "spread": {"min": 0.35, "max": 0.41, "std": 0.0249},
           "margin": 0.1, "rule": "error < tau * (1 - margin)", "beats": True}


@pytest.fixture
def g4() -> dict:
    """A fresh deep copy of the G4-like prereg (unsealed)."""
    return copy.deepcopy(G4_PREREG)


@pytest.fixture
def write_prereg(tmp_path: Path) -> Callable[..., Path]:
    """Write a prereg dict to <tmp>/prereg/<rung>/tau.json (sealed unless seal=False); return the path."""

    def write(data: dict, rung: str = "g4", seal: bool = True, text: str | None = None) -> Path:
        path = tmp_path / "prereg" / rung / "tau.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if seal:
            data = {**data, "seal": compute_seal(data)}
        path.write_text(text if text is not None else json.dumps(data, indent=2) + "\n")
        return path

    return write


def gate_row(name: str, cell: str | None, value: float | None, outcome: str, *, kind: str = "gate", op: str = "<=",
             threshold: float = 0.2, tau: dict | None = None, series: dict | None = None) -> dict:
    passed = None if outcome in ("not run", "skipped") else outcome == "passed"
    return {"name": name, "cell": cell, "kind": kind, "value": value, "op": op, "threshold": threshold,
            "passed": passed, "tau": tau, "series": series, "extra": {}, "outcome": outcome,
            "nodeid": f"rungs/test_g4.py::test_{name}" + (f"[{cell}]" if cell else ""), "duration_s": 0.5,
            "message": f"KILL g4 gate {name} @ {cell}: value {value} fails value {op} {threshold}"
            if outcome == "failed" else None}


def trap_row(name: str, observed: float | None, fired: bool | None, outcome: str, expected: str,
             refs: dict | None = None) -> dict:
    return {"name": name, "cell": None, "expected": expected, "observed": observed, "refs": refs or {},
            "fired_as_declared": fired, "outcome": outcome, "nodeid": f"rungs/test_g4.py::test_{name}",
            "duration_s": 0.1, "message": None}


def make_record(rung: str = "g4", verdict: str = "KILL", *, kind: str = "decision",
                run_id: str = "20250102T030405Z-a1b2c3",
                seal: str = "5" * 64, model: str = "allenai/OLMoE-1B-7B-0924", replication_of: str | None = None,
                label: str | None = None, end: str = "2025-01-02T03:09:05+00:00") -> dict:
    """A complete decision.json record; verdict KILL names activation_error @ layer=3-task=text (0.31 > 0.2)."""
    content = {**copy.deepcopy(G4_PREREG), "seal": seal}
    if label:
        content["label"] = label
    gates = [
        gate_row("bytes", None, -3.5e9, "passed", kind="prefilter", op="<", threshold=0),
        gate_row("activation_error", KILL_CELL, 0.31, "failed" if verdict == "KILL" else "passed", tau=TAU_ROW,
                 series={"spectrum": [9.0, 4.0, 1.0, 0.25, 0.0625]}),
        gate_row("route_flip_rate", KILL_CELL, 0.04, "passed", threshold=0.1),
        gate_row("activation_error", "layer=3-task=code", 0.12, "passed", tau={**TAU_ROW, "tau": 0.3}),
        gate_row("activation_error", "deep", None, "not run"),
    ]
    traps = [
        trap_row("trivial_pass", 0.0, True, "passed", "observed == 0"),
        trap_row("random_basis", 0.9, verdict != "INVALID", "passed" if verdict != "INVALID" else "failed",
                 "observed > method", {"method": 1.2 if verdict == "INVALID" else 0.31}),
    ]
    killed_by = None
    if verdict == "KILL":
        killed_by = {"kind": "gate", "name": "activation_error", "cell": KILL_CELL, "value": 0.31, "op": "<=",
                     "threshold": 0.2, "tau": TAU_ROW, "message": gates[1]["message"]}
    invalid = None
    if verdict == "INVALID":
        invalid = {"kind": "trap", "name": "random_basis", "cell": None,
                   "message": "INVALID g4: trap random_basis did not fire as declared"}
    decision = verdict in ("KILL", "PASS", "INVALID")
    return {
        "schema": 1, "rung": rung, "run_id": run_id, "kind": kind, "verdict": verdict,
        "decision": kind == "decision", "replication_of": replication_of, "claim": content["claim"],
        "metric": content["metric"], "label": label,
        "prereg": {"path": f"prereg/{rung}/tau.json", "seal": seal, "content": content},
        "killed_by": killed_by, "invalid_because": invalid, "gates": gates if decision or verdict != "ABORTED" else [],
        "traps": traps, "model": {"name": model, "revision": "abc123", "dtype": "bfloat16"},
        "data": {"text": {"file": "text.jsonl", "sha256": "e" * 64, "n": 1000}}, "seeds": [11, 22, 33],
        "software": {"python": "3.11.7", "pytest": "9.0.3"},
        "cells": {}, "selection": {"markexpr": "", "keyword": "", "exitfirst": False, "collected": 7, "ran": 6,
                                   "aborted": "interrupted (KeyboardInterrupt)" if verdict == "ABORTED" else None},
        "timings": {"start": "2025-01-02T03:04:05+00:00", "end": end, "duration_s": 300.0},
        "requires": {"g0": {"verdict": "PASS", "run": "20250101T000000Z-000000"}},
    }


def archive_record(archive_dir: Path, record: dict, plots: bool = False) -> Path:
    """Write a record the way the plugin does: decision.json or run.json, trap_results.json, postmortem.md."""
    is_decision = record["verdict"] in ("KILL", "PASS", "INVALID")
    files: dict[str, Any] = {"decision.json" if is_decision else "run.json": record}
    files["trap_results.json"] = {"rung": record["rung"], "run_id": record["run_id"], "verdict": record["verdict"],
                                  "traps": record["traps"]}
    pictures = render_plots(record) if plots else {}
    files["postmortem.md"] = render_postmortem(record, sorted(pictures))
    files.update(pictures)
    return write_run(archive_dir, record["rung"], record["run_id"], files)


@pytest.fixture
def record() -> Callable[..., dict]:
    """`record(rung, verdict, **options)`: a fresh hand-written archive record (see make_record)."""
    return make_record


@pytest.fixture
def archived(tmp_path: Path) -> Callable[..., Path]:
    """`archived(record, plots=False)`: write a record into <tmp>/archive as the plugin would; return the run folder."""

    def write(record: dict, plots: bool = False, archive_dir: Path | None = None) -> Path:
        return archive_record(archive_dir or tmp_path / "archive", record, plots)

    return write
