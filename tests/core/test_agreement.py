"""A replication agrees with its decision when the verdict is the same and, for a KILL, the killing gate is (kind,
name and cell, whatever spelling of the cell id each record was written with)."""

from __future__ import annotations

from pytest_ladder.verdict import agreement


def decision(verdict: str, cell: str | None = "layer=3/16-task=text", name: str = "activation_error") -> dict:
    killed = None if cell is None else {"kind": "gate", "name": name, "cell": cell, "value": 0.4}
    return {"run_id": "20261123T155005Z-acaba0", "verdict": verdict, "killed_by": killed}


def test_the_same_kill_under_either_id_spelling_agrees():
    found = agreement(decision("KILL", "layer:3/16-task:text"), decision("KILL", "layer=3/16-task=text"))
    assert found == {"agrees": True, "run_id": "20261123T155005Z-acaba0", "verdict": "KILL",
                     "killed_by": {"kind": "gate", "name": "activation_error", "cell": "layer:3/16-task:text"}}


def test_another_cell_gate_or_verdict_differs():
    original = decision("KILL")
    assert not agreement(decision("KILL", "layer:0/16-task:text"), original)["agrees"]
    assert not agreement(decision("KILL", name="route_flip_rate"), original)["agrees"]
    assert not agreement(decision("INVALID", None), original)["agrees"]
    assert agreement(decision("PASS", None), decision("PASS", None))["agrees"]
