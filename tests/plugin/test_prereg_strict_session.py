"""Hostile preregs in a real session: refused at collection as a usage error naming file and field, no run archived.
A prereg saved with a UTF-8 BOM is read and keeps its seal."""

from __future__ import annotations

import json

import numpy  # noqa: F401  (the toy rung imports it: one copy per process, whatever pytester restores)
import pytest

HOSTILE = [  # (edit of the sealed toy prereg's text, what the user must read)
    (lambda text: text.replace('{\n  "claim"', '{\n  "tau_margin": 0.5,\n  "claim"', 1),
     "prereg/toy/tau.json: field 'tau_margin' appears more than once (a duplicate key: a reader sees the first value, "
     "the parser keeps the last). Keep exactly one and re-seal with: ladder seal prereg/toy/tau.json"),
    (lambda text: text.replace('"threshold": 0.05', '"threshold": 1e400'),
     "prereg/toy/tau.json: field 'gates.relative_error.threshold' must be a finite number (got 1e400): it overflows. "
     "Fix the value and re-seal with: ladder seal prereg/toy/tau.json"),
    (lambda text: text.replace('"value < tau * (1 - margin)"', '"' + "-" * 20000 + 'value < tau"'),
     "prereg/toy/tau.json: field 'decision_threshold' is not a valid rule: '" + "-" * 60 + "'... (20011 characters) "
     "is longer than 500 characters; a locked rule should read at a glance. Fix the value and re-seal with: ladder "
     "seal prereg/toy/tau.json"),
]
IDS = ["duplicate-key", "1e400", "20000-minus"]


def hostile_session(toy, edit):
    toy.rung()
    path = toy.root / "prereg" / "toy" / "tau.json"
    path.write_text(edit(path.read_text()))
    result = toy.pytester.runpytest()
    return result, "\n".join(result.outlines + result.errlines)


@pytest.mark.parametrize(("edit", "says"), HOSTILE, ids=IDS)
def test_hostile_prereg_stops_the_session_naming_file_and_field(toy, edit, says):
    result, output = hostile_session(toy, edit)
    assert result.ret != pytest.ExitCode.OK
    assert says in output
    assert "RecursionError" not in output and "MemoryError" not in output
    assert toy.runs() == []


@pytest.mark.parametrize(("edit", "says"), HOSTILE, ids=IDS)
def test_hostile_prereg_is_a_usage_error_without_traceback(toy, edit, says):
    result, output = hostile_session(toy, edit)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {says}" in output
    # no traceback frames (an in-process inner session may still list pytest's own rewrite warnings with paths)
    assert "Traceback" not in output and not any(line.lstrip().startswith('File "') for line in output.splitlines())
    assert "pluggy/_" not in output and "_pytest/python.py" not in output


def test_a_rung_name_that_leaves_its_folder_is_a_usage_error(toy):
    toy.rung()
    module = toy.root / "test_toy.py"
    module.write_text(module.read_text().replace('rung("toy")', 'rung("../../x")'))
    result = toy.pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: rung('../../x'): a rung name is letters, digits and underscores ([a-z0-9_]+)"
            in "\n".join(result.outlines + result.errlines))
    assert toy.runs() == []


@pytest.mark.parametrize("requires", [["gmissing"], ["other"]], ids=["missing-rung", "cycle"])
def test_a_broken_ladder_graph_is_a_usage_error(toy, requires):
    toy.prereg("other", requires=["toy"])  # only read through toy's requires: a cycle toy -> other -> toy
    toy.rung(requires=requires)
    result = toy.pytester.runpytest()
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    if requires == ["gmissing"]:
        assert "field 'requires[0]' names rung 'gmissing', which has no prereg in prereg" in output
    else:
        assert "the requires form a cycle: other -> toy -> other" in output
    assert toy.runs() == []


def test_a_trap_expectation_reading_a_name_its_test_does_not_pass_is_refused_at_collection(toy):
    toy.rung(traps={"trivial_pass": "observed == 0", "random_basis": "observed > method * worst"})
    result = toy.pytester.runpytest()
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: test_toy.py::test_random_basis: the trap 'random_basis' of prereg/toy/tau.json expects "
            "`observed > method * worst`, which reads 'worst', but the test's trap.check(...) passes only "
            "['method']: pass worst=... to trap.check, or fix the expectation in a new prereg") in output
    assert toy.runs() == []


def test_a_sealed_prereg_saved_with_a_bom_runs(toy):
    path = toy.prereg()
    toy.module()
    seal = json.loads(path.read_text())["seal"]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(passed=1)
    (run,) = toy.runs()
    record = toy.record(run)
    assert (record["verdict"], record["prereg"]["seal"]) == ("PREFILTER_PASS", seal)
