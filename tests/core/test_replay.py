"""`pytest archive/`: real pytest sessions (pytester) over hand-written archived runs."""

from __future__ import annotations

import pytest

RUN = "20250102T030405Z-a1b2c3"
FAST = ("-p", "no:hypothesispytest")  # replay needs no hypothesis; its plugin costs ~2 s per in-process session


def replay(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*args, *FAST)


@pytest.fixture
def archive(pytester, record, archived):
    """An archive in the pytester folder: a G4 KILL decision and an ABORTED G2 run."""
    root = pytester.path / "archive"
    archived(record(), archive_dir=root)
    archived(record("g2", "ABORTED", kind="aborted", run_id="20250101T000000Z-000000"), archive_dir=root)
    return root


def test_replay_of_a_kill_mirrors_the_archive(pytester, archive):
    result = replay(pytester, "archive", "-v", "-rs")
    result.assert_outcomes(passed=5, failed=1, skipped=2)
    decision = f"archive/g4/{RUN}/decision.json"
    result.stdout.fnmatch_lines_random([
        f"{decision}::prefilter:bytes PASSED*",
        f"{decision}::gate:activation_error[[]layer:3-task:text[]] FAILED*",
        f"{decision}::gate:route_flip_rate[[]layer:3-task:text[]] PASSED*",
        f"{decision}::gate:activation_error[[]layer:3-task:code[]] PASSED*",
        f"{decision}::gate:activation_error[[]deep[]] SKIPPED*",
        f"{decision}::trap:trivial_pass PASSED*",
        f"{decision}::trap:random_basis PASSED*",
        "archive/g2/20250101T000000Z-000000/run.json::run:ABORTED SKIPPED*",
    ])
    result.stdout.fnmatch_lines([
        "*_ g4 run 20250102T030405Z-a1b2c3 (decision): gate:activation_error[[]layer:3-task:text[]] _*",
        f"archived KILL of g4 run {RUN} (decision): *{decision}",
        "gate activation_error @ layer:3-task:text: outcome failed — this gate KILLED the claim",
        "value 0.31 against the locked rule value <= 0.2",
        "τ floor 0.35, margin 0.1, rule error < tau * (1 - margin): beaten yes",
        "from *postmortem.md:",
        "### gate activation_error @ layer=3-task=text",
        "",
        "- gate `activation_error`, cell `layer=3-task=text`: outcome failed",
        "- value 0.31, locked rule `value <= 0.2`",
    ])
    result.stdout.fnmatch_lines([
        ("SKIPPED [[]1[]] archive/g2/20250101T000000Z-000000/run.json: g2 run 20250101T000000Z-000000 (aborted) was "
        "ABORTED (interrupted (KeyboardInterrupt)): not a decision"),
        f"SKIPPED [[]1[]] {decision}: archived as not run in g4 run {RUN} (decision)",
    ])


def test_markers_select_on_replay(pytester, archive):
    replay(pytester, "archive", "-m", "trap").assert_outcomes(passed=2, deselected=6)
    replay(pytester, "archive", "-m", "analytical").assert_outcomes(passed=1, deselected=7)
    replay(pytester, "archive", "-m", "gate").assert_outcomes(passed=3, failed=1, skipped=1, deselected=3)


def test_a_run_or_rung_folder_replays_alone(pytester, archive):
    replay(pytester, f"archive/g4/{RUN}").assert_outcomes(passed=5, failed=1, skipped=1)
    replay(pytester, "archive/g2").assert_outcomes(skipped=1)
    replay(pytester, f"archive/g4/{RUN}/decision.json").assert_outcomes(passed=5, failed=1, skipped=1)


def test_plain_pytest_at_the_project_root_leaves_the_archive_alone(pytester, archive):
    result = replay(pytester, )
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_interrupted_write_debris_is_not_replayed(pytester, archive):
    debris = archive / "g4" / ".tmp-20250109T000000Z-dead00"
    debris.mkdir()
    (debris / "decision.json").write_text((archive / "g4" / RUN / "decision.json").read_text())
    replay(pytester, "archive", "-p", "no:cacheprovider").assert_outcomes(passed=5, failed=1, skipped=2)
    replay(pytester, str(debris)).assert_outcomes()


def test_invalid_run_fails_on_the_trap(pytester, record, archived):
    archived(record(verdict="INVALID"), archive_dir=pytester.path / "archive")
    result = replay(pytester, "archive")
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "trap random_basis did not fire as declared: expected observed > method, observed 0.9 (method=1.2)",
    ])


def test_errored_gate_fails_with_its_message(pytester, record, archived):
    data = record(verdict="INVALID")
    data["traps"][1] |= {"fired_as_declared": True, "outcome": "passed"}
    data["gates"][2] |= {"outcome": "error", "value": None, "passed": None,
                         "message": "RuntimeError: Tensor on device meta is not on the expected device"}
    archived(data, archive_dir=pytester.path / "archive")
    result = replay(pytester, "archive")
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "gate route_flip_rate @ layer:3-task:text: outcome error",
        "error: RuntimeError: Tensor on device meta is not on the expected device",
    ])


def test_corrupt_record_is_one_failing_item_naming_the_file(pytester, archive):
    (archive / "g4" / RUN / "decision.json").write_text('{"rung": "g4", ')
    result = replay(pytester, "archive")
    result.assert_outcomes(failed=1, skipped=1)  # the damaged record fails; the archive's other run still replays
    result.stdout.fnmatch_lines([f"*damaged record: *archive/g4/{RUN}/decision.json: not valid JSON (*restore the "
                                 "file from*"])


def test_cells_archived_with_the_older_ids_replay_under_the_current_ones(pytester, archive):
    """The hand-written records spell cells "layer=3-task=text" (ids before they were -k selectable): they replay as
    "layer:3-task:text", which `-k` selects, and the failing gate still finds its postmortem section."""
    result = replay(pytester, "archive", "-v", "-k", "layer:3-task:text")
    result.assert_outcomes(passed=1, failed=1, deselected=6)
    result.stdout.fnmatch_lines(["*gate:activation_error[[]layer:3-task:text[]] FAILED*",
                                 "### gate activation_error @ layer=3-task=text"])
