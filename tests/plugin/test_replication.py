"""Runs that cannot change a decision are never refused, and a replication says whether it agrees with the decision
it replicates (real pytest sessions on the toy rung)."""

from __future__ import annotations

import pytest

from pytest_ladder.scoreboard import scoreboard_rows

pytest.importorskip("numpy")  # loaded here, once: the toy rung imports it in inline sessions, which cannot load it twice

HARDEST = "test_toy.py::test_relative_error[layer:3-true_rank:8]"
KILLED_AT = {"kind": "gate", "name": "relative_error", "cell": "layer:3-true_rank:8"}


def test_an_analytical_rerun_of_a_decided_prereg_runs_and_archives_a_run(toy):
    toy.rung()
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(passed=1)
    decision, rerun = toy.runs()
    assert (decision / "decision.json").is_file() and not (rerun / "decision.json").exists()
    record = toy.record(rerun)
    assert (record["kind"], record["verdict"], record["decision"]) == ("prefilter", "PREFILTER_PASS", False)
    assert "refused" not in "\n".join(result.outlines)


def test_a_partial_selection_with_replicate_is_a_partial_run(toy):
    toy.rung()
    toy.pytester.runpytest_subprocess().assert_outcomes(passed=5, failed=1)
    result = toy.pytester.runpytest_subprocess("--lf", "--ladder-replicate")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["toy: PARTIAL at gate relative_error @ layer:3-true_rank:8*"])
    decision, partial = toy.runs()
    assert not (partial / "decision.json").exists()
    record = toy.record(partial)
    assert (record["kind"], record["verdict"], record["decision"]) == ("partial", "PARTIAL", False)
    assert {key: record["killed_by"][key] for key in KILLED_AT} == KILLED_AT
    assert record["selection"]["complete"] is False


def test_a_node_id_with_replicate_is_partial_even_before_any_decision(toy):
    toy.rung()
    toy.pytester.runpytest(HARDEST, "--ladder-replicate").assert_outcomes(failed=1)
    (run,) = toy.runs()
    assert (toy.record(run)["verdict"], toy.record(run)["decision"]) == ("PARTIAL", False)
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)  # the decision is still to be made
    assert toy.record(toy.runs()[1])["kind"] == "decision"


def test_a_replication_says_whether_it_agrees_with_the_decision(toy):
    toy.rung()
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    (decision,) = toy.runs()
    decision_id = toy.record(decision)["run_id"]
    same = toy.pytester.runpytest("-x", "--ladder-replicate")
    same.stdout.fnmatch_lines([f"toy: KILL at gate relative_error @ layer:3-true_rank:8*, replication of "
                               f"{decision_id}: agrees with it"])
    module = toy.module(hook="raise RuntimeError('lost the device')")
    assert "lost the device" in module.read_text()
    differs = toy.pytester.runpytest("-x", "--ladder-replicate")
    differs.stdout.fnmatch_lines([f"toy: INVALID (error relative_error: RuntimeError: lost the device), replication "
                                  f"of {decision_id}: DIFFERS from it (KILL at gate relative_error @ "
                                  "layer:3-true_rank:8)"])
    agreeing, differing = (toy.record(run) for run in toy.runs()[1:])
    assert agreeing["agreement"] == {"agrees": True, "run_id": decision_id, "verdict": "KILL", "killed_by": KILLED_AT}
    assert differing["agreement"] == {"agrees": False, "run_id": decision_id, "verdict": "KILL",
                                      "killed_by": KILLED_AT}
    (row,) = scoreboard_rows(toy.root / "archive")
    assert (row["run_id"], row["replications"]) == (decision_id, "2: 1 agreeing, 1 differing")


def test_the_already_decided_refusal_is_given_once_per_rung(toy):
    toy.rung()
    toy.pytester.runpytest().assert_outcomes(passed=5, failed=1)
    result = toy.pytester.runpytest("-rN")  # no short summary: its lines are cut to the terminal width except in CI
    result.assert_outcomes(errors=1, skipped=5)
    output = "\n".join(result.outlines)
    assert output.count("ERROR at setup of") == 1
    assert output.count("is already decided on model 'toy-planted-rank'") == 2  # the error and the ladder verdicts
    result.stdout.fnmatch_lines(["toy: refused, nothing archived: prereg/toy/tau.json (seal *) is already decided*"])
    assert len(toy.runs()) == 1
