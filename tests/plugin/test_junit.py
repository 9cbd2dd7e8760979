"""JUnit XML of real sessions on the toy rung: ladder properties are JSON text, the rung's verdict is a property, a
replayed archive carries the same properties."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

HARDEST = "test_relative_error[layer:3-true_rank:8]"


def hardest_error() -> float:
    """The toy hardest cell's rank-4 truncation error, computed here (numpy is imported before pytester's sessions
    start, which need it loaded once)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 8)) @ rng.standard_normal((8, 32))
    u, s, vt = np.linalg.svd(w)
    return float(np.linalg.norm(w - (u[:, :4] * s[:4]) @ vt[:4]) / np.linalg.norm(w))


def junit_cases(path: Path) -> dict[str, dict[str, list]]:
    """{test name: {property name: [values parsed as JSON, in order]}} of a JUnit XML file."""
    found: dict[str, dict[str, list]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props: dict[str, list] = {}
        for prop in case.iter("property"):
            props.setdefault(prop.get("name"), []).append(json.loads(prop.get("value")))
        found[case.get("name")] = props
    return found


def test_properties_are_json_and_the_verdict_follows_the_kill(toy):
    toy.rung()
    result = toy.pytester.runpytest("--ladder-kill-fast", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    cases = junit_cases(toy.root / "junit.xml")
    assert list(cases) == ["test_trivial_pass", "test_bytes", HARDEST, "test_random_basis",
                           "test_relative_error[layer:0-true_rank:2]", "test_relative_error[layer:1-true_rank:2]"]
    assert cases[HARDEST]["ladder_item"] == [{"rung": "toy", "kind": "gate", "name": "relative_error",
                                              "cell": "layer:3-true_rank:8"}]
    (measured,) = cases[HARDEST]["ladder_record"]
    assert (measured["name"], measured["cell"], measured["passed"], measured["op"], measured["threshold"]) == (
        "relative_error", "layer:3-true_rank:8", False, "<=", 0.05)
    assert cases["test_trivial_pass"]["ladder_record"][0]["observed"] == 0.0

    record = toy.record(toy.runs()[0])
    assert measured["value"] == pytest.approx(hardest_error(), rel=1e-12)
    assert measured["value"] == record["killed_by"]["value"] and measured["tau"] == record["killed_by"]["tau"]
    tau = record["killed_by"]["tau"]
    expected = {"rung": "toy", "run_id": record["run_id"], "kind": "decision", "verdict": "KILL",
                "killed_by": {"kind": "gate", "name": "relative_error", "cell": "layer:3-true_rank:8",
                              "value": record["killed_by"]["value"], "op": "<=", "threshold": 0.05,
                              "tau": tau["tau"], "tau_rule": "value < tau * (1 - margin)",
                              "beats_tau": True},
                "invalid_because": None}
    # every item of the rung carries it, also those logged before the kill and the traps settled the verdict
    assert all(cases[name]["ladder_verdict"] == [expected] for name in cases)


def test_a_full_run_puts_the_verdict_on_every_item(toy):
    toy.rung()
    toy.pytester.runpytest("--junitxml=junit.xml").assert_outcomes(passed=5, failed=1)
    cases = junit_cases(toy.root / "junit.xml")
    verdicts = [props["ladder_verdict"] for props in cases.values()]
    assert len(verdicts) == 6 and all(v == verdicts[-1] for v in verdicts)
    (verdict,) = verdicts[-1]
    assert (verdict["verdict"], verdict["killed_by"]["name"], verdict["killed_by"]["cell"]) == (
        "KILL", "relative_error", "layer:3-true_rank:8")


def test_a_rung_archived_at_session_end_puts_its_verdict_on_its_items(toy):
    """A selection of two items leaves the rung unsettled until the session ends, when it is archived (a partial
    run); the items that ran carry that record's verdict."""
    toy.rung()
    toy.pytester.runpytest("-k", "trivial_pass or bytes", "--junitxml=junit.xml").assert_outcomes(passed=2)
    cases = junit_cases(toy.root / "junit.xml")
    assert list(cases) == ["test_trivial_pass", "test_bytes"]
    verdicts = [props["ladder_verdict"] for props in cases.values()]
    assert verdicts[0] == verdicts[1] and verdicts[0][0]["verdict"] == toy.record(toy.runs()[0])["verdict"]


def test_a_replayed_archive_carries_the_same_properties(toy):
    toy.rung()
    toy.pytester.runpytest("--ladder-kill-fast", "--junitxml=live.xml")
    live = junit_cases(toy.root / "live.xml")
    result = toy.pytester.runpytest("archive", "--junitxml=replay.xml")
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    replayed = junit_cases(toy.root / "replay.xml")
    run_id = toy.runs()[0].name
    hardest = replayed["gate:relative_error[layer:3-true_rank:8]"]
    assert hardest["ladder_item"] == [{"rung": "toy", "kind": "gate", "name": "relative_error",
                                       "cell": "layer:3-true_rank:8", "run_id": run_id}]
    assert hardest["ladder_record"] == live[HARDEST]["ladder_record"]
    verdict = live["test_random_basis"]["ladder_verdict"]
    assert all(props["ladder_verdict"] == verdict for props in replayed.values()) and len(replayed) == 6
    skipped = replayed["gate:relative_error[layer:0-true_rank:2]"]
    assert "ladder_record" not in skipped  # it did not run: nothing measured
