"""Cell ids in real sessions: pytest's -k grammar accepts them, so one cell can be selected by its id."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")  # loaded here, once: pytester's in-process sessions cannot load it a second time


def test_k_selects_one_cell_by_its_id(toy):
    toy.rung()
    result = toy.pytester.runpytest("-v", "-k", "layer:3-true_rank:8")
    result.assert_outcomes(failed=1, deselected=5)
    result.stdout.fnmatch_lines(["*::test_relative_error[[]layer:3-true_rank:8[]] FAILED*"])
    (run,) = toy.runs()
    record = toy.record(run)
    assert (record["verdict"], record["selection"]["keyword"]) == ("KILL", "layer:3-true_rank:8")
    assert [(g["cell"], g["outcome"]) for g in record["gates"]] == [("layer:3-true_rank:8", "failed")]


def test_a_relative_layer_id_is_a_valid_k_expression(toy):
    """Ids with "/" (relative layers, "layer:3/16") are selectable too; "layer=3/16" never was."""
    toy.rung(cells=[{"layer": "0/16", "true_rank": 2}, {"layer": "3/16", "true_rank": 8}],
             hardest_cell="layer:3/16-true_rank:8")
    collected = toy.pytester.runpytest("--collect-only", "-q", "-k", "layer:3/16")
    assert [line for line in collected.outlines if "::" in line] == [
        "test_toy.py::test_relative_error[layer:3/16-true_rank:8]"]
    rejected = toy.pytester.runpytest("--collect-only", "-q", "-k", "layer=3/16")
    assert rejected.ret == 4 and "Wrong expression passed to '-k'" in rejected.stderr.str() + rejected.stdout.str()
