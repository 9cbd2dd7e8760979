"""Real pytest sessions on the toy rung: ordering, verdicts, archive, one-shot, ladder rule, xdist, replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pytest_ladder.seal import compute_seal

ORDER = [
    "test_trivial_pass",
    "test_bytes",
    "test_relative_error[layer:3-true_rank:8]",
    "test_random_basis",
    "test_relative_error[layer:0-true_rank:2]",
    "test_relative_error[layer:1-true_rank:2]",
]


def hardest_error() -> float:
    """The toy hardest cell's truncation error computed here, independently of the session."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 8)) @ rng.standard_normal((8, 32))
    u, s, vt = np.linalg.svd(w)
    return float(np.linalg.norm(w - (u[:, :4] * s[:4]) @ vt[:4]) / np.linalg.norm(w))


def test_collection_is_kill_fast_order(toy):
    toy.rung()
    result = toy.pytester.runpytest("--collect-only", "-q")
    names = [line.split("::", 1)[1] for line in result.outlines if "::" in line]
    assert names == ORDER


def test_kill_at_hardest_cell_with_x_stops_there(toy):
    toy.rung()
    result = toy.pytester.runpytest("-x", "-v")
    result.assert_outcomes(passed=2, failed=1)
    ran = [line.split("::", 1)[1].split(" ")[0] for line in result.outlines if "::" in line and "%]" in line]
    assert ran == ORDER[:3]
    (run,) = toy.runs()
    record = toy.record(run)
    assert record["verdict"] == "KILL" and record["decision"] is True and record["kind"] == "decision"
    killed = record["killed_by"]
    assert (killed["kind"], killed["name"], killed["cell"]) == ("gate", "relative_error", "layer:3-true_rank:8")
    assert killed["value"] == pytest.approx(hardest_error(), rel=1e-12)
    assert (killed["op"], killed["threshold"]) == ("<=", 0.05)
    assert (run / "postmortem.md").is_file() and (run / "trap_results.json").is_file()
    assert [g["outcome"] for g in record["gates"]] == ["passed", "failed", "not run", "not run"]
    assert record["selection"]["exitfirst"] is True and record["selection"]["ran"] == 3
    result.stdout.fnmatch_lines(["*ladder verdicts*", "toy: KILL at gate relative_error @ layer:3-true_rank:8*"])


def test_without_x_every_item_runs_and_the_first_kill_is_named(toy):
    toy.rung()
    result = toy.pytester.runpytest("-v")
    result.assert_outcomes(passed=5, failed=1)
    ran = [line.split("::", 1)[1].split(" ")[0] for line in result.outlines if "::" in line and "%]" in line]
    assert ran == ORDER
    record = toy.record(toy.runs()[0])
    assert record["verdict"] == "KILL" and record["killed_by"]["cell"] == "layer:3-true_rank:8"
    traps = json.loads((toy.runs()[0] / "trap_results.json").read_text())["traps"]
    assert [(t["name"], t["fired_as_declared"]) for t in traps] == [("trivial_pass", True), ("random_basis", True)]
    assert traps[0]["observed"] == 0.0


def test_pass_when_the_claim_survives_every_gate(toy):
    toy.rung(cells=[{"layer": 0, "true_rank": 2}, {"layer": 1, "true_rank": 4}], hardest_cell="layer=1-true_rank=4")
    result = toy.pytester.runpytest()
    result.assert_outcomes(passed=5)
    record = toy.record(toy.runs()[0])
    assert record["verdict"] == "PASS" and record["killed_by"] is None
    tau = record["gates"][1]["tau"]
    assert tau["beats"] is True and len(tau["values"]) == 3 and tau["tau"] == min(tau["values"])


def test_analytical_selection_is_a_prefilter_result_not_a_pass(toy):
    toy.rung()
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(passed=1)
    (run,) = toy.runs()
    assert not (run / "decision.json").exists()
    record = toy.record(run)
    assert record["verdict"] == "PREFILTER_PASS" and record["decision"] is False


def test_failed_prefilter_alone_is_a_real_kill(toy):
    toy.rung(params={"rank": 20, "size": 32})  # 2*32*20*4 - 32*32*4 = 1024 bytes more than dense
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(failed=1)
    record = toy.record(toy.runs()[0])
    assert record["verdict"] == "KILL" and record["decision"] is True
    assert (record["killed_by"]["name"], record["killed_by"]["value"]) == ("bytes", 1024.0)


def test_trap_firing_wrong_invalidates_the_run(toy):
    toy.rung(traps={"trivial_pass": "observed == 0", "random_basis": "observed < method"})
    result = toy.pytester.runpytest()
    result.assert_outcomes(passed=4, failed=2)
    record = toy.record(toy.runs()[0])
    assert record["verdict"] == "INVALID"
    assert record["invalid_because"]["kind"] == "trap" and record["invalid_because"]["name"] == "random_basis"


def test_broken_seal_refuses_every_test_and_archives_nothing(toy):
    path = toy.prereg()
    toy.module()
    data = json.loads(path.read_text())
    data["gates"]["relative_error"]["threshold"] = 0.5  # loosened after sealing
    path.write_text(json.dumps(data, indent=2))
    result = toy.pytester.runpytest()
    result.assert_outcomes(errors=1, skipped=5)  # the reason once, at the rung's first test
    result.stdout.fnmatch_lines(["*prereg/toy/tau.json*ladder seal*"])
    assert not (toy.root / "archive").exists() or toy.runs() == []


def test_missing_seal_refuses(toy):
    toy.prereg(seal=False)
    toy.module()
    result = toy.pytester.runpytest()
    result.assert_outcomes(errors=1, skipped=5)
    assert toy.runs() == []


def test_reformatted_prereg_keeps_its_seal(toy):
    path = toy.prereg()
    toy.module()
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(list(data.items()))), indent=7))
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(passed=1)


def test_bad_prereg_content_is_a_usage_error_naming_file_and_field(toy):
    toy.rung(hardest_cell="layer=9-true_rank=8")
    result = toy.pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: prereg/toy/tau.json: field 'hardest_cell' names 'layer=9-true_rank=8', which is not among the "
            "cells" in "\n".join(result.outlines + result.errlines))
    assert toy.runs() == []


def test_one_shot_refusal_then_replication(toy):
    toy.rung()
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    (first,) = toy.runs()
    again = toy.pytester.runpytest("-x")
    again.assert_outcomes(errors=1)
    again.stdout.fnmatch_lines(["*already decided on model 'toy-planted-rank'*--ladder-replicate*"])
    assert toy.runs() == [first]
    toy.pytester.runpytest("-x", "--ladder-replicate").assert_outcomes(passed=2, failed=1)
    runs = toy.runs()
    assert len(runs) == 2
    replication = toy.record(runs[1])
    assert replication["kind"] == "replication" and replication["decision"] is False
    assert replication["replication_of"] == toy.record(first)["run_id"]


def test_same_claim_on_another_model_is_a_new_experiment(toy):
    toy.rung()
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    toy.prereg(model="another-model")
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    assert [toy.record(r)["model"]["name"] for r in toy.runs()] == ["toy-planted-rank", "another-model"]


def test_requires_a_killed_rung_fails_without_running(toy):
    toy.rung("base")
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)
    toy.rung("top", requires=["base"], hook="raise AssertionError('must not run')")
    (toy.root / "test_base.py").unlink()
    result = toy.pytester.runpytest()
    result.assert_outcomes(errors=6)
    result.stdout.fnmatch_lines(["*requires base, which was KILLED*"])
    record = toy.record(toy.runs("top")[0])
    assert record["verdict"] == "KILL" and record["killed_by"]["kind"] == "requires"
    assert record["killed_by"]["name"] == "base"


def test_requires_in_the_same_session_runs_the_lower_rung_first(toy):
    toy.rung("a_top", requires=["z_base"])
    toy.rung("z_base")
    toy.pytester.runpytest().assert_outcomes(passed=5, failed=1, errors=6)
    assert toy.record(toy.runs("z_base")[0])["verdict"] == "KILL"
    assert toy.record(toy.runs("a_top")[0])["killed_by"]["name"] == "z_base"


def test_keyboard_interrupt_is_aborted_and_no_decision(toy):
    toy.rung(hook="raise KeyboardInterrupt")
    result = toy.pytester.runpytest(no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    (run,) = toy.runs()
    assert not (run / "decision.json").exists()
    record = toy.record(run)
    assert record["verdict"] == "ABORTED" and record["decision"] is False
    # no decision: the same seal may run again without --ladder-replicate
    toy.module()
    toy.pytester.runpytest("-x").assert_outcomes(passed=2, failed=1)


def _stable(record: dict) -> dict:
    record = json.loads(json.dumps(record))
    for key in ("run_id", "timings", "software"):
        record.pop(key)
    record["selection"].pop("xdist_workers")
    for row in record["gates"] + record["traps"]:
        row.pop("duration_s")
    return record


def test_xdist_writes_the_same_decision_as_one_process(toy):
    toy.rung()
    toy.pytester.runpytest_subprocess("-n", "0", "-p", "xdist").assert_outcomes(passed=5, failed=1)
    toy.pytester.runpytest_subprocess("-n", "2", "--ladder-replicate").assert_outcomes(passed=5, failed=1)
    serial, parallel = (toy.record(r) for r in toy.runs())
    assert parallel["kind"] == "replication" and parallel["agreement"]["agrees"] is True
    for record in (serial, parallel):
        record.pop("kind"), record.pop("decision"), record.pop("replication_of"), record.pop("agreement", None)
    assert _stable(serial) == _stable(parallel)


def test_replay_of_a_kill_fails_with_the_killing_gate(toy):
    toy.rung()
    toy.pytester.runpytest().assert_outcomes(passed=5, failed=1)
    (toy.root / "test_toy.py").unlink()
    result = toy.pytester.runpytest("archive/", "-v")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*relative_error*layer:3-true_rank:8*FAILED*", "*KILL*"])


def test_gate_test_that_never_checks_is_an_error_not_a_pass(toy):
    toy.prereg()
    module = toy.module()
    module.write_text(module.read_text().replace("    gate.check(2 * n * r * 4 - n * n * 4)", "    pass"))
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*finished without calling gate.check(value)*"])
    assert toy.record(toy.runs()[0])["verdict"] == "INVALID"


def test_seal_is_over_values_only():
    data = {"b": 1, "a": [1, 2], "seal": "x"}
    assert compute_seal(data) == compute_seal({"a": [1, 2], "b": 1})
    assert compute_seal(data) != compute_seal({"a": [1, 2], "b": 2})


def test_kill_fast_skips_the_rest_of_a_killed_rung_and_goes_on(toy):
    toy.rung("a")
    toy.rung("b")
    result = toy.pytester.runpytest("--ladder-kill-fast")
    # each rung: trivial pass, bytes prefilter, then the hardest cell kills; its random-basis trap still runs (it
    # validates the kill), its two other cells are skipped
    result.assert_outcomes(passed=6, failed=2, skipped=4)
    for name in ("a", "b"):
        record = toy.record(toy.runs(name)[0])
        assert record["verdict"] == "KILL" and record["killed_by"]["cell"] == "layer:3-true_rank:8"
        assert [g["outcome"] for g in record["gates"]] == ["passed", "failed", "skipped", "skipped"]
        assert [(t["name"], t["outcome"]) for t in record["traps"]] == [("trivial_pass", "passed"),
                                                                         ("random_basis", "passed")]
        selection = record["selection"]
        assert (selection["kill_fast"], selection["selected"], selection["ran"], selection["skipped"]) == (
            True, 6, 4, 2)
        assert selection["skip_reasons"] == [f"kill-fast: {name} is already KILLED in this session; its remaining "
                                             "cells do not run"]
