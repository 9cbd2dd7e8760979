"""Parameter variants: several sealed preregs bind one rung module by their "rung" field, each a claim of its own
(its own items, decision and archive folder) while the module's own claim keeps its node ids and verdict."""

from __future__ import annotations

import json

import numpy as np  # loaded once here: the inner sessions import the toy rung, which imports numpy
import pytest

from pytest_ladder.prereg import load_prereg
from pytest_ladder.scoreboard import scoreboard_rows

BASE_ORDER = [
    "test_toy.py::test_trivial_pass",
    "test_toy.py::test_bytes",
    "test_toy.py::test_relative_error[layer:3-true_rank:8]",
    "test_toy.py::test_random_basis",
    "test_toy.py::test_relative_error[layer:0-true_rank:2]",
    "test_toy.py::test_relative_error[layer:1-true_rank:2]",
]
VARIANT_ORDER = [nodeid.replace("test_toy.py::", "test_toy.py::toy_rank8::") for nodeid in BASE_ORDER]


@pytest.fixture
def variant(toy):
    """The toy rung (rank 4: KILLED at its rank-8 hardest cell) and a variant at rank 8 bound to the same module."""
    toy.rung()
    toy.prereg("toy_rank8", rung="toy", params={"rank": 8, "size": 32})
    return toy


assert np.ndarray  # the inner sessions reuse this import: numpy cannot be loaded twice in one process


def collected(result) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_a_variant_is_its_own_claim_named_by_its_folder(variant):
    loaded = load_prereg(variant.root / "prereg" / "toy_rank8" / "tau.json")
    assert (loaded.rung, loaded.module, loaded.rung_module) == ("toy_rank8", "toy", "toy")
    own = load_prereg(variant.root / "prereg" / "toy" / "tau.json")
    assert (own.rung, own.rung_module) == ("toy", "toy")


def test_the_module_collects_its_own_claim_then_each_variant_in_kill_fast_order(variant):
    result = variant.pytester.runpytest("--collect-only", "-q")
    assert collected(result) == BASE_ORDER + VARIANT_ORDER


def test_each_claim_gets_its_own_one_shot_decision(variant):
    result = variant.pytester.runpytest("-v")
    result.assert_outcomes(passed=11, failed=1)
    (own,) = variant.runs("toy")
    (rank8,) = variant.runs("toy_rank8")
    own_record, rank8_record = variant.record(own), variant.record(rank8)
    assert own_record["verdict"] == "KILL" and own_record["rung"] == "toy"
    assert own_record["killed_by"]["cell"] == "layer:3-true_rank:8"
    assert {row["nodeid"] for row in own_record["gates"] + own_record["traps"]} == set(BASE_ORDER)
    assert rank8_record["verdict"] == "PASS" and rank8_record["rung"] == "toy_rank8"
    assert rank8_record["prereg"]["path"] == "prereg/toy_rank8/tau.json"
    assert {row["nodeid"] for row in rank8_record["gates"] + rank8_record["traps"]} == set(VARIANT_ORDER)
    result.stdout.fnmatch_lines(["toy: KILL at gate relative_error*", "toy_rank8: PASS*"])
    rows = scoreboard_rows(variant.root / "archive")
    assert [(row["rung"], row["status"]) for row in rows] == [("toy", "KILLED"), ("toy_rank8", "PASSED")]
    again = variant.pytester.runpytest("test_toy.py::toy_rank8")
    again.stdout.fnmatch_lines(["toy_rank8: refused, nothing archived: prereg/toy_rank8/tau.json * is already decided*"])
    assert len(variant.runs("toy_rank8")) == 1


def test_k_or_the_node_id_selects_one_variant(variant):
    for selection in (["-k", "toy_rank8"], ["test_toy.py::toy_rank8"]):
        result = variant.pytester.runpytest("--collect-only", "-q", *selection)
        assert collected(result) == VARIANT_ORDER
    result = variant.pytester.runpytest("--collect-only", "-q", "-k", "not toy_rank8")
    assert collected(result) == BASE_ORDER


def test_variants_run_under_xdist_as_in_one_process(variant):
    result = variant.pytester.runpytest("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=11, failed=1)
    assert [variant.record(run)["verdict"] for run in variant.runs("toy")] == ["KILL"]
    assert [variant.record(run)["verdict"] for run in variant.runs("toy_rank8")] == ["PASS"]


def test_a_generic_module_runs_only_the_preregs_bound_to_it(toy):
    toy.module("toy")
    path = toy.root / "test_toy.py"
    path.write_text(path.read_text().replace('rung("toy")', 'rung("toy", own_prereg=False)'))
    result = toy.pytester.runpytest("--collect-only", "-q")
    assert collected(result) == [] and result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    toy.prereg("toy_rank8", rung="toy", params={"rank": 8, "size": 32})
    result = toy.pytester.runpytest("-q")
    result.assert_outcomes(passed=6)
    assert toy.runs("toy") == [] and len(toy.runs("toy_rank8")) == 1


def test_a_prereg_bound_to_another_module_is_refused_by_name(toy):
    toy.rung()
    toy.prereg("toy", rung="other")
    result = toy.pytester.runpytest("-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*prereg/toy/tau.json: field 'rung' binds it to the rung module 'other', but it is loaded by rung('toy'). "
        "Fix the field*re-seal with: ladder seal prereg/toy/tau.json"])


def test_an_unreadable_prereg_is_reported_not_silently_unbound(variant):
    broken = variant.root / "prereg" / "toy_broken" / "tau.json"
    broken.parent.mkdir()
    broken.write_text('{"rung": "toy",')
    result = variant.pytester.runpytest("--collect-only", "-q", "-W", "default")
    assert collected(result) == BASE_ORDER + VARIANT_ORDER
    result.stdout.fnmatch_lines(["*ladder: *toy_broken/tau.json: not read as JSON*"])


def test_a_variant_with_a_different_cell_list_is_parametrized_by_its_own_cells(toy):
    toy.rung()
    data = json.loads((toy.root / "prereg" / "toy" / "tau.json").read_text())
    toy.prereg("toy_small", rung="toy", cells=data["cells"][:1], hardest_cell="layer:0-true_rank:2")
    result = toy.pytester.runpytest("--collect-only", "-q", "-k", "toy_small")
    assert collected(result) == [
        "test_toy.py::toy_small::test_trivial_pass",
        "test_toy.py::toy_small::test_bytes",
        "test_toy.py::toy_small::test_relative_error[layer:0-true_rank:2]",
        "test_toy.py::toy_small::test_random_basis",
    ]
