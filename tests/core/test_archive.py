"""The append-only archive: atomic writes, refusal to overwrite, readers that skip debris, decision look-ups."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone

import pytest

from pytest_ladder import archive
from pytest_ladder.archive import (
    ArchiveError,
    damaged_runs,
    find_decision,
    iter_runs,
    latest_decision,
    new_run_id,
    read_record,
    write_run,
)


def test_new_run_id_format_and_order():
    early = new_run_id(datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    late = new_run_id(datetime(2025, 1, 2, 3, 4, 6, tzinfo=timezone.utc))
    assert re.fullmatch(r"20250102T030405\.000Z-[0-9a-f]{6}", early)
    assert early < late
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}", new_run_id())
    assert len({new_run_id() for _ in range(50)}) == 50
    same_second = [new_run_id(datetime(2025, 1, 2, 3, 4, 5, ms * 1000, tzinfo=timezone.utc)) for ms in (9, 10, 999)]
    assert same_second == sorted(same_second) and same_second[2].startswith("20250102T030405.999Z-")


def test_write_run_writes_every_file(tmp_path):
    record = {"rung": "g4", "verdict": "KILL", "kind": "decision", "value": 0.31, "name": "é"}
    run = write_run(tmp_path, "g4", "20250102T030405Z-a1b2c3",
                    {"decision.json": record, "postmortem.md": "# G4 — KILL\n", "gates.png": b"\x89PNG\r\n"})
    assert run == tmp_path / "g4" / "20250102T030405Z-a1b2c3"
    assert sorted(p.name for p in run.iterdir()) == ["decision.json", "gates.png", "postmortem.md"]
    written = (run / "decision.json").read_text(encoding="utf-8")
    assert written == json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    assert list(json.loads((run / "decision.json").read_text())) == list(record)  # key order kept
    assert (run / "postmortem.md").read_text() == "# G4 — KILL\n"
    assert (run / "gates.png").read_bytes() == b"\x89PNG\r\n"
    assert sorted(p.name for p in (tmp_path / "g4").iterdir() if p.name != ".lock") == ["20250102T030405Z-a1b2c3"]


def test_append_only_refuses_to_overwrite(tmp_path):
    write_run(tmp_path, "g4", "r1", {"decision.json": {"verdict": "KILL"}})
    with pytest.raises(ArchiveError, match=r"r1 already exists: the archive is append-only"):
        write_run(tmp_path, "g4", "r1", {"decision.json": {"verdict": "PASS"}})
    assert read_record(tmp_path / "g4" / "r1" / "decision.json") == {"verdict": "KILL"}
    assert [p.name for p in (tmp_path / "g4").iterdir() if p.name.startswith(".tmp-")] == []


def test_nan_in_a_record_fails_before_anything_is_visible(tmp_path):
    with pytest.raises(ArchiveError, match=r"decision.json: Out of range float values are not JSON compliant.*"
                                           r"verdict.jsonable"):
        write_run(tmp_path, "g4", "r1", {"postmortem.md": "x", "decision.json": {"value": math.nan}})
    assert not (tmp_path / "g4" / "r1").exists()
    assert list(iter_runs(tmp_path)) == []


def test_interrupt_mid_write_leaves_no_run(tmp_path, monkeypatch):
    """A KeyboardInterrupt between the file writes and the rename: nothing readable, no debris."""
    calls = []

    def interrupted_rename(source, target):
        calls.append((source, target))
        raise KeyboardInterrupt

    monkeypatch.setattr(archive.os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path, "g4", "r1", {"decision.json": {"verdict": "KILL", "kind": "decision"}})
    monkeypatch.undo()
    assert [os.path.basename(s) for s, _ in calls] == [".tmp-r1"]
    assert sorted(p.name for p in (tmp_path / "g4").iterdir() if p.name != ".lock") == []
    assert list(iter_runs(tmp_path)) == [] and latest_decision(tmp_path, "g4") is None


def test_interrupt_while_writing_a_file_leaves_no_run(tmp_path, monkeypatch):
    real_fsync, seen = os.fsync, []

    def failing_fsync(fd):
        seen.append(fd)
        if len(seen) == 2:  # the second file of the run
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(archive.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_run(tmp_path, "g4", "r1", {"decision.json": {"verdict": "KILL"}, "postmortem.md": "x"})
    monkeypatch.undo()
    assert not (tmp_path / "g4" / "r1").exists() and list(iter_runs(tmp_path)) == []


def test_leftover_temp_dir_is_ignored_then_cleaned(tmp_path, record):
    """A writer killed by SIGKILL leaves .tmp-<id>: readers skip it, the next write for the rung removes it."""
    debris = tmp_path / "g4" / ".tmp-20250101T000000Z-dead00"
    debris.mkdir(parents=True)
    (debris / "decision.json").write_text(json.dumps(record()))
    (debris / "postmortem.md").write_text("half")
    assert list(iter_runs(tmp_path)) == []
    assert find_decision(tmp_path, "g4", "5" * 64, "allenai/OLMoE-1B-7B-0924") is None
    write_run(tmp_path, "g4", "r2", {"run.json": record("g4", "ABORTED", kind="aborted", run_id="r2")})
    assert not debris.exists()
    assert [run.run_id for run in iter_runs(tmp_path)] == ["r2"]


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "", "-x", "g4 rung"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(ArchiveError, match="cannot name a folder or file in the archive"):
        write_run(tmp_path, name, "r1", {"run.json": {}})
    with pytest.raises(ArchiveError, match="cannot name a folder or file in the archive"):
        write_run(tmp_path, "g4", name, {"run.json": {}})
    with pytest.raises(ArchiveError, match="cannot name a folder or file in the archive"):
        write_run(tmp_path, "g4", "r1", {name: "x"})
    assert not (tmp_path / "evil").exists()


def test_non_json_content_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match=r"decision.json: .*plain JSON data only"):
        write_run(tmp_path, "g4", "r1", {"decision.json": {"when": datetime(2025, 1, 1)}})
    with pytest.raises(ArchiveError, match=r"x.bin: cannot archive a int"):
        write_run(tmp_path, "g4", "r1", {"x.bin": 3})  # type: ignore[dict-item]


def test_iter_runs_sorted_with_decision_flags(tmp_path, record, archived):
    archived(record("g4", "KILL", run_id="20250103T000000Z-cccccc"))
    archived(record("g10", "PASS", run_id="20250101T000000Z-aaaaaa"))
    archived(record("g4", "ABORTED", kind="aborted", run_id="20250102T000000Z-bbbbbb"))
    (tmp_path / "archive" / "README.md").write_text("not a rung")
    (tmp_path / "archive" / "g4" / "notes").mkdir()  # a folder without a record is not a run
    runs = list(iter_runs(tmp_path / "archive"))
    assert [(r.rung, r.run_id, r.is_decision, r.record["verdict"]) for r in runs] == [
        ("g10", "20250101T000000Z-aaaaaa", True, "PASS"),
        ("g4", "20250102T000000Z-bbbbbb", False, "ABORTED"),
        ("g4", "20250103T000000Z-cccccc", True, "KILL"),
    ]
    assert list(iter_runs(tmp_path / "nowhere")) == []


def test_unreadable_record_is_named_skipped_by_readers_and_blocks_a_decision(tmp_path):
    run = write_run(tmp_path, "g4", "r1", {"decision.json": "{ truncated"})
    assert list(iter_runs(tmp_path)) == []
    (damaged,) = damaged_runs(tmp_path)
    assert damaged.reason.startswith(f"{run / 'decision.json'}: not valid JSON (Expecting property name")
    assert "restore the file from version history" in damaged.reason
    with pytest.raises(ArchiveError) as error:
        find_decision(tmp_path, "g4", "5" * 64, "allenai/OLMoE-1B-7B-0924")
    assert "A damaged record of g4 blocks a new decision for it" in str(error.value)


def test_find_decision_by_seal_and_model(tmp_path, record, archived):
    root = tmp_path / "archive"
    model = "allenai/OLMoE-1B-7B-0924"
    archived(record("g4", "ABORTED", kind="aborted", run_id="20250101T000000Z-000001"))
    original = archived(record("g4", "KILL", run_id="20250102T000000Z-000002"))
    archived(record("g4", "KILL", kind="replication", replication_of="20250102T000000Z-000002",
                    run_id="20250103T000000Z-000003"))
    other_model = archived(record("g4", "PASS", model="Qwen/Qwen1.5-MoE-A2.7B", run_id="20250104T000000Z-000004"))
    found = find_decision(root, "g4", "5" * 64, model)
    assert found is not None and found.path == original and found.record["kind"] == "decision"
    assert find_decision(root, "g4", "5" * 64, "Qwen/Qwen1.5-MoE-A2.7B").path == other_model
    assert find_decision(root, "g4", "6" * 64, model) is None
    assert find_decision(root, "g5", "5" * 64, model) is None


def test_latest_decision_is_the_newest_decision(tmp_path, record, archived):
    root = tmp_path / "archive"
    assert latest_decision(root, "g0") is None
    archived(record("g0", "PASS", run_id="20250101T000000Z-000001", seal="1" * 64))
    newest = archived(record("g0", "KILL", run_id="20250102T000000Z-000002", seal="2" * 64))
    archived(record("g0", "PASS", kind="replication", run_id="20250103T000000Z-000003", seal="2" * 64,
                    replication_of="20250102T000000Z-000002"))
    archived(record("g0", "PARTIAL", kind="partial", run_id="20250104T000000Z-000004"))
    qwen = archived(record("g0", "PASS", model="qwen", run_id="20250100T000000Z-000000"))
    assert latest_decision(root, "g0").path == newest
    assert latest_decision(root, "g0", "allenai/OLMoE-1B-7B-0924").path == newest
    assert latest_decision(root, "g0", "qwen").path == qwen
    assert latest_decision(root, "g0", "mixtral") is None


def test_run_time_reads_both_id_shapes():
    from datetime import datetime, timezone

    from pytest_ladder.archive import new_run_id, run_time

    assert run_time("20261123T155002Z-21b77c") == datetime(2026, 11, 23, 15, 50, 2, tzinfo=timezone.utc)
    assert run_time("20261130T052904.951Z-36da58") == datetime(2026, 11, 30, 5, 29, 4, 951000, tzinfo=timezone.utc)
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert run_time(new_run_id(now)) == now.replace(microsecond=678000)
    assert run_time("not-a-run") is None
