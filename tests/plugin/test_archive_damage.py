"""Damage is contained: a record cut in half (or of the wrong shape) is reported by file and reason, replays as one
failing item while the rest replays, shows as a "damaged" scoreboard row, and blocks a new decision for its prereg
instead of producing one."""

from __future__ import annotations

import json

import numpy  # noqa: F401  (the toy rung imports it: one copy per process, whatever pytester restores)
import pytest

from pytest_ladder.archive import check_main, damaged_runs
from pytest_ladder.scoreboard import scoreboard_rows


@pytest.fixture
def damaged(toy):
    """Rungs a and b decided, then a's decision.json cut in half."""
    toy.rung("a")
    toy.rung("b")
    toy.pytester.runpytest()
    (run,) = toy.runs("a")
    file = run / "decision.json"
    text = file.read_text()
    file.write_text(text[: len(text) // 2])
    return file


def test_a_damaged_record_blocks_a_new_decision_with_a_clear_message(toy, damaged):
    result = toy.pytester.runpytest("test_a.py")
    output = "\n".join(result.outlines)
    assert "a: refused, nothing archived:" in output
    assert f"{damaged}: not valid JSON" in output and "blocks a new decision for it" in output
    assert len(toy.runs("a")) == 1  # nothing new archived, no INVALID decision


def test_replay_scoreboard_and_check_contain_the_damage(toy, damaged, capsys):
    replay = toy.pytester.runpytest("archive/")
    replay.assert_outcomes(failed=2, passed=5, skipped=0)  # b: 6 rows, its kill replays failed; a: one damaged item
    assert any("damaged record: " in line and "not valid JSON" in line for line in replay.outlines)
    rows = {row["rung"]: row for row in scoreboard_rows(toy.root / "archive")}
    assert rows["a"]["status"] == "damaged" and "not valid JSON" in rows["a"]["killed_by"]
    assert rows["b"]["verdict"] == "KILL"
    assert check_main(["check", str(toy.root / "archive")]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {damaged}: not valid JSON" in out and "1 records match schema 1, 1 damaged" in out


def test_a_record_of_the_wrong_shape_is_damaged_too(toy):
    toy.rung("a")
    toy.pytester.runpytest()
    (run,) = toy.runs("a")
    record = json.loads((run / "decision.json").read_text())
    record["gates"] = "none"
    (run / "decision.json").write_text(json.dumps(record))
    (found,) = damaged_runs(toy.root / "archive")
    assert found.reason.endswith("field 'gates' must be a list, got str")
