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


def _visible(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _runs_of(rung_dir: Path) -> Iterator[ArchivedRun]:
    if not _visible(rung_dir):
        return
    for run_dir in sorted(filter(_visible, rung_dir.iterdir())):
        if (run_dir / DECISION_FILE).is_file():
            yield ArchivedRun(run_dir, read_record(run_dir / DECISION_FILE), True)
        elif (run_dir / RUN_FILE).is_file():
            yield ArchivedRun(run_dir, read_record(run_dir / RUN_FILE), False)


def iter_runs(archive_dir: Path) -> Iterator[ArchivedRun]:
    """Every archived run, sorted by (rung, run id); `.tmp-*` and other hidden folders are skipped."""
    archive_dir = Path(archive_dir)
    if not archive_dir.is_dir():
        return
    for rung_dir in sorted(filter(_visible, archive_dir.iterdir())):
        yield from _runs_of(rung_dir)


def _model_name(record: dict) -> str | None:
    return (record.get("model") or {}).get("name")


def find_decision(archive_dir: Path, rung: str, seal: str, model: str) -> ArchivedRun | None:
    """The original decision (kind "decision") of the prereg with this seal on this model, or None."""
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
    """The newest decision (kind "decision") of `rung`, on `model` when given: what the ladder rule reads."""
    found = None
    for run in _runs_of(Path(archive_dir) / rung):
        wanted = model is None or _model_name(run.record) == model
        if run.is_decision and run.record.get("kind") == "decision" and wanted:
            found = run
    return found
