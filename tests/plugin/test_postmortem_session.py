"""The archive of real toy sessions: skip reasons as plain text, each rung's own start and duration."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")  # loaded here, once: pytester's in-process sessions cannot load it a second time


def test_skip_reasons_are_plain_text_without_paths(toy):
    toy.rung(hook='if cell.params["layer"] == 1: pytest.skip("needs a GPU")')
    toy.pytester.runpytest().assert_outcomes(passed=4, failed=1, skipped=1)
    record = toy.record(toy.runs()[0])
    assert record["selection"]["skip_reasons"] == ["needs a GPU"]
    skipped = [g for g in record["gates"] if g["outcome"] == "skipped"]
    assert [(g["cell"], g["message"]) for g in skipped] == [("layer:1-true_rank:2", "needs a GPU")]
    text = (toy.runs()[0] / "postmortem.md").read_text()
    assert '- skip_reasons: ["needs a GPU"]' in text.splitlines()


def test_each_rung_records_its_own_start_and_duration(toy):
    toy.rung("toy")
    toy.rung("toy2")
    toy.pytester.runpytest().assert_outcomes(passed=10, failed=2)
    first, second = toy.record(toy.runs("toy")[0]), toy.record(toy.runs("toy2")[0])
    assert first["timings"]["end"] <= second["timings"]["start"]  # toy2 starts once toy is archived
    assert 0 < second["timings"]["duration_s"] < 60
