"""An INVALID run caused by an exception names the exception's type and message everywhere it is reported."""

from __future__ import annotations

import pytest

RAISE = "raise RuntimeError('Expected all tensors to be on the same device, but found at least two devices')"
REASON = "RuntimeError: Expected all tensors to be on the same device, but found at least two devices"


def _raising_trap(toy) -> None:
    toy.prereg()
    module = toy.module()
    text = module.read_text()
    old = "    trap.check(rel(w, w.copy()))"
    assert old in text
    module.write_text(text.replace(old, f"    {RAISE}"))


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_raising_trap_is_invalid_naming_the_exception(toy, workers):
    _raising_trap(toy)
    result = toy.pytester.runpytest_subprocess(*workers)
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines([f"toy: INVALID (error trivial_pass: {REASON})"])
    (run,) = toy.runs()
    record = toy.record(run)
    assert record["verdict"] == "INVALID"
    because = record["invalid_because"]
    assert (because["kind"], because["name"], because["cell"]) == ("error", "trivial_pass", None)
    assert because["message"].splitlines()[0] == REASON
    assert "Traceback" not in because["message"].splitlines()[0]
    assert f"> {REASON}" in (run / "postmortem.md").read_text().splitlines()
    assert record["traps"][0]["message"].splitlines()[0] == REASON


def test_a_fixture_error_is_invalid_naming_the_exception(toy):
    toy.prereg()
    module = toy.module()
    module.write_text(module.read_text() + (
        "\n\n@pytest.fixture\ndef broken():\n    raise ValueError('no such layer: 99')\n\n\n"
        "@ladder.prefilter('bytes')\ndef test_bytes(gate, broken):\n    gate.check(-1)\n"
    ))
    result = toy.pytester.runpytest("-m", "analytical")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["toy: INVALID (error bytes: ValueError: no such layer: 99)"])
    record = toy.record(toy.runs()[0])
    assert record["invalid_because"]["message"].splitlines()[0] == "ValueError: no such layer: 99"
