"""GateRecord / TrapRecord read and write the archive's rows unchanged, and one sentence says what killed a rung."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_ladder.records import GateRecord, TrapRecord, fmt, killed_by_sentence, measurement_from_dict

ARCHIVE = Path(__file__).resolve().parents[2] / "archive"
DECISIONS = sorted(ARCHIVE.glob("*/*/decision.json"))


@pytest.mark.parametrize("path", DECISIONS, ids=lambda p: p.parent.parent.name)
def test_archived_rows_round_trip_unchanged(path):
    record = json.loads(path.read_text())
    for row in record["gates"]:
        assert json.dumps(GateRecord.from_dict(row).row()) == json.dumps(row)
    for row in record["traps"]:
        assert json.dumps(TrapRecord.from_dict(row).row()) == json.dumps(row)


def test_the_archive_decides_every_prereg_once_on_each_embedded_model():
    """archive/ holds one decision per sealed prereg and embedded model (OLMoE, Qwen3-MoE, Mixtral), replications
    beside them."""
    decided: dict[str, list[str]] = {}
    for path in DECISIONS:
        record = json.loads(path.read_text())
        if record["kind"] == "decision":
            decided.setdefault(record["model"]["name"], []).append(record["rung"])
    preregs = sorted(p.parent.name for p in (ARCHIVE.parent / "prereg").glob("*/tau.json"))
    assert sorted(decided) == ["embedded", "embedded-mixtral", "embedded-qwen"]
    for model, rungs in decided.items():
        assert sorted(rungs) == preregs, model


def test_measurements_round_trip():
    gate = GateRecord("activation_error", "layer=3-task=text", "gate", 0.31, "<=", 0.2, False, None, None, {"r": 4})
    assert gate.measurement() == {"kind": "gate", "name": "activation_error", "cell": "layer=3-task=text",
                                  "value": 0.31, "op": "<=", "threshold": 0.2, "passed": False, "tau": None,
                                  "series": None, "extra": {"r": 4}}
    assert measurement_from_dict(gate.measurement()) == gate
    trap = TrapRecord("random_basis", None, "observed > method", 0.9, {"method": 0.31}, True)
    assert trap.measurement() == {"kind": "trap", "name": "random_basis", "cell": None,
                                  "expected": "observed > method", "observed": 0.9, "refs": {"method": 0.31},
                                  "fired_as_declared": True}
    assert measurement_from_dict(trap.measurement()) == trap
    assert (gate.failed, trap.failed, GateRecord("x", outcome="error").failed) == (True, False, True)


@pytest.mark.parametrize(("killed", "sentence"), [
    ({"kind": "gate", "name": "activation_error", "cell": "layer=3-task=text", "value": 0.31, "op": "<=",
      "threshold": 0.2, "tau": None}, "activation_error @ layer=3-task=text: 0.31 > 0.2"),
    ({"kind": "gate", "name": "activation_error", "cell": None, "value": 0.19, "op": "<=", "threshold": 0.2,
      "tau": {"tau": 0.2, "beats": False, "rule": "value < tau * (1 - margin)"}},
     "activation_error: 0.19 vs τ 0.2 fails value < tau * (1 - margin)"),
    ({"kind": "prefilter", "name": "coverage", "cell": None, "value": 0.581, "op": ">=", "threshold": 0.95,
      "tau": {"tau": 0.1, "beats": True, "rule": "r"}}, "coverage: 0.581 < 0.95"),
    ({"kind": "requires", "name": "g0", "cell": None, "value": None, "op": None, "threshold": None, "tau": None},
     "requires g0 (KILLED)"),
])
def test_killed_by_sentence(killed, sentence):
    assert killed_by_sentence(killed) == sentence


def test_fmt():
    assert [fmt(None), fmt(True), fmt(0.123456789), fmt(3), fmt("x")] == ["", "yes", "0.123457", "3", "x"]
