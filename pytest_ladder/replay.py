"""`pytest archive/`: archived runs collected as test items whose outcomes mirror the archive (protocol §7).

Each decision.json becomes one item per gate row (`gate:<name>[<cell>]`, `prefilter:<name>`) and one per trap row
(`trap:<name>`): passed rows pass, a failed or errored gate fails (the killing one printing its postmortem section),
a trap that did not fire as declared fails with expected vs observed, rows that did not run are skipped. Each
run.json (ABORTED, PARTIAL, PREFILTER_PASS) becomes one skipped item. Items carry the `gate`/`trap` (and
`analytical`) markers, so `-m gate` selects on replay as on a live run, and the user properties of a live run
(`ladder_item`, `ladder_record`, `ladder_verdict`: JSON text in JUnit XML). The plugin's pytest_collect_file calls
`collect_record_file`; the archive itself is only read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.archive import DECISION_FILE, RUN_FILE, TMP_PREFIX, ArchiveError, read_record
from pytest_ladder.postmortem import postmortem_lines_for, rule_text
from pytest_ladder.prereg_types import current_cell_id
from pytest_ladder.properties import ITEM_KEY, RECORD_KEY, VERDICT_KEY, verdict_property
from pytest_ladder.records import GateRecord, TrapRecord, fmt, where

SKIPPED_OUTCOMES = ("skipped", "not run")
MAX_DEPTH = 2  # <archive>/<rung>/<run-id>/decision.json: an argument at most two folders above the record


class ReplayFailure(Exception):
    """An archived row that failed; carries the text repr_failure prints."""


def replay_requested(file_path: Path, config: pytest.Config) -> bool:
    """Replay a record only when a command-line path names it, its run or rung folder, or the archive folder.

    So `pytest archive/` (or a rung or run folder in it, or any folder laid out like an archive) replays, while a
    plain `pytest` from a project root that also holds archive/ runs the rungs and leaves the records alone.
    Records inside `.tmp-*` folders (an interrupted write) are never replayed.
    """
    if any(part.startswith(TMP_PREFIX) for part in file_path.parts):
        return False
    file_path = file_path.resolve()
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        given = (base / str(arg).split("::")[0]).resolve()
        if given == file_path or given in file_path.parents[: MAX_DEPTH + 1]:
            return True
    return False


def _load(collector: pytest.File) -> dict | None:
    """The record, or None when it is damaged (collect then yields one failing DamagedRecord item for it, so the
    rest of the archive still replays)."""
    from pytest_ladder.archive import record_problems

    try:
        record = read_record(collector.path)
    except ArchiveError as error:
        collector.damage = str(error)
        return None
    problems = record_problems(record)
    if problems:
        collector.damage = f"{collector.path}: " + "; ".join(problems)
        return None
    return with_current_cell_ids(record)


def with_current_cell_ids(record: dict) -> dict:
    """The record with every cell id spelled as this version spells it ("layer:3/16-task:text"), so a record archived
    with the older "layer=3/16-task=text" replays under the ids a live run has and `-k` selects its cells."""
    rows = [*(record.get("gates") or []), *(record.get("traps") or []), record.get("killed_by"),
            record.get("invalid_because")]
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("cell"), str):
            row["cell"] = current_cell_id(row["cell"])
    return record


class DamagedRecord(pytest.Item):
    """An archived record that does not parse or does not match the archive schema: fails, naming file and why."""

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise ReplayFailure(f"damaged record: {self.reason}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"damaged record {self.path.name}"


class _RecordFile(pytest.File):
    """An archived record file: its items, or one failing DamagedRecord item when it is damaged."""

    def collect(self) -> Iterator[pytest.Item]:
        record = _load(self)
        if record is None:
            yield DamagedRecord.from_parent(self, name="damaged", reason=self.damage)
            return
        yield from self.items(record)

    def items(self, record: dict) -> Iterator[pytest.Item]:
        raise NotImplementedError


class DecisionFile(_RecordFile):
    """One archived decision.json: an item per gate row and per trap row."""

    def items(self, record: dict) -> Iterator[pytest.Item]:
        for row in record.get("gates") or []:
            kind = row.get("kind", "gate")
            name = f"{kind}:{row['name']}" + (f"[{row['cell']}]" if row.get("cell") else "")
            item = ArchivedGate.from_parent(self, name=name, record=record, row=row)
            item.skip_if_not_run()
            item.add_marker("gate")
            if kind == "prefilter":
                item.add_marker("analytical")
            yield item
        for row in record.get("traps") or []:
            name = f"trap:{row['name']}" + (f"[{row['cell']}]" if row.get("cell") else "")
            item = ArchivedTrap.from_parent(self, name=name, record=record, row=row)
            item.skip_if_not_run()
            item.add_marker("trap")
            yield item


class RunFile(_RecordFile):
    """One archived run.json (not a decision): a single skipped item saying what the run was."""

    def items(self, record: dict) -> Iterator[pytest.Item]:
        item = ArchivedRunItem.from_parent(self, name=f"run:{record.get('verdict')}", record=record, row={})
        item.skip_if_not_run()
        yield item


class _ArchivedItem(pytest.Item):
    def __init__(self, *, record: dict, row: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record
        self.row = row
        self.user_properties.extend(archived_properties(record, row))

    @property
    def _run(self) -> str:
        return f"{self.record.get('rung')} run {self.record.get('run_id')} ({self.record.get('kind')})"

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self._run}: {self.name}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ReplayFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def skip_if_not_run(self) -> None:
        """Rows that did not run skip, reported at the record's location (a skip mark, not a raise in here)."""
        outcome = self.row.get("outcome")
        if outcome in SKIPPED_OUTCOMES and self.row.get("passed") is not False:
            reason = f"archived as {outcome} in {self._run}"
            if self.row.get("message"):
                reason += f": {self.row['message'].strip().splitlines()[0]}"
            self.add_marker(pytest.mark.skip(reason=reason))


def archived_properties(record: dict, row: dict) -> list[tuple[str, Any]]:
    """The user properties a live run put on this row's test, read from the archive: `ladder_item` (naming the
    archived run), `ladder_record` (the measurement, when the row was measured) and the rung's `ladder_verdict`.
    The plugin writes them as JSON text on the report, as on a live run."""
    kind = row.get("kind", "trap" if "fired_as_declared" in row else "gate") if row else "run"
    item = {"rung": record.get("rung"), "kind": kind, "name": row.get("name"), "cell": row.get("cell"),
            "run_id": record.get("run_id")}
    found: list[tuple[str, Any]] = [(ITEM_KEY, item)]
    if kind == "trap" and row.get("fired_as_declared") is not None:
        found.append((RECORD_KEY, TrapRecord.from_dict(row).measurement()))
    elif kind != "trap" and row and (row.get("passed") is not None or row.get("value") is not None):
        found.append((RECORD_KEY, GateRecord.from_dict(row).measurement()))
    return found + [(VERDICT_KEY, verdict_property(record))]


class ArchivedGate(_ArchivedItem):
    """A gate (or prefilter) row of an archived decision."""

    def runtest(self) -> None:
        gate, record = GateRecord.from_dict(self.row), self.record
        if not gate.failed:
            return
        killed = record.get("killed_by") or {}
        is_killer = (killed.get("name"), killed.get("cell"), killed.get("kind")) == (gate.name, gate.cell, gate.kind)
        lines = [
            f"archived {record.get('verdict')} of {self._run}: {self.path}",
            f"{gate.kind} {where(gate.name, gate.cell)}: outcome {gate.outcome}"
            + (" — this gate KILLED the claim" if is_killer and record.get("verdict") == "KILL" else ""),
        ]
        if gate.value is not None:
            lines.append(f"value {fmt(gate.value)} against the locked rule value {rule_text(gate.op, gate.threshold)}")
        if gate.tau:
            tau = gate.tau
            lines.append(f"τ floor {fmt(tau.get('tau'))}, margin {fmt(tau.get('margin'))}, rule {tau.get('rule')}: "
                         f"beaten {fmt(tau.get('beats'))}")
        if gate.outcome == "error" and gate.message:
            lines.append(f"error: {gate.message.strip()}")
        section = postmortem_lines_for(self.path.parent, gate.name, gate.cell)
        if section:
            lines += ["", f"from {self.path.parent / 'postmortem.md'}:", section]
        raise ReplayFailure("\n".join(lines))


class ArchivedTrap(_ArchivedItem):
    """A trap row of an archived run: fails unless it fired as declared."""

    def runtest(self) -> None:
        trap = TrapRecord.from_dict(self.row)
        if trap.failed:
            refs = ", ".join(f"{k}={fmt(v)}" for k, v in trap.refs.items())
            what = "did not fire as declared" if trap.fired_as_declared is False else f"test {trap.outcome}"
            lines = [
                f"archived {self.record.get('verdict')} of {self._run}: {self.path}",
                f"trap {trap.name} {what}: expected {trap.expected}, observed {fmt(trap.observed)}"
                + (f" ({refs})" if refs else ""),
            ]
            if trap.message:
                lines.append(trap.message.strip())
            raise ReplayFailure("\n".join(lines))


class ArchivedRunItem(_ArchivedItem):
    """The single item of a run.json: always skipped, since the run decided nothing."""

    def skip_if_not_run(self) -> None:
        record = self.record
        why = (record.get("selection") or {}).get("aborted") if record.get("verdict") == "ABORTED" else None
        reason = f"{self._run} was {record.get('verdict')}" + (f" ({why})" if why else "") + ": not a decision"
        self.add_marker(pytest.mark.skip(reason=reason))

    def runtest(self) -> None:
        raise AssertionError("unreachable: an archived run.json item is always skipped")  # pragma: no cover


def collect_record_file(file_path: Path, parent: pytest.Collector) -> pytest.File | None:
    """pytest_collect_file helper: a DecisionFile for an archived decision.json, a RunFile for a run.json, when
    replay_requested; None for any other file."""
    kind = {DECISION_FILE: DecisionFile, RUN_FILE: RunFile}.get(file_path.name)
    if kind is None or not replay_requested(file_path, parent.config):
        return None
    return kind.from_parent(parent, path=file_path)
