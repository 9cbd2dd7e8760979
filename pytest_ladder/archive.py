"""The append-only archive (protocol §7): `<archive>/<rung>/<run-id>/` holding one run's files.

A decision (verdict KILL/PASS/INVALID, kind "decision" or "replication") is `decision.json`; a run that decides
nothing (ABORTED/PREFILTER_PASS/PARTIAL) is `run.json`; beside it `trap_results.json`, `postmortem.md` and plots.

Writes are atomic: every file goes into `<rung>/.tmp-<run-id>/`, is fsynced, and the folder is renamed to its final
name, all under `filelock.FileLock(<rung>/.lock)`. An interrupt leaves either nothing or a complete run folder;
leftover `.tmp-*` folders are ignored by every reader and removed by the next write for that rung. An existing run
folder is never overwritten. JSON is strict (`allow_nan=False`): the caller writes NaN/inf as strings or null first
(verdict.jsonable does), otherwise the write fails before anything is visible.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from pytest_ladder.files import fsync_dir, write_synced

DECISION_FILE = "decision.json"
RUN_FILE = "run.json"
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
LOCK_TIMEOUT_S = 120.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
_RUN_TIME = re.compile(r"(\d{8}T\d{6})(?:\.(\d{3}))?Z")


class ArchiveError(RuntimeError):
    """The archive refused a write (append-only, bad name, non-JSON value) or holds an unreadable record."""


@dataclass(frozen=True)
class ArchivedRun:
    """One run folder: its path, its record (decision.json or run.json) and whether it is a decision."""

    path: Path
    record: dict
    is_decision: bool

    @property
    def rung(self) -> str:
        return self.path.parent.name

    @property
    def run_id(self) -> str:
        return self.path.name


def new_run_id(now: datetime | None = None) -> str:
    """"YYYYMMDDTHHMMSS.mmmZ-xxxxxx": UTC time to the millisecond (ISO 8601 basic) then 6 random hex digits, so ids
    sort by time — two runs of one rung within a second too — and never collide."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def run_time(run_id: str) -> datetime | None:
    """When a run id was made (UTC, to the millisecond where the id has them; ids before milliseconds to the second),
    or None for an id of another shape."""
    match = _RUN_TIME.match(run_id)
    if match is None:
        return None
    stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return stamp.replace(microsecond=int(match.group(2) or 0) * 1000)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ArchiveError(
            f"{what} {name!r} cannot name a folder or file in the archive: use letters, digits and _.=+- "
            "(not starting with a dot or a dash)"
        )


def _encode(name: str, content: str | bytes | dict | list) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (dict, list)):
        try:
            return (json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        except ValueError as error:
            raise ArchiveError(
                f"{name}: {error}; write NaN/inf as strings or null before archiving (verdict.jsonable)"
            ) from None
        except TypeError as error:
            raise ArchiveError(f"{name}: {error}; archive records hold plain JSON data only") from None
    raise ArchiveError(f"{name}: cannot archive a {type(content).__name__}; give str, bytes or a dict")


def write_run(archive_dir: Path, rung: str, run_id: str, files: dict[str, str | bytes | dict], *,
              one_decision: tuple[str, str] | None = None,
              decided: Callable[[ArchivedRun], dict[str, str | bytes | dict]] | None = None) -> Path:
    """Atomically create `<archive_dir>/<rung>/<run_id>/` holding `files` (dicts as JSON); return the folder.

    The one-decision rule is enforced here, under the rung's lock: with `one_decision` = (seal, model), files
    holding a decision (decision.json of kind "decision") are replaced by `decided(existing)` when that prereg
    already has a decision on that model — whoever reached the write first decided, another session's run becomes
    a replication or a refused run, never a second decision."""
    _check_name("rung", rung)
    _check_name("run id", run_id)
    rung_dir = Path(archive_dir) / rung
    rung_dir.mkdir(parents=True, exist_ok=True)
    final = rung_dir / run_id
    with FileLock(str(rung_dir / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        record = files.get(DECISION_FILE)
        if one_decision is not None and isinstance(record, dict) and record.get("kind") == "decision":
            existing = find_decision(archive_dir, rung, *one_decision)
            if existing is not None:
                files = decided(existing)
        for name in files:
            _check_name("file name", name)
        payload = {name: _encode(name, content) for name, content in files.items()}
        for leftover in rung_dir.glob(f"{TMP_PREFIX}*"):  # a writer that died mid-write; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():
            raise ArchiveError(f"{final} already exists: the archive is append-only; write a new run id")
        temp = rung_dir / f"{TMP_PREFIX}{run_id}"
        temp.mkdir()
        try:
            for name, data in payload.items():
                write_synced(temp / name, data)
            fsync_dir(temp)
            os.rename(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_dir(rung_dir)
    return final


def read_record(file: Path) -> dict:
    """The JSON object in an archived record file; ArchiveError naming the file if it is unreadable."""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ArchiveError(
            f"{file}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); archives are "
            "append-only: restore the file from version history"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{file}: cannot read it ({error})") from None
    if not isinstance(record, dict):
        raise ArchiveError(f"{file}: an archive record must be a JSON object, got {type(record).__name__}")
    return record


SCHEMA_VERSION = 1
# what every archived record holds, with its JSON type (the schema `ladder archive check` and the readers enforce)
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "rung": str, "run_id": str, "kind": str, "verdict": str, "decision": bool, "gates": list, "traps": list,
    "prereg": dict, "model": dict, "selection": dict,
}


@dataclass(frozen=True)
class DamagedRun:
    """A run folder whose record does not parse or does not match the archive schema: its file and why."""

    path: Path
    reason: str


def record_problems(record: dict) -> list[str]:
    """How `record` (a parsed decision.json / run.json) departs from the archive schema; [] when it matches."""
    problems = []
    schema = record.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        problems.append(f"schema {schema!r}: this version of pytest-ladder reads schema {SCHEMA_VERSION}")
    for name, kind in RECORD_FIELDS.items():
        if name not in record:
            problems.append(f"field {name!r} is missing")
        elif not isinstance(record[name], kind) or (kind is not bool and isinstance(record[name], bool)):
            problems.append(f"field {name!r} must be a {getattr(kind, '__name__', kind)}, got "
                            f"{type(record[name]).__name__}")
    for table in ("gates", "traps"):
        rows = record.get(table)
        if isinstance(rows, list) and not all(isinstance(row, dict) and isinstance(row.get("name"), str)
                                              for row in rows):
            problems.append(f"field {table!r} must list objects with a 'name'")
    return problems


def _visible(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _scan(rung_dir: Path) -> Iterator[ArchivedRun | DamagedRun]:
    if not _visible(rung_dir):
        return
    for run_dir in sorted(filter(_visible, rung_dir.iterdir())):
        for name, is_decision in ((DECISION_FILE, True), (RUN_FILE, False)):
            file = run_dir / name
            if file.is_file():
                try:
                    record = read_record(file)
                except ArchiveError as error:
                    yield DamagedRun(file, str(error))
                    break
                problems = record_problems(record)
                yield (DamagedRun(file, f"{file}: " + "; ".join(problems)) if problems
                       else ArchivedRun(run_dir, record, is_decision))
                break


def _runs_of(rung_dir: Path) -> Iterator[ArchivedRun]:
    """The readable runs of one rung (damaged records are left out: see damaged_runs)."""
    for run in _scan(rung_dir):
        if isinstance(run, ArchivedRun):
            yield run


def iter_runs(archive_dir: Path) -> Iterator[ArchivedRun]:
    """Every readable archived run, sorted by (rung, run id); `.tmp-*` and other hidden folders are skipped, and so
    are damaged records (reported by damaged_runs)."""
    for rung_dir in _rung_dirs(archive_dir):
        yield from _runs_of(rung_dir)


def damaged_runs(archive_dir: Path, rung: str | None = None) -> list[DamagedRun]:
    """Every archived record (of `rung`, or of all rungs) that does not parse or does not match the schema."""
    dirs = [Path(archive_dir) / rung] if rung else _rung_dirs(archive_dir)
    return [run for rung_dir in dirs for run in _scan(rung_dir) if isinstance(run, DamagedRun)]


def _rung_dirs(archive_dir: Path) -> list[Path]:
    archive_dir = Path(archive_dir)
    return sorted(filter(_visible, archive_dir.iterdir())) if archive_dir.is_dir() else []


def _refuse_damaged(archive_dir: Path, rung: str) -> None:
    damaged = damaged_runs(archive_dir, rung)
    if damaged:
        raise ArchiveError(
            "; ".join(d.reason for d in damaged) + f". A damaged record of {rung} blocks a new decision for it (it "
            "may hold the decision): archives are append-only, restore the file from version history "
            "(`ladder archive check` lists every damaged record)")


def _model_name(record: dict) -> str | None:
    return (record.get("model") or {}).get("name")


def find_decision(archive_dir: Path, rung: str, seal: str, model: str) -> ArchivedRun | None:
    """The original decision (kind "decision") of the prereg with this seal on this model, or None. ArchiveError
    when a record of the rung is damaged (it may be that decision: nothing may decide over it)."""
    _refuse_damaged(archive_dir, rung)
    for run in _runs_of(Path(archive_dir) / rung):
        record = run.record
        if (
            run.is_decision
            and record.get("kind") == "decision"
            and (record.get("prereg") or {}).get("seal") == seal
            and _model_name(record) == model
        ):
            return run
    return None


def latest_decision(archive_dir: Path, rung: str, model: str | None = None) -> ArchivedRun | None:
    """The newest decision (kind "decision") of `rung`, on `model` when given: what the ladder rule reads
    (ArchiveError when a record of the rung is damaged)."""
    _refuse_damaged(archive_dir, rung)
    found = None
    for run in _runs_of(Path(archive_dir) / rung):
        wanted = model is None or _model_name(run.record) == model
        if run.is_decision and run.record.get("kind") == "decision" and wanted:
            found = run
    return found


def check_main(argv: list[str]) -> int:
    """`ladder archive check [DIR]`: every record parses and matches the schema; exit 1 naming each damaged one."""
    import argparse

    parser = argparse.ArgumentParser(prog="ladder archive check",
                                     description="check every archived record against the archive schema")
    parser.add_argument("what", choices=["check"], help="check: validate every decision.json and run.json")
    parser.add_argument("archive", nargs="?", default="archive", help="the archive folder (default: archive)")
    args = parser.parse_args(argv)
    folder = Path(args.archive)
    if not folder.is_dir():
        print(f"ladder archive check: no archive folder at {folder}", file=sys.stderr)
        return 2
    damaged = damaged_runs(folder)
    good = sum(1 for _ in iter_runs(folder))
    for run in damaged:
        print(f"DAMAGED {run.reason}")
    print(f"{good} records match schema {SCHEMA_VERSION}, {len(damaged)} damaged")
    return 1 if damaged else 0
