"""What a gate or a trap recorded, typed: `GateRecord` and `TrapRecord` serialise to the archive's JSON rows (the same
keys in the same order as every archived decision.json, so old archives read back), and the one sentence that says
what killed a rung. Plain data, no pytest: the records travel on test reports across xdist as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}  # how a failed `value <op> threshold` reads
FAILED_OUTCOMES = ("failed", "error")


def fmt(value: Any) -> str:
    """Numbers to 6 significant digits, None as empty, booleans as yes/no, everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def where(name: str, cell: str | None) -> str:
    """"activation_error @ layer:3-task:text" (the name alone without a cell)."""
    return name + (f" @ {cell}" if cell else "")


class _Row:
    """The archive serialisation both records share: `MEASUREMENT` is what a check puts on the test report, `ROW`
    the row of decision.json; `DICT_FIELD` is the dict field that reads back as {} when missing or null."""

    MEASUREMENT: tuple[str, ...] = ()
    ROW: tuple[str, ...] = ()
    DICT_FIELD = ""

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        """From a measurement on a report or a row of an archived decision (missing keys take their defaults)."""
        known = {key: data[key] for key in cls.ROW if key in data}
        known[cls.DICT_FIELD] = known.get(cls.DICT_FIELD) or {}
        return cls(**known)

    def measurement(self) -> dict:
        """What `gate.check` / `trap.check` put on the test report."""
        return {key: getattr(self, key) for key in self.MEASUREMENT}

    def row(self) -> dict:
        """The row of decision.json's `gates` or `traps` (and trap_results.json)."""
        return {key: getattr(self, key) for key in self.ROW}


@dataclass
class GateRecord(_Row):
    """One gate or prefilter check: value against the locked rule `value <op> threshold` (and the τ floor when the
    gate is declared vs_tau), plus how its test ended (outcome, node id, duration, failure message)."""

    name: str
    cell: str | None = None
    kind: str = "gate"  # gate | prefilter
    value: Any = None
    op: str | None = None
    threshold: Any = None
    passed: bool | None = None
    tau: dict | None = None
    series: dict | None = None
    extra: dict = field(default_factory=dict)
    outcome: str = "not run"
    nodeid: str | None = None
    duration_s: float = 0.0
    message: str | None = None

    MEASUREMENT = ("kind", "name", "cell", "value", "op", "threshold", "passed", "tau", "series", "extra")
    ROW = ("name", "cell", "kind", "value", "op", "threshold", "passed", "tau", "series", "extra", "outcome", "nodeid",
           "duration_s", "message")
    DICT_FIELD = "extra"

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES or self.passed is False


@dataclass
class TrapRecord(_Row):
    """One trap: the declared expectation, what was observed (with reference values), whether it fired as
    declared, plus how its test ended."""

    name: str
    cell: str | None = None
    expected: str | None = None
    observed: Any = None
    refs: dict = field(default_factory=dict)
    fired_as_declared: bool | None = None
    outcome: str = "not run"
    nodeid: str | None = None
    duration_s: float = 0.0
    message: str | None = None

    kind = "trap"
    MEASUREMENT = ("kind", "name", "cell", "expected", "observed", "refs", "fired_as_declared")
    ROW = ("name", "cell", "expected", "observed", "refs", "fired_as_declared", "outcome", "nodeid", "duration_s",
           "message")
    DICT_FIELD = "refs"

    @property
    def failed(self) -> bool:
        return self.fired_as_declared is False or self.outcome in FAILED_OUTCOMES


def measurement_from_dict(data: dict) -> GateRecord | TrapRecord:
    """A measurement read back from a test report."""
    return TrapRecord.from_dict(data) if data.get("kind") == "trap" else GateRecord.from_dict(data)


def killed_by_sentence(killed: dict) -> str:
    """What killed a rung, from decision.json's `killed_by`, e.g. "activation_error @ layer:3-task:text: 0.31 > 0.2",
    "activation_error @ layer:3-task:text: 0.19 vs τ 0.2 fails error < tau * (1 - margin)" when the τ floor was not
    beaten, "requires g0 (KILLED)" by the ladder rule. It reads the verdict the check recorded; it judges nothing
    again."""
    if killed.get("kind") == "requires":
        return f"requires {killed.get('name')} (KILLED)"
    value, op, threshold, tau = killed.get("value"), killed.get("op"), killed.get("threshold"), killed.get("tau")
    head = f"{where(str(killed.get('name')), killed.get('cell'))}: {fmt(value)}"
    if tau and tau.get("beats") is False:
        return f"{head} vs τ {fmt(tau.get('tau'))} fails {tau.get('rule')}"
    return f"{head} {NEGATED.get(op, 'fails ' + str(op))} {fmt(threshold)}"
