"""postmortem.md from a hand-written record: sections, tables, the quoted gate section, and the plots."""

from __future__ import annotations

import pytest

from pytest_ladder.postmortem import postmortem_lines_for, render_plots, render_postmortem

PNG = b"\x89PNG\r\n\x1a\n"


def test_kill_postmortem_sections(record):
    text = render_postmortem(record(), ["gates.png", "activation_error-spectrum.png"])
    lines = text.splitlines()
    assert lines[0] == "# G4 — KILL"
    assert lines[2].startswith("Run `20250102T030405Z-a1b2c3` · decision · model `allenai/OLMoE-1B-7B-0924` · ")
    assert "> a static rank-16 basis per task replaces the expert inputs" in lines
    assert (
        "**KILL** at gate activation_error @ layer=3-task=text: 0.31 > 0.2 (locked rule `value <= 0.2`); "
        "τ floor 0.35 (margin 0.1, rule `error < tau * (1 - margin)`, beaten: yes)." in lines
    )
    section = lines.index("### gate activation_error @ layer=3-task=text")
    assert lines[section + 2: section + 6] == [
        "- gate `activation_error`, cell `layer=3-task=text`: outcome failed",
        "- value 0.31, locked rule `value <= 0.2`",
        "- how far from passing: 0.11 above the threshold 0.2 (+55% of it); passing needs value <= 0.2",
        ("- τ floor 0.35 over 3 random baselines (spread 0.35–0.41, std 0.0249), margin 0.1, rule "
        "`error < tau * (1 - margin)` (needs value < 0.315): beaten yes"),
    ]
    assert sum(line.startswith("### gate") for line in lines) == 1  # only the failing gate gets a section
    gates = lines.index("## Gates")
    assert lines[gates + 2: gates + 9: 3] == [
        "| kind      | gate             | cell              | value    | rule   | τ    | outcome   |",
        "| gate      | activation_error | layer=3-task=text | 0.31     | <= 0.2 | 0.35 | failed    |",
        "| gate      | activation_error | deep              |          | <= 0.2 |      | not run   |",
    ]
    traps = lines.index("## Traps")
    assert lines[traps + 5] == (
        "| random_basis |        | observed > method | 0.9        | method=0.31 | yes                 | passed    |"
    )
    assert "## τ floor" in lines and "- revision: abc123" in lines and "11, 22, 33" in lines
    assert "- Lean theorems: `task_union_basis_contains_task_basis`" in lines
    assert lines[-2:] == ["![gates](gates.png)", "![activation_error-spectrum](activation_error-spectrum.png)"]
    assert text.endswith("\n")


def test_other_verdicts_say_why(record):
    passed = render_postmortem(record(verdict="PASS"))
    assert passed.startswith("# G4 — PASS\n")
    assert ("**PASS**: the claim survived every gate (5 gate checks on 3 cells) and all 2 traps fired as declared."
            in passed)
    assert "### gate" not in passed
    invalid = render_postmortem(record(verdict="INVALID"))
    assert "**INVALID**: trap `random_basis` did not fire as declared. The run is invalid, not the idea" in invalid
    assert "| random_basis |        | observed > method | 0.9        | method=1.2 | FIRED WRONG" in invalid
    aborted = render_postmortem(record(verdict="ABORTED", kind="aborted"))
    assert "**ABORTED**: interrupted (KeyboardInterrupt). Recorded, never a decision" in aborted
    partial = render_postmortem(record(verdict="PARTIAL", kind="partial"))
    assert "**PARTIAL**: the selection (markexpr ``, keyword ``) did not cover" in partial
    ladder = record(verdict="KILL")
    ladder["killed_by"] = {"kind": "requires", "name": "g0", "cell": None, "value": None, "op": None,
                           "threshold": None, "tau": None, "message": "g4 requires g0, which was KILLED (this session)"}
    assert ("**KILL by the ladder rule**: g4 requires g0, which was KILLED (this session). No forward pass was spent."
            in render_postmortem(ladder))
    replication = render_postmortem(record(kind="replication", replication_of="20250101T000000Z-000000"))
    assert "· replication of `20250101T000000Z-000000` ·" in replication


def test_postmortem_lines_for_failing_gate_and_table_row(tmp_path, record, archived):
    run = archived(record())
    section = postmortem_lines_for(run, "activation_error", "layer=3-task=text")
    assert section.splitlines()[0] == "### gate activation_error @ layer=3-task=text"
    assert "- value 0.31, locked rule `value <= 0.2`" in section.splitlines()
    assert "## Gates" not in section
    row = postmortem_lines_for(run, "route_flip_rate", "layer=3-task=text").splitlines()
    assert row[0].startswith("| kind ") and row[1].startswith("|----")
    assert row[2] == "| gate      | route_flip_rate  | layer=3-task=text | 0.04     | <= 0.1 |      | passed    |"
    assert postmortem_lines_for(run, "bytes", None).splitlines()[2].startswith("| prefilter | bytes ")
    assert postmortem_lines_for(run, "no_such_gate", None) == ""
    assert postmortem_lines_for(tmp_path, "activation_error", None) == ""


def test_plots_are_pngs_and_deterministic(record):
    plots = render_plots(record())
    assert sorted(plots) == ["activation_error-spectrum.png", "gates.png"]
    assert all(data.startswith(PNG) for data in plots.values())
    assert render_plots(record()) == plots
    assert b"Software" not in plots["gates.png"]


def test_series_from_several_cells_share_one_plot(record):
    data = record()
    data["gates"][3]["series"] = {"spectrum": [5.0, 1.0], "per_task": [0.1, 0.2, 0.3]}
    assert sorted(render_plots(data)) == ["activation_error-per_task.png", "activation_error-spectrum.png", "gates.png"]


def test_nothing_to_plot(record):
    data = record(verdict="ABORTED", kind="aborted")
    assert data["gates"] == [] and render_plots(data) == {}


@pytest.mark.parametrize(("seed", "verdict", "says"), [
    ("KILLED", "KILL", "agrees"), ("MODEST CONSTRUCTIVE", "KILL", "differs"), ("KILLED", "PASS", "differs"),
    ("OPEN", "KILL", "the seeds decided nothing"), ("DEEPEN-STRICT", "PASS", "agrees"),
    ("KILLED", "INVALID", "this run decided nothing"),
])
def test_the_seeds_verdict_is_compared_plainly(record, seed, verdict, says):
    data = record("g4", verdict)
    data["prereg"]["content"]["params"] = {"seed_verdict": seed}
    data["prereg"]["content"]["notes"] = "full deploy +9.9% code"
    text = render_postmortem(data)
    section = text.split("## Against the seeds' OLMoE-1B-7B verdict", 1)[1].split("\n## ", 1)[0]
    assert f"seeds on OLMoE-1B-7B: **{seed}**" in section and "+9.9% code" in section
    assert says in section


def test_budget_table_is_a_table_and_only_this_rungs_context_shows(record):
    data = record("r1", "KILL")
    data["context"] = {"budget_table": [{"line": "experts", "GB": 12.9}, {"line": "attention", "GB": 0.5}],
                       "budget_deltas": {"r1": {"experts": -3}, "r2": {"experts": -2}},
                       "cells": {"r1": {"layers": {"layer=3/16": 1}}, "g4": {"rank": 2}, "r10 deep": {"layer": 9}}}
    text = render_postmortem(data)
    assert "| experts " in text and "| attention " in text
    assert '- cells: {"r1": {"layers": {"layer=3/16": 1}}}' in text and '- budget_deltas: {"r1": {"experts": -3}}' in text
    data["rung"] = "g4"
    assert "| experts " not in render_postmortem(data)  # the budget table belongs to the rungs that change it
