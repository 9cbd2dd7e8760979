"""The scoreboard from a hand-made archive: rows, ladder order, markdown, JSON and the README update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_ladder.scoreboard import main, render_markdown, scoreboard_rows

OLMOE = "allenai/OLMoE-1B-7B-0924"


@pytest.fixture
def ladder_archive(tmp_path, record, archived):
    """g0 KILL (+1 replication, +1 replication of something else), g10 PASS labelled, g10_5 INVALID, g2 aborted
    only, r1 prefilter only, g1_0 KILL by the ladder rule, and g4 on a second model."""
    archived(record("g0", "KILL", run_id="20250101T000000Z-000001"))
    archived(record("g0", "KILL", kind="replication", replication_of="20250101T000000Z-000001",
                    run_id="20250105T000000Z-000002", end="2025-01-05T00:10:00+00:00"))
    archived(record("g0", "KILL", kind="replication", replication_of="20241201T000000Z-000000",
                    run_id="20250106T000000Z-000003"))
    archived(record("g10", "PASS", run_id="20250102T000000Z-000004", label="DEEPEN-STRICT",
                    end="2025-01-02T09:00:00+00:00"))
    archived(record("g10_5", "INVALID", run_id="20250103T000000Z-000005"))
    archived(record("g2", "ABORTED", kind="aborted", run_id="20250104T000000Z-000006"))
    archived(record("r1", "PREFILTER_PASS", kind="prefilter", run_id="20250104T000000Z-000007"))
    ladder = record("g1_0", "KILL", run_id="20250104T000000Z-000008")
    ladder["killed_by"] = {"kind": "requires", "name": "g0", "cell": None, "value": None, "op": None,
                           "threshold": None, "tau": None, "message": "g1_0 requires g0, which was KILLED"}
    archived(ladder)
    archived(record("g4", "PASS", run_id="20250107T000000Z-000009", model="qwen"))
    return tmp_path / "archive"


def test_rows_in_ladder_order(ladder_archive):
    rows = scoreboard_rows(ladder_archive)
    assert [(r["rung"], r["model"]) for r in rows] == [
        ("g0", OLMOE), ("g1_0", OLMOE), ("g2", OLMOE), ("g4", "qwen"), ("g10", OLMOE), ("g10_5", OLMOE),
        ("r1", OLMOE),
    ]
    by_rung = {r["rung"]: r for r in rows}
    assert by_rung["g0"] == {
        "rung": "g0", "claim": "a static rank-16 basis per task replaces the expert inputs", "status": "KILLED",
        "verdict": "KILL", "killed_by": "activation_error @ layer=3-task=text: 0.31 > 0.2", "seeds": "", "model": OLMOE,
        "date": "2025-01-02", "run_id": "20250101T000000Z-000001", "replications": "1: 1 agreeing",
        "theorems": [{"theorem": "task_union_basis_contains_task_basis", "status": "not read"}],
    }
    assert (by_rung["g1_0"]["status"], by_rung["g1_0"]["killed_by"]) == ("KILLED", "requires g0 (KILLED)")
    assert (by_rung["g2"]["status"], by_rung["g2"]["verdict"], by_rung["g2"]["killed_by"]) == ("aborted", "ABORTED", "")
    assert (by_rung["g10"]["status"], by_rung["g10"]["date"]) == ("DEEPEN-STRICT", "2025-01-02")
    assert (by_rung["g10_5"]["status"], by_rung["g10_5"]["killed_by"]) == ("INVALID", "trap random_basis fired wrong")
    assert by_rung["r1"]["status"] == "prefilter passed" and by_rung["r1"]["replications"] == "0"


def test_the_seeds_verdict_column(tmp_path, record, archived):
    differs = record("g3", "PASS", run_id="20250101T000000Z-000001")
    differs["prereg"]["content"]["params"] = {"seed_verdict": "KILLED at 0.687"}
    agrees = record("g4", "KILL", run_id="20250101T000000Z-000002")
    agrees["prereg"]["content"]["params"] = {"seed_verdict": "KILLED"}
    invalid = record("g10", "INVALID", run_id="20250101T000000Z-000003")
    invalid["prereg"]["content"]["params"] = {"seed_verdict": "DEEPEN-STRICT"}
    for data in (differs, agrees, invalid):
        archived(data)
    rows = scoreboard_rows(tmp_path / "archive")
    assert [r["seeds"] for r in rows] == ["KILLED at 0.687 (differs)", "KILLED (agrees)",
                                         "DEEPEN-STRICT (not comparable)"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in render_markdown(rows).splitlines()]
    assert cells[0][4] == "seeds (OLMoE-1B-7B)" and cells[2][4] == "KILLED at 0.687 (differs)"


def test_model_filter(ladder_archive):
    assert [r["rung"] for r in scoreboard_rows(ladder_archive, model="qwen")] == ["g4"]
    assert "g4" not in [r["rung"] for r in scoreboard_rows(ladder_archive, model=OLMOE)]


def test_tau_kill_is_shown_against_the_floor(tmp_path, record, archived):
    data = record("g3", "KILL")
    data["killed_by"] |= {"value": 0.19, "tau": {**data["killed_by"]["tau"], "tau": 0.2, "beats": False}}
    archived(data)
    (row,) = scoreboard_rows(tmp_path / "archive")
    assert row["killed_by"] == "activation_error @ layer=3-task=text: 0.19 vs τ 0.2 fails error < tau * (1 - margin)"


def test_newest_seal_decision_is_the_row(tmp_path, record, archived):
    archived(record("g0", "PASS", run_id="20250101T000000Z-000001", seal="1" * 64))
    archived(record("g0", "KILL", run_id="20250102T000000Z-000002", seal="2" * 64))
    archived(record("g0", "ABORTED", kind="aborted", run_id="20250103T000000Z-000003", seal="3" * 64))
    (row,) = scoreboard_rows(tmp_path / "archive")
    assert (row["verdict"], row["run_id"]) == ("KILL", "20250102T000000Z-000002")


def test_markdown(ladder_archive):
    lines = render_markdown(scoreboard_rows(ladder_archive, model="qwen")).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "rung", "claim", "status", "killed by", "seeds (OLMoE-1B-7B)", "model", "date", "run", "replications",
        "theorems"]
    assert lines[1].startswith("|---")
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "g4", "a static rank-16 basis per task replaces the expert inputs", "PASSED", "", "", "qwen", "2025-01-02",
        "`20250107T000000Z-000009`", "0", "task_union_basis_contains_task_basis (not read)"]
    assert len(lines) == 3


def test_cli_markdown_and_json(ladder_archive, capsys):
    assert main(["--archive", str(ladder_archive), "--model", "qwen", "--lean-dir", "no-such-dir"]) == 0
    assert capsys.readouterr().out == render_markdown(scoreboard_rows(ladder_archive, model="qwen")) + "\n"
    assert main(["--archive", str(ladder_archive), "--format", "json", "--lean-dir", "no-such-dir"]) == 0
    assert json.loads(capsys.readouterr().out) == scoreboard_rows(ladder_archive)


def test_cli_default_archive_is_cwd_archive(ladder_archive, monkeypatch, capsys):
    monkeypatch.chdir(ladder_archive.parent)
    assert main(["--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 7


def test_cli_update_readme(ladder_archive, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Ladder\n\nintro\n<!-- scoreboard:start -->\nold table\n<!-- scoreboard:end -->\nafter\n")
    assert main(["--archive", str(ladder_archive), "--model", "qwen", "--lean-dir", "no-such-dir", "--update-readme", str(readme)]) == 0
    assert capsys.readouterr().out == f"updated {readme} (1 rungs)\n"
    table = render_markdown(scoreboard_rows(ladder_archive, model="qwen"))
    expected = f"# Ladder\n\nintro\n<!-- scoreboard:start -->\n{table}\n<!-- scoreboard:end -->\nafter\n"
    assert readme.read_text() == expected
    assert main(["--archive", str(ladder_archive), "--model", "qwen", "--lean-dir", "no-such-dir", "--update-readme", str(readme)]) == 0
    assert readme.read_text() == expected  # idempotent


def test_cli_errors(tmp_path, ladder_archive, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["--archive", str(ladder_archive), "--update-readme", str(readme)]) == 2
    assert f"{readme}: the scoreboard markers are missing" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n"
    assert main(["--archive", str(tmp_path / "nowhere")]) == 2
    assert "no archive folder at" in capsys.readouterr().err
    assert main(["--format", "html"]) == 2
    (ladder_archive / "g0" / "20250101T000000Z-000001" / "decision.json").write_text("{")
    assert main(["--archive", str(ladder_archive)]) == 0  # a damaged record is a row of its own, the rest still show
    out = capsys.readouterr().out
    assert "| damaged " in out and "decision.json: not valid JSON" in out


def test_theorem_status_comes_from_the_tracker_never_claiming_more(ladder_archive):
    lean = Path(__file__).resolve().parents[2] / "lean"
    (row,) = scoreboard_rows(ladder_archive, model="qwen", lean_dir=lean)
    # no recorded lake build on this machine: the tracker says "not checked", never "proved"
    assert row["theorems"] == [{"theorem": "task_union_basis_contains_task_basis", "status": "not checked"}]
