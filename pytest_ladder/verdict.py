"""One-shot verdicts (protocol §1, §7): from what each ladder test recorded to the rung's decision record.

Pure data in, data out: no pytest, no torch. `build_plan` says which items of a rung were selected (in kill-fast
order) and whether they cover it; the controller gathers each item's outcome; `decide` applies the rules below;
`build_record` lays out decision.json.

Rules, first match wins:
1. the session was interrupted or a worker crashed -> ABORTED (recorded, never a decision);
2. a required rung is KILLED -> KILL by the ladder rule, naming that rung;
3. a trap did not fire as declared -> INVALID (the run, not the idea);
4. a ladder test errored (an exception that is not a gate verdict) -> INVALID (pipeline broken);
5. a gate or prefilter failed its locked rule -> KILL, naming the first in kill-fast order;
6. everything selected passed: PASS if the selection covered every gate, trap and cell of the rung;
   PREFILTER_PASS if it covered exactly the analytical prefilters; PARTIAL otherwise (-k, a node id, -x elsewhere).
A run that may not decide (a partial selection of a prereg already decided on this model, or any partial selection
with --ladder-replicate) turns a KILL or INVALID into PARTIAL, keeping what it saw: it cannot change the decision.

A replication agrees with the decision it replicates when both reached the same verdict and, for a KILL, the same
killing gate (kind, name and cell): `agreement`.

Under kill-fast only the items up to the first kill (in plan order) and the rung's traps count, so xdist workers that did not hear of a
kill and ran later items decide nothing different from one process. `settled` says when the verdict is known, so
the controller can archive the rung at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pytest_ladder.prereg_types import current_cell_id
from pytest_ladder.records import GateRecord, TrapRecord

KILL, PASS, INVALID = "KILL", "PASS", "INVALID"
ABORTED, PREFILTER_PASS, PARTIAL = "ABORTED", "PREFILTER_PASS", "PARTIAL"
DECISIONS = (KILL, PASS, INVALID)

RUN_KIND = {ABORTED: "aborted", PREFILTER_PASS: "prefilter", PARTIAL: "partial"}


@dataclass
class PlannedItem:
    """One selected ladder test, in kill-fast order."""

    nodeid: str
    kind: str  # gate | prefilter | trap
    name: str
    cell: str | None


@dataclass
class Plan:
    """What the collection said about one rung (computed on every worker alike)."""

    rung: str
    prereg_path: str
    items: list[PlannedItem]
    complete: bool  # the selection covers every declared gate/trap/prefilter and every cell
    only_prefilters: bool  # the selection is exactly the analytical prefilters (all of them)
    requires: tuple[str, ...] = ()  # the rungs the prereg requires (the ladder rule)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan back from plain data (`dataclasses.asdict`), as it crosses from an xdist worker."""
        return cls(**{**data, "items": [PlannedItem(**i) for i in data["items"]],
                      "requires": tuple(data.get("requires", ()))})


def build_plan(
    rung: str,
    prereg_path: str,
    items: list[PlannedItem],
    *,
    gates: set[str],
    traps: set[str],
    prefilters: set[str],
    cells: set[str],
    requires: tuple[str, ...] = (),
) -> Plan:
    """The plan of one rung from its selected items (kill-fast order): complete when every declared gate, trap and
    prefilter is selected, on every prereg cell when it takes one; only_prefilters when exactly the prefilters are."""
    covered: dict[tuple[str, str], set] = {}
    for item in items:
        covered.setdefault((item.kind, item.name), set()).add(item.cell)

    def covers(kind: str, names: set[str]) -> bool:
        return all((kind, n) in covered and (covered[(kind, n)] == {None} or covered[(kind, n)] >= cells)
                   for n in names)

    complete = covers("gate", gates) and covers("trap", traps) and covers("prefilter", prefilters)
    only_prefilters = bool(prefilters) and covers("prefilter", prefilters) and all(
        kind == "prefilter" for kind, _ in covered)
    return Plan(rung, prereg_path, list(items), complete, only_prefilters, tuple(requires))


@dataclass
class Outcome:
    """What happened to one item: pytest's outcome plus what `gate.check` / `trap.check` recorded."""

    outcome: str = "not run"  # passed | failed | error | skipped | not run
    records: list[dict] = field(default_factory=list)
    message: str | None = None
    duration_s: float = 0.0


@dataclass
class Verdict:
    verdict: str
    killed_by: dict | None = None
    invalid_because: dict | None = None

    @property
    def is_decision(self) -> bool:
        return self.verdict in DECISIONS


def first_kill(plan: Plan, outcomes: dict[str, Outcome]) -> int | None:
    """Plan position of the first item whose gate or prefilter failed its locked rule, or None."""
    for index, item in enumerate(plan.items):
        out = outcomes.get(item.nodeid)
        if out is not None and any(r["kind"] in ("gate", "prefilter") for r in _failed_records(out)):
            return index
    return None


def after_kill(plan: Plan, kill: int) -> list[PlannedItem]:
    """What still counts after the kill at plan position `kill`: every item up to it and every trap after it.
    Kill-fast skips the remaining cells, never the traps that validate a kill, so a kill-fast run reaches the
    verdict a full run reaches (KILL, or INVALID when a trap fires wrong)."""
    return plan.items[: kill + 1] + [item for item in plan.items[kill + 1:] if item.kind == "trap"]


def settled(plan: Plan, outcomes: dict[str, Outcome], done: set[str], *, kill_fast: bool) -> bool:
    """Is the rung's verdict known? Yes once every planned item has finished (`done`: node ids whose last report
    arrived); with kill-fast also once a gate killed it and every item that still counts (`after_kill`) finished,
    since kill-fast skips the rest."""
    if all(item.nodeid in done for item in plan.items):
        return True
    kill = first_kill(plan, outcomes) if kill_fast else None
    return kill is not None and all(item.nodeid in done for item in after_kill(plan, kill))


def decide(
    plan: Plan,
    outcomes: dict[str, Outcome],
    *,
    aborted: bool = False,
    requires_killed: dict | None = None,
    kill_fast: bool = False,
    may_decide: bool = True,
) -> Verdict:
    """Apply the locked rules (module docstring) to one rung's outcomes; without `may_decide` a decision verdict
    of an incomplete selection becomes PARTIAL (what killed or invalidated it is kept).

    With `kill_fast` only the items up to the first kill (in plan order) and the traps count (`after_kill`):
    kill-fast skips the other cells, so the verdict is the same whether they were skipped in one process or ran on
    another xdist worker that had not heard of the kill, and the same as a full run's.
    """
    verdict = _decide(plan, outcomes, aborted=aborted, requires_killed=requires_killed, kill_fast=kill_fast)
    if verdict.is_decision and not may_decide and not plan.complete:
        return Verdict(PARTIAL, killed_by=verdict.killed_by, invalid_because=verdict.invalid_because)
    return verdict


def _decide(plan: Plan, outcomes: dict[str, Outcome], *, aborted: bool, requires_killed: dict | None,
            kill_fast: bool) -> Verdict:
    if aborted:
        return Verdict(ABORTED)
    if requires_killed:
        rung, run = next(iter(requires_killed.items()))
        return Verdict(
            KILL,
            killed_by={
                "kind": "requires",
                "name": rung,
                "cell": None,
                "value": None,
                "op": None,
                "threshold": None,
                "tau": None,
                "message": f"{plan.rung} requires {rung}, which was KILLED ({run.get('where', 'this session')})",
            },
        )
    items = plan.items
    kill = first_kill(plan, outcomes) if kill_fast else None
    if kill is not None:
        items = after_kill(plan, kill)
    rows = [(item, outcomes.get(item.nodeid, Outcome())) for item in items]
    for item, out in rows:
        for record in out.records:
            if record["kind"] == "trap" and not record["fired_as_declared"]:
                return _invalid("trap", item, out.message or f"trap {item.name} did not fire as declared")
    for item, out in rows:
        if out.outcome == "error" or (out.outcome == "failed" and not _failed_records(out)):
            return _invalid("error", item, out.message or "the test raised an error (pipeline broken)")
    for item, out in rows:
        for record in _failed_records(out):
            if record["kind"] in ("gate", "prefilter"):
                return Verdict(KILL, killed_by=_kill_row(record, out))
    if all(out.outcome == "passed" for _, out in rows) and rows:
        if plan.complete:
            return Verdict(PASS)
        if plan.only_prefilters:
            return Verdict(PREFILTER_PASS)
    return Verdict(PARTIAL)


def killing_gate(killed_by: dict | None) -> dict | None:
    """What killed a rung, for comparing two runs: {kind, name, cell} of its `killed_by` (None when nothing did),
    the cell as this version spells it (records written with "layer=3/16" ids name the cell "layer:3/16")."""
    if not killed_by:
        return None
    found = {key: killed_by.get(key) for key in ("kind", "name", "cell")}
    if isinstance(found["cell"], str):
        found["cell"] = current_cell_id(found["cell"])
    return found


def agreement(record: dict, decision: dict) -> dict:
    """Does the replication `record` agree with the `decision` it replicates (both decision.json layouts, or at
    least their run_id, verdict and killed_by)? Agreeing: the same verdict and, for a KILL, the same killing gate.
    Returns {agrees, run_id, verdict, killed_by} with the decision's run id, verdict and killing gate."""
    same = record.get("verdict") == decision.get("verdict") and (
        record.get("verdict") != KILL or killing_gate(record.get("killed_by")) == killing_gate(decision.get("killed_by")))
    return {"agrees": bool(same), "run_id": decision.get("run_id"), "verdict": decision.get("verdict"),
            "killed_by": killing_gate(decision.get("killed_by"))}


def _invalid(kind: str, item: PlannedItem, message: str) -> Verdict:
    """INVALID because of `item`: a trap that did not fire as declared ("trap") or a test that errored ("error")."""
    return Verdict(INVALID, invalid_because={"kind": kind, "name": item.name, "cell": item.cell, "message": message})


def _failed_records(out: Outcome) -> list[dict]:
    return [r for r in out.records if r.get("passed") is False or r.get("fired_as_declared") is False]


def _kill_row(record: dict, out: Outcome) -> dict:
    gate = GateRecord.from_dict(record)
    return {"kind": gate.kind, "name": gate.name, "cell": gate.cell, "value": gate.value, "op": gate.op,
            "threshold": gate.threshold, "tau": gate.tau, "message": out.message}


def jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the archive stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def gate_rows(plan: Plan, outcomes: dict[str, Outcome], kind: str) -> list[dict]:
    """The decision's `gates` (kind 'gate': gates and prefilters) or `traps` rows, in kill-fast order."""
    rows = []
    for item in plan.items:
        is_trap = item.kind == "trap"
        if is_trap != (kind == "trap"):
            continue
        out = outcomes.get(item.nodeid, Outcome())
        measured = next((r for r in out.records if (r["kind"] == "trap") == is_trap), {})
        ended = {"name": item.name, "cell": item.cell, "outcome": out.outcome, "nodeid": item.nodeid,
                 "duration_s": out.duration_s, "message": out.message}
        if is_trap:
            rows.append(TrapRecord.from_dict({**measured, **ended}).row())
        else:
            rows.append(GateRecord.from_dict({**measured, **ended, "kind": item.kind}).row())
    return rows


def build_record(
    *,
    plan: Plan,
    outcomes: dict[str, Outcome],
    verdict: Verdict,
    run_id: str,
    prereg_content: dict,
    seal: str | None,
    model: dict,
    data: dict,
    seeds: list[int],
    software: dict,
    selection: dict,
    timings: dict,
    requires: dict,
    replication_of: str | None = None,
    context: dict | None = None,
    replicates: dict | None = None,
) -> dict:
    """Lay out decision.json (run.json for non-decisions) as protocol §7 lists it. A replication (`replicates`:
    the replicated decision's run_id, verdict and killed_by) records whether it agrees with it (`agreement`)."""
    if verdict.is_decision:
        kind = "replication" if replication_of else "decision"
    else:
        kind = RUN_KIND[verdict.verdict]
    record = {
        "schema": 1,
        "rung": plan.rung,
        "run_id": run_id,
        "kind": kind,
        "verdict": verdict.verdict,
        "decision": kind == "decision",
        "replication_of": replication_of,
        "claim": prereg_content.get("claim"),
        "metric": prereg_content.get("metric"),
        "label": prereg_content.get("label"),
        "prereg": {"path": plan.prereg_path, "seal": seal, "content": prereg_content},
        "killed_by": verdict.killed_by,
        "invalid_because": verdict.invalid_because,
        "gates": gate_rows(plan, outcomes, "gate"),
        "traps": gate_rows(plan, outcomes, "trap"),
        "model": model,
        "data": data,
        "seeds": seeds,
        "software": software,
        "selection": selection,
        "timings": timings,
        "requires": requires,
        "context": context or {},
    }
    if kind == "replication" and replicates is not None:
        record["agreement"] = agreement(record, replicates)
    return jsonable(record)
