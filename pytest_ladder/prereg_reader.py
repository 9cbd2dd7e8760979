"""Reading a prereg's fields: each field checked on its own so that one error lists every problem (file, field,
fix); the rules parsed by the safe expression language (expr.py). prereg.py loads files and builds the Prereg.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

from pytest_ladder.expr import Expr, ExprError, parse_expr
from pytest_ladder.prereg_types import (
    ALLOWED, GATE_KEYS, GATE_OPS, REQUIRED, RULE_NAMES, RUNG_NAME, TRAP_KEYS, TRAP_OBSERVED, Cell, GateSpec,
    PreregError, TrapSpec,
)
from pytest_ladder.prereg_types import cell_id as make_cell_id, current_cell_id


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, Path) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _got(value: Any) -> str:
    """How a bad value is quoted in an error: its JSON text, plus its kind where the text alone could mislead."""
    if isinstance(value, (bool, str, list, dict)) or value is None:
        return f"{_shown(value)}, {_kind(value)}"
    return _shown(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


class _Reported(PreregError):
    """A part (a gate, a trap, a cell) whose problems are already recorded one by one: nothing more to record."""


def _op_hint(op: Any) -> str:
    """' (did you mean '<='?)' for an operator written backwards or as a symbol ("=<", "≤"); '' otherwise."""
    if not isinstance(op, str):
        return ""
    meant = op.strip()[::-1] if op.strip()[::-1] in GATE_OPS else {"≤": "<=", "≥": ">=", "=": "<="}.get(op.strip())
    return f" (did you mean '{meant}'?)" if meant else ""


def _key_hint(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Reader:
    """Validates one prereg's JSON, recording every problem as a PreregError with the file, field and fix."""

    def __init__(self, display: str, data: dict) -> None:
        self.display = display
        self.data = data
        self.errors: list[PreregError] = []

    def attempt(self, check: Any, *args: Any) -> Any:
        """`check(*args)`, or None after recording its PreregError: one bad field must not hide the others."""
        try:
            return check(*args)
        except _Reported:
            return None
        except PreregError as error:
            if str(error) not in map(str, self.errors):
                self.errors.append(error)
            return None

    def settle(self, where: str, errors_before: int) -> None:
        """Raise _Reported when problems were recorded since `errors_before` (the part at `where` is unusable)."""
        if len(self.errors) > errors_before:
            raise _Reported(where)

    def name(self, where: str, value: Any) -> str:
        """A rung name: lowercase letters, digits and underscores only (it becomes a folder name)."""
        value = self.text(where, value)
        if not RUNG_NAME.fullmatch(value):
            raise self.error(where, f"must be a rung name of lowercase letters, digits and _ only (got {_got(value)})",
                             "Use the rung's folder name under prereg/")
        return value

    def error(self, where: str, problem: str, fix: str = "Fix the value") -> PreregError:
        return PreregError(
            f"{self.display}: field '{where}' {problem}. {fix} and re-seal with: ladder seal {self.display}"
        )

    def required(self, name: str) -> Any:
        if name not in self.data:
            raise self.error(name, "is missing (required)", "Add it (see README 'tau.json reference')")
        return self.data[name]

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"must be a non-empty string (got {_got(value)})")
        return value

    def integer(self, where: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"must be a whole number >= {minimum} (got {_got(value)})")
        if value < minimum:
            raise self.error(where, f"must be a whole number >= {minimum} (got {value})")
        return value

    def number(self, where: str, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(where, f"must be {what} (got {_got(value)})")
        return float(value)

    def obj(self, where: str, value: Any, non_empty: bool = False) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"must be an object {{...}} (got {_got(value)})")
        if non_empty and not value:
            raise self.error(where, "must not be empty")
        return value

    def strings(self, where: str, value: Any, non_empty: bool) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(where, f"must be a list of strings (got {_got(value)})")
        if non_empty and not value:
            raise self.error(where, "must be a non-empty list of strings")
        items = tuple(self.text(f"{where}[{i}]", item) for i, item in enumerate(value))
        for i, item in enumerate(items):
            if item in items[:i]:
                raise self.error(f"{where}[{i}]", f"repeats {item!r}", "Remove the duplicate")
        return items

    def finite_everywhere(self, where: str, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(where, f"must be finite (got {_shown(value)}; strict JSON has no NaN or Infinity)")
        if isinstance(value, dict):
            for key, item in value.items():
                self.finite_everywhere(f"{where}.{key}", item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.finite_everywhere(f"{where}[{i}]", item)

    # ---------------------------------------------------------------------------------------------- fields ----

    def unknown(self, key: str) -> None:
        hint = _key_hint(key, ALLOWED)
        if not hint and difflib.get_close_matches(key, ("threshold", "thresholds"), n=1):
            hint = " (thresholds belong to each gate: \"gates\": {\"name\": {\"op\": \"<=\", \"threshold\": ...}})"
        raise self.error(
            key, f"is not a prereg field{hint}; allowed fields: {', '.join(ALLOWED)}", "Remove or rename it"
        )

    def unknown_key(self, where: str, key: str, kind: str, allowed: tuple[str, ...]) -> None:
        hint = _key_hint(key, allowed)
        raise self.error(f"{where}.{key}", f"is not a {kind} field{hint}; allowed: {', '.join(allowed)}",
                         "Remove or rename it")

    def top_level(self) -> None:
        for key in self.data:
            if key not in ALLOWED:
                self.attempt(self.unknown, key)
        for name in REQUIRED:
            self.attempt(self.required, name)

    def rung(self, folder: str) -> tuple[str, str]:
        """(the claim's name, the rung module that tests it): the claim is named by its folder; the optional "rung"
        field names the rung module (`rung("<name>")`) when it is not the folder's own, so several preregs (a
        seed rung and its parameter variants) can bind one module."""
        if "rung" not in self.data and not folder:
            raise PreregError(
                f"{self.display}: cannot tell the rung: keep the file at prereg/<rung>/tau.json or add a 'rung' field"
            )
        if not RUNG_NAME.fullmatch(folder or ""):
            if "rung" in self.data:
                self.name("rung", self.data["rung"])
            raise PreregError(
                f"{self.display}: the folder name {folder!r} is not a rung name (lowercase letters, digits and _ "
                f"only). Move the file to prereg/<rung>/tau.json with such a name"
            )
        if "rung" not in self.data:
            return folder, folder
        return folder, self.name("rung", self.data["rung"])

    def margin(self) -> float:
        value = self.required("tau_margin")
        tau_margin = self.number("tau_margin", value, "a number with 0 <= margin < 1")
        if not 0 <= tau_margin < 1:
            raise self.error("tau_margin", f"must be a number with 0 <= margin < 1 (got {_shown(value)})")
        return tau_margin

    def requires(self, rung: str | None) -> tuple[str, ...]:
        value = self.data.get("requires", [])
        requires = self.strings("requires", value, non_empty=False)
        for i, required in enumerate(requires):
            self.name(f"requires[{i}]", required)
        if rung is not None and rung in requires:
            raise self.error("requires", f"lists the rung itself ({rung!r})", "Remove it")
        return requires

    def params(self) -> dict:
        params = self.obj("params", self.data.get("params", {}))
        self.finite_everywhere("params", params)
        return params

    def seal(self) -> str | None:
        seal = self.data.get("seal")
        if seal is not None and (not isinstance(seal, str) or not re.fullmatch(r"[0-9a-f]{64}", seal)):
            raise PreregError(
                f"{self.display}: field 'seal' must be 64 lowercase hex digits (got {_shown(seal)}). Re-seal with: "
                f"ladder seal {self.display}"
            )
        return seal

    def field_notes(self) -> None:
        """`field_notes`: {prereg field: what it means}, explanations kept beside the values (`ladder new` writes
        one for every field); each key a prereg field, each note a non-empty string."""
        notes = self.obj("field_notes", self.data.get("field_notes", {}))
        for key, note in notes.items():
            if key not in ALLOWED:
                self.attempt(self.unknown_key, "field_notes", key, "prereg", ALLOWED)
            else:
                self.attempt(self.text, f"field_notes.{key}", note)

    def optional_text(self, name: str) -> str | None:
        return None if self.data.get(name) is None else self.text(name, self.data[name])

    def required_text(self, name: str) -> str:
        return self.text(name, self.required(name))

    def seeds(self) -> tuple[list[int] | None, int]:
        value = self.required("random_seeds")
        if isinstance(value, list):
            if not value:
                raise self.error("random_seeds", "must be a whole number > 0 or a non-empty list of seeds (got [])")
            seeds = [self.integer(f"random_seeds[{i}]", s, 0) for i, s in enumerate(value)]
            for i, seed in enumerate(seeds):
                if seed in seeds[:i]:
                    raise self.error(f"random_seeds[{i}]", f"repeats seed {seed}: each random baseline needs its own",
                                     "Remove the duplicate")
            return seeds, len(seeds)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                "random_seeds", f"must be a whole number > 0 or a non-empty list of seeds (got {_got(value)})"
            )
        return None, self.integer("random_seeds", value, 1)

    def rule(self) -> Expr:
        text = self.required("decision_threshold")
        if not isinstance(text, str):
            raise self.error(
                "decision_threshold", f"must be a rule as a string, e.g. \"value < tau * (1 - margin)\" "
                f"(got {_got(text)})",
            )
        try:
            rule = parse_expr(text, allowed_names=set(RULE_NAMES))
        except ExprError as error:
            raise self.error("decision_threshold", f"is not a valid rule: {error}") from None
        if not rule.is_comparison:
            raise self.error("decision_threshold", f"must be a comparison such as \"value < tau * (1 - margin)\" "
                                                   f"(got {text!r})")
        if not rule.names & {"value", "error"} or "tau" not in rule.names:
            raise self.error(
                "decision_threshold",
                f"must compare the candidate (value or error) with the τ floor (tau) (got {text!r})",
            )
        return rule

    def cells(self) -> tuple[tuple[Cell, ...], list[dict]]:
        value = self.required("cells")
        if not isinstance(value, list) or not value:
            raise self.error("cells", f"must be a non-empty list of objects (got {_got(value)})")
        errors_before = len(self.errors)
        cells: list[Cell | None] = [self.attempt(self.cell, i, raw) for i, raw in enumerate(value)]
        for i, cell in enumerate(cells):
            for j, other in enumerate(cells[:i]):
                if cell is not None and other is not None and other.id == cell.id:
                    self.attempt(self.same_id, i, j, cell.id)
                    break
        self.settle("cells", errors_before)
        return tuple(cells), value

    def cell(self, i: int, raw: Any) -> Cell:
        where = f"cells[{i}]"
        raw = self.obj(where, raw)
        errors_before = len(self.errors)
        params = {key: self.attempt(self.cell_value, f"{where}.{key}", item)
                  for key, item in raw.items() if key != "id"}
        cell_id = self.attempt(self.text, f"{where}.id", raw["id"]) if "id" in raw else None
        self.settle(where, errors_before)
        if cell_id is None:
            if not params:
                raise self.error(where, "is empty", "Give the cell its parameters (or an \"id\")")
            return Cell(make_cell_id(params), params)
        return Cell(current_cell_id(cell_id), params)

    def cell_value(self, where: str, item: Any) -> Any:
        if isinstance(item, (dict, list)) or item is None:
            raise self.error(where, f"must be a scalar: string, number or boolean (got {_got(item)})")
        if isinstance(item, float) and not math.isfinite(item):
            raise self.error(where, f"must be finite (got {_shown(item)})")
        return item

    def same_id(self, i: int, j: int, cell_id: str) -> None:
        raise self.error(f"cells[{i}]", f"has the same id {cell_id!r} as cells[{j}]",
                         "Make the cells distinct or give each an explicit \"id\"")

    def hardest(self, cells: tuple[Cell, ...], raw_cells: list[dict]) -> Cell:
        value = self.required("hardest_cell")
        ids = ", ".join(c.id for c in cells)
        if isinstance(value, str):
            for cell in cells:
                if cell.id == current_cell_id(value):
                    return cell
            raise self.error("hardest_cell", f"names {value!r}, which is not among the cells ({ids})",
                             "Name one of the cells")
        if isinstance(value, dict):
            for cell, raw in zip(cells, raw_cells):
                if value == raw or value == cell.params:
                    return cell
            raise self.error("hardest_cell", f"is {_shown(value)}, which is not among the cells ({ids})",
                             "Name one of the cells")
        raise self.error("hardest_cell", f"must be a cell id string or a cell object (got {_got(value)})")

    def gate(self, where: str, name: str, spec: Any) -> GateSpec:
        if not name.strip():
            raise self.error(where, "has a gate with an empty name", "Name the gate")
        where = f"{where}.{name}"
        if not isinstance(spec, dict):
            what = "a finite number >= 0 (the threshold) or an object {\"op\": ..., \"threshold\": ...}"
            threshold = self.number(where, spec, what)
            if threshold < 0:
                raise self.error(where, f"must be {what} (got {_shown(spec)})")
            return GateSpec(name, "<=", threshold, False, None)
        errors_before = len(self.errors)
        for key in spec:
            if key not in GATE_KEYS:
                self.attempt(self.unknown_key, where, key, "gate", GATE_KEYS)
        op = self.attempt(self.op, f"{where}.op", spec.get("op", "<="))
        threshold = self.attempt(self.threshold, f"{where}.threshold", spec)
        vs_tau = spec.get("vs_tau", False)
        if not isinstance(vs_tau, bool):
            self.attempt(self.error_of, f"{where}.vs_tau", f"must be true or false (got {_got(vs_tau)})")
        note = spec.get("note")
        if note is not None:
            self.attempt(self.text, f"{where}.note", note)
        self.settle(where, errors_before)
        return GateSpec(name, op, threshold, vs_tau, note)

    def error_of(self, where: str, problem: str, fix: str = "Fix the value") -> None:
        raise self.error(where, problem, fix)

    def op(self, where: str, op: Any) -> str:
        if op not in GATE_OPS:
            raise self.error(where, f"must be one of {', '.join(GATE_OPS)} (got {_got(op)}){_op_hint(op)}")
        return op

    def threshold(self, where: str, spec: dict) -> float:
        if "threshold" not in spec:
            raise self.error(where, "is missing (required)", "Add it")
        threshold = self.number(where, spec["threshold"], "a finite number >= 0")
        if threshold < 0:
            raise self.error(where, f"must be a finite number >= 0 (got {_shown(spec['threshold'])})")
        return threshold

    def gates(self, field_name: str, value: Any, non_empty: bool) -> dict[str, GateSpec]:
        value = self.obj(field_name, value, non_empty=non_empty)
        errors_before = len(self.errors)
        gates = {name: self.attempt(self.gate, field_name, name, spec) for name, spec in value.items()}
        self.settle(field_name, errors_before)
        return gates

    def traps(self) -> dict[str, TrapSpec]:
        value = self.obj("traps", self.required("traps"))
        errors_before = len(self.errors)
        traps = {name: self.attempt(self.trap, name, spec) for name, spec in value.items()}
        self.settle("traps", errors_before)
        return traps

    def trap(self, name: str, spec: Any) -> TrapSpec:
        where = f"traps.{name}"
        if not name.strip():
            raise self.error("traps", "has a trap with an empty name", "Name the trap")
        if not isinstance(spec, dict):
            return TrapSpec(name, self.expectation(where, spec), None)
        errors_before = len(self.errors)
        for key in spec:
            if key not in TRAP_KEYS:
                self.attempt(self.unknown_key, where, key, "trap", TRAP_KEYS)
        if "expect" in spec:
            expect = self.attempt(self.expectation, f"{where}.expect", spec["expect"])
        else:
            self.attempt(self.error_of, f"{where}.expect", "is missing (required)", "Add the declared outcome")
        note = spec.get("note")
        if note is not None:
            self.attempt(self.text, f"{where}.note", note)
        self.settle(where, errors_before)
        return TrapSpec(name, expect, note)

    def expectation(self, where: str, spec: Any) -> Expr:
        """A trap's declared outcome: a comparison over `observed`, e.g. "observed == 0"."""
        if not isinstance(spec, str):
            raise self.error(where, f"must be an expectation such as \"observed == 0\" (got {_got(spec)})")
        try:
            expect = parse_expr(spec)
        except ExprError as error:
            raise self.error(where, f"is not a valid expectation: {error}") from None
        if not expect.is_comparison or TRAP_OBSERVED not in expect.names:
            raise self.error(where, f"must be a comparison over '{TRAP_OBSERVED}' such as \"observed == 0\" or "
                                    f"\"observed > method\" (got {spec!r})")
        return expect
