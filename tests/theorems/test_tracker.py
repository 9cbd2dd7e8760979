"""The theorem tracker on a fixture Lean project (tests/theorems/fixtures) and on the repository's own lean/.

No Lean toolchain is installed here, so `--check` runs against a `lake` executable written by the test: a shell
script that exits 0 or 1 (and may print Lean's sorry warning). It exercises the real subprocess, record and hash path;
what it cannot do is compile Lean, which is exactly why no row may say "proved" without its record.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import pytest

from pytest_ladder import theorems
from pytest_ladder.cli import main as ladder_main
from pytest_ladder.prereg import PreregError

FIXTURES = Path(__file__).parent / "fixtures"
REPO_LEAN = Path(__file__).resolve().parents[2] / "lean"

CLEAN = {"clean_add", "clean_lemma", "attributed", "private_clean", "string_not_sorry", "hidden_sorry", "clean_inner"}
SORRY = {"unfinished", "uses_unfinished", "uses_admit", "sorry_and_axiom"}
AXIOM = {"direct_axiom", "via_def", "via_theorem", "by_native"}
ORPHAN = {"orphan_clean"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A private copy of the fixture project (the tracker writes its build record next to the sources)."""
    dest = tmp_path / "lean"
    shutil.copytree(FIXTURES, dest)
    return dest


@pytest.fixture
def fake_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put an executable `lake` with the given shell body first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def install(body: str) -> Path:
        script = bin_dir / "lake"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return script

    return install


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["theorem"]: row for row in rows}


def rows_line(project: Path, name: str) -> int:
    return by_name(theorems.theorem_rows(project))[name]["line"]


def status_counts(rows: list[dict]) -> Counter:
    return Counter(row["status"] for row in rows)


# ----------------------------------------------------------------------------------------------------------------
# Reading the sources


def test_fixture_without_a_build_proves_nothing(project: Path) -> None:
    rows = theorems.theorem_rows(project)
    assert set(by_name(rows)) == CLEAN | SORRY | AXIOM | ORPHAN
    assert status_counts(rows) == {"not checked": 8, "sorry": 4, "axiom-dependent": 4}
    assert not any(row["checked"] for row in rows)
    rows_ = by_name(rows)
    assert {n for n, r in rows_.items() if r["status"] == "sorry"} == SORRY
    assert {n for n, r in rows_.items() if r["status"] == "axiom-dependent"} == AXIOM
    assert {n for n, r in rows_.items() if r["status"] == "not checked"} == CLEAN | ORPHAN


def test_row_fields(project: Path) -> None:
    rows = by_name(theorems.theorem_rows(project))
    assert all(tuple(row) == theorems.ROW_KEYS for row in rows.values())
    assert rows["clean_add"] == {
        "theorem": "clean_add", "rung": "g0", "file": "Algebra.lean", "line": 9, "status": "not checked",
        "sorry": False, "axioms": [], "checked": False,
    }
    assert rows["unfinished"]["rung"] == "g2" and rows["unfinished"]["line"] == 22
    assert rows["clean_inner"]["file"] == "Kills.lean" and rows["clean_inner"]["rung"] == "g0"
    assert rows["attributed"]["rung"] is None
    assert rows["orphan_clean"]["rung"] == "g7"


def test_axioms_are_found_transitively(project: Path) -> None:
    rows = by_name(theorems.theorem_rows(project))
    both = ["measured_floor", "measured_floor_pos"]
    assert rows["direct_axiom"]["axioms"] == both  # statement uses one, proof the other
    assert rows["via_def"]["axioms"] == both  # through the definition floor_twice
    assert rows["via_theorem"]["axioms"] == both  # through the theorem direct_axiom
    assert rows["sorry_and_axiom"]["axioms"] == ["measured_floor"]
    assert rows["sorry_and_axiom"]["status"] == "sorry"  # sorry outranks axiom-dependent
    assert rows["uses_unfinished"]["sorry"] is True  # sorry through a lemma it uses
    assert rows["by_native"]["axioms"] == ["Lean.ofReduceBool"]  # native_decide trusts the compiler
    assert theorems.declared_axioms(project) == both


def test_comments_strings_and_module_docs_are_not_code(project: Path) -> None:
    names = {d.name for d in theorems.parse_sources(project)}
    assert not names & {"fake_in_module_doc", "commented_out", "nested_fake"}
    rows = by_name(theorems.theorem_rows(project))
    assert rows["string_not_sorry"]["sorry"] is False
    assert rows["clean_add"]["sorry"] is False


def test_full_names_follow_namespaces(project: Path) -> None:
    decls = {d.name: d for d in theorems.parse_sources(project)}
    assert decls["clean_inner"].full_name == "Fix.Inner.clean_inner"
    assert decls["via_theorem"].full_name == "Fix.via_theorem"
    assert decls["orphan_clean"].full_name == "orphan_clean"
    assert decls["measured_floor"].kind == "axiom"


def test_blanking_keeps_offsets_and_lines() -> None:
    text = 'theorem a : True := trivial -- sorry\n/- x /- y -/ sorry -/ def s := "so\\"rry"\n/-- rung: g4 -/\n'
    code, docs = theorems.blank_comments_and_strings(text)
    assert len(code) == len(text) and code.count("\n") == text.count("\n")
    assert "sorry" not in code and "rung" not in code
    assert code.startswith("theorem a : True := trivial ")
    assert "def s :=" in code
    assert [doc for _, _, doc in docs] == [" rung: g4 "]


def test_sources_digest_tracks_every_source_byte(project: Path) -> None:
    before = theorems.sources_digest(project)
    assert before == theorems.sources_digest(project)
    (project / "Orphan.lean").write_text((project / "Orphan.lean").read_text() + "\n-- an edit\n")
    assert theorems.sources_digest(project) != before


def test_built_files_follow_the_default_target_imports(project: Path) -> None:
    assert theorems.built_files(project) == {"Kills.lean", "Algebra.lean", "Measured.lean"}


def test_built_files_honour_src_dir_and_default_targets(tmp_path: Path) -> None:
    (tmp_path / "src" / "Main").mkdir(parents=True)
    (tmp_path / "lakefile.lean").write_text(
        "import Lake\nopen Lake DSL\npackage p\n\nlean_lib Other where\n\n"
        '@[default_target]\nlean_lib Main where\n  srcDir := "src"\n'
    )
    (tmp_path / "src" / "Main.lean").write_text("import Main.Sub\nimport Mathlib\n-- import Main.Commented\n")
    (tmp_path / "src" / "Main" / "Sub.lean").write_text("theorem t : True := trivial\n")
    (tmp_path / "Other.lean").write_text("theorem o : True := trivial\n")
    assert theorems.built_files(tmp_path) == {"src/Main.lean", "src/Main/Sub.lean"}
    (tmp_path / "lakefile.lean").unlink()
    (tmp_path / "lakefile.toml").write_text(
        'name = "p"\ndefaultTargets = ["Other"]\n\n[[lean_lib]]\nname = "Other"\n\n'
        '[[lean_lib]]\nname = "Main"\nsrcDir = "src"\n'
    )
    assert theorems.built_files(tmp_path) == {"Other.lean"}


# ----------------------------------------------------------------------------------------------------------------
# A recorded build


def test_successful_build_proves_the_clean_theorems_it_compiled(project: Path, fake_lake) -> None:
    fake_lake('echo "Build completed successfully."; exit 0')
    record = theorems.run_lake_build(project, timeout_s=60)
    assert record["ok"] is True and record["returncode"] == 0
    assert record["sources_sha256"] == theorems.sources_digest(project)
    assert json.loads((project / theorems.RECORD_NAME).read_text()) == record

    rows = by_name(theorems.theorem_rows(project))
    assert status_counts(rows.values()) == {"proved": 7, "sorry": 4, "axiom-dependent": 4, "not checked": 1}
    assert {n for n, r in rows.items() if r["status"] == "proved"} == CLEAN
    assert rows["orphan_clean"]["status"] == "not checked" and rows["orphan_clean"]["checked"] is False
    assert all(rows[n]["checked"] for n in CLEAN | SORRY | AXIOM)
    for row in rows.values():
        if row["status"] == "proved":
            assert row["checked"] and not row["sorry"] and not row["axioms"]


def test_build_warnings_expose_a_sorry_the_sources_hide(project: Path, fake_lake) -> None:
    line = by_name(theorems.theorem_rows(project))["hidden_sorry"]["line"]
    # lake's relay of Lean's warning; an unrelated file's warning on the same line must not count
    fake_lake(
        f"echo \"warning: ././Algebra.lean:{line}:8: declaration uses 'sorry'\"; "
        f"echo \"NotAlgebra.lean:{rows_line(project, 'clean_add')}:8: warning: declaration uses 'sorry'\"; exit 0"
    )
    theorems.run_lake_build(project, timeout_s=60)
    rows = by_name(theorems.theorem_rows(project))
    assert rows["hidden_sorry"]["status"] == "sorry" and rows["hidden_sorry"]["sorry"] is True
    assert rows["clean_add"]["status"] == "proved"
    assert status_counts(rows.values()) == {"proved": 6, "sorry": 5, "axiom-dependent": 4, "not checked": 1}


def test_changed_sources_void_the_record(project: Path, fake_lake) -> None:
    fake_lake("exit 0")
    theorems.run_lake_build(project, timeout_s=60)
    assert status_counts(theorems.theorem_rows(project))["proved"] == 7
    (project / "Algebra.lean").write_text((project / "Algebra.lean").read_text() + "\n-- edited after the build\n")
    rows = theorems.theorem_rows(project)
    assert status_counts(rows)["proved"] == 0
    assert not any(row["checked"] for row in rows)
    assert "other sources" in theorems.build_note(project)


def test_failed_build_checks_nothing(project: Path, fake_lake) -> None:
    fake_lake('echo "error: Kills.lean:3:0: unknown identifier"; exit 1')
    record = theorems.run_lake_build(project, timeout_s=60)
    assert record["ok"] is False and record["returncode"] == 1
    rows = theorems.theorem_rows(project)
    assert status_counts(rows) == {"not checked": 8, "sorry": 4, "axiom-dependent": 4}
    assert "FAILED" in theorems.build_note(project)


def test_sources_edited_during_the_build_do_not_count(project: Path, fake_lake) -> None:
    fake_lake(f"echo '-- edited while building' >> '{project / 'Algebra.lean'}'; exit 0")
    record = theorems.run_lake_build(project, timeout_s=60)
    assert record["ok"] is False and record["sources_changed_during_build"] is True
    assert status_counts(theorems.theorem_rows(project))["proved"] == 0


def test_a_forged_record_for_other_sources_is_ignored(project: Path) -> None:
    (project / theorems.RECORD_NAME).write_text(json.dumps({"ok": True, "sources_sha256": "0" * 64}))
    assert status_counts(theorems.theorem_rows(project))["proved"] == 0


# ----------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_json_is_the_row_list(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert ladder_main(["theorems", "--lean-dir", str(project), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == theorems.theorem_rows(project)
    assert len(rows) == 16 and all(list(row) == list(theorems.ROW_KEYS) for row in rows)


def test_cli_grid_says_not_checked_everywhere_without_a_build(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(project))  # no lake anywhere on PATH
    assert theorems.main(["--lean-dir", str(project), "--check"]) == 0
    captured = capsys.readouterr()
    assert "lake is not on PATH" in captured.err
    body = [line for line in captured.out.splitlines() if line.split() and line.split()[0] in by_name(
        theorems.theorem_rows(project))]
    assert len(body) == 16 and all("not checked" in line for line in body)
    assert "0 proved" in captured.out and "never run here" in captured.out
    assert "2 named axioms (measured constants): measured_floor, measured_floor_pos" in captured.out
    assert not (project / theorems.RECORD_NAME).exists()


def test_cli_check_runs_lake_and_reports_failure(project: Path, fake_lake, capsys: pytest.CaptureFixture) -> None:
    fake_lake("exit 3")
    assert theorems.main(["--lean-dir", str(project), "--check", "--json"]) == 1
    captured = capsys.readouterr()
    assert "lake build failed (exit 3)" in captured.err
    assert not any(row["checked"] for row in json.loads(captured.out))


def test_cli_missing_lean_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert theorems.main(["--lean-dir", str(tmp_path / "nope")]) == 2
    assert "--lean-dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Links to rungs through the prereg


def write_prereg(prereg_dir: Path, rung: str, **fields) -> Path:
    """A valid prereg for `rung` (schema of pytest_ladder.prereg) with `fields` overriding the defaults."""
    data = {
        "claim": "a fixture claim", "metric": "relative Frobenius error", "data_points": 10, "random_seeds": 2,
        "decision_threshold": "error < tau * (1 - margin)", "tau_margin": 0.1, "model": "embedded",
        "tasks": ["text"], "cells": [{"layer": 0, "task": "text"}], "hardest_cell": "layer=0-task=text",
        "gates": {"activation_error": 0.1}, "traps": {"trivial_pass": "observed == 0"}, **fields,
    }
    path = prereg_dir / rung / "tau.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_theorems_for_rung_joins_tags_and_prereg(project: Path, tmp_path: Path) -> None:
    prereg = tmp_path / "prereg"
    write_prereg(prereg, "g2", theorems=["direct_axiom", "Fix.Inner.clean_inner", "no_such_theorem"])
    rows = theorems.theorems_for_rung("g2", project, prereg)
    assert [r["theorem"] for r in rows] == [
        "unfinished", "direct_axiom", "via_def", "clean_inner", "no_such_theorem",
    ]
    missing = rows[-1]
    assert missing == {
        "theorem": "no_such_theorem", "rung": "g2", "file": None, "line": None, "status": "missing",
        "sorry": False, "axioms": [], "checked": False,
    }
    assert [r["theorem"] for r in theorems.theorems_for_rung("G0", project, prereg)] == ["clean_add", "clean_inner"]
    assert theorems.theorems_for_rung("g9", project, prereg) == []


def test_prereg_theorems_field_must_be_names(tmp_path: Path) -> None:
    write_prereg(tmp_path, "g4", theorems="static_student_bytes_lt_dense")
    with pytest.raises(PreregError, match=r"g4/tau.json: field 'theorems'"):
        theorems.prereg_theorems("g4", tmp_path)
    assert theorems.prereg_theorems("g5", tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# The repository's own kill theorems


BRIEF = {
    "invertible_gauge_preserves_rank_family": "g0",
    "orthogonal_gauge_preserves_singular_values": "g0",
    "orthogonal_gauge_cannot_lower_rank_floor": "g0",
    "olmoe_tucker_cross_mode_no_compression": "g2",
    "static_student_bytes_lt_dense": "g4",
    "route_flip_zero_above_margin": "g6",
    "activation_weighted_error_le_frobenius": "g4",
    "task_union_basis_contains_task_basis": "g4",
    "one_bit_compounding_exceeds_gate": "r1",
}


@pytest.fixture
def repo_lean(tmp_path: Path) -> Path:
    dest = tmp_path / "lean"
    shutil.copytree(REPO_LEAN, dest, ignore=shutil.ignore_patterns(".lake", "lake-packages", theorems.RECORD_NAME))
    return dest


def test_repository_theorems_are_declared_and_tagged(repo_lean: Path) -> None:
    rows = by_name(theorems.theorem_rows(repo_lean))
    for name, rung in BRIEF.items():
        assert name in rows, f"lean/ does not declare {name}"
        assert rows[name]["rung"] == rung
    assert all(row["status"] != "proved" and not row["checked"] for row in rows.values())
    assert all(row["rung"] for row in rows.values()), "every theorem's doc comment names its rung"


def test_repository_sorry_and_axioms_are_reported(repo_lean: Path) -> None:
    rows = by_name(theorems.theorem_rows(repo_lean))
    assert {n for n, r in rows.items() if r["sorry"]} == {"eckart_young_floor", "regauge_residual_floor"}
    tucker = rows["olmoe_tucker_cross_mode_no_compression"]
    assert tucker["status"] == "axiom-dependent" and tucker["sorry"] is False
    assert tucker["axioms"] == sorted(theorems.declared_axioms(repo_lean))
    assert {n for n, r in rows.items() if r["axioms"]} == {"olmoe_tucker_cross_mode_no_compression"}


def test_repository_measured_constants_live_in_measured_lean(repo_lean: Path) -> None:
    axioms = [d for d in theorems.parse_sources(repo_lean) if d.kind == "axiom"]
    assert len(axioms) == 4
    assert {d.file for d in axioms} == {"LadderKills/Measured.lean"}
    assert all(d.rung == "g2" for d in axioms)


def test_repository_build_covers_every_file(repo_lean: Path) -> None:
    sources = {p.relative_to(repo_lean).as_posix() for p in theorems.lean_files(repo_lean)} - {"lakefile.lean"}
    assert theorems.built_files(repo_lean) == sources
