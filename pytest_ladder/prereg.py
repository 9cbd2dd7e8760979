"""The pre-registration `prereg/<rung>/tau.json` (protocol §2): its schema, read into the frozen dataclasses of
prereg_types.py.

Every problem is a `PreregError` naming the file, the field and the fix (the plugin shows it as a usage error), e.g.
`prereg/g4/tau.json: field 'tau_margin' must be a number with 0 <= margin < 1 (got 1.5). Fix the value and re-seal
with: ladder seal prereg/g4/tau.json`; fields are checked independently, so one error lists every problem found.
The file is read as strict JSON (seal.read_json_object: no duplicate keys, finite numbers only, a BOM allowed).
Unknown top-level fields are errors too: a typo must not pass silently. Rung and `requires` names are
`[a-z0-9_]+`; `check_requires` checks a prereg folder's ladder graph (absent rungs, cycles). Rules
(decision_threshold, trap expectations) are parsed by the safe expression language in expr.py.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from pathlib import Path
from typing import Any

from pytest_ladder.expr import Expr, ExprError, parse_expr
from pytest_ladder.files import display_path
from pytest_ladder.prereg_types import (  # noqa: F401  (re-exported: the prereg's public types live here too)
    ALLOWED, GATE_KEYS, GATE_OPS, OPTIONAL, REQUIRED, RULE_NAMES, TRAP_KEYS, TRAP_OBSERVED, Cell, GateSpec, Prereg,
    PreregError, TrapSpec, format_number,
)
from pytest_ladder.seal import PREREG_NAME as PREREG_FILE
from pytest_ladder.seal import SealError, read_json_object

RUNG_NAME = re.compile(r"[a-z0-9_]+")  # rung names become folder names: nothing that can leave a folder


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


class _Reader:
    """Validates one prereg's JSON, raising PreregError with the file, field and fix."""

    def __init__(self, display: str, data: dict) -> None:
        self.display = display
        self.data = data
        self.errors: list[PreregError] = []

    def attempt(self, check: Any, *args: Any) -> Any:
        """`check(*args)`, or None after recording its PreregError: one bad field must not hide the others."""
        try:
            return check(*args)
        except PreregError as error:
            if str(error) not in map(str, self.errors):
                self.errors.append(error)
            return None

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
        close = difflib.get_close_matches(key, ALLOWED, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise self.error(
            key, f"is not a prereg field{hint}; allowed fields: {', '.join(ALLOWED)}", "Remove or rename it"
        )

    def top_level(self) -> None:
        for key in self.data:
            if key not in ALLOWED:
                self.attempt(self.unknown, key)
        for name in REQUIRED:
            self.attempt(self.required, name)

    def rung(self, folder: str) -> str:
        if "rung" not in self.data and not folder:
            raise PreregError(
                f"{self.display}: cannot tell the rung: keep the file at prereg/<rung>/tau.json or add a 'rung' field"
            )
        if "rung" not in self.data:
            if not RUNG_NAME.fullmatch(folder):
                raise PreregError(
                    f"{self.display}: the folder name {folder!r} is not a rung name (lowercase letters, digits and _ "
                    f"only). Move the file to prereg/<rung>/tau.json with such a name"
                )
            return folder
        rung = self.name("rung", self.data["rung"])
        if rung != folder:
            raise self.error("rung", f"is {rung!r} but the file lives in folder {folder!r}",
                             "Make them agree (prereg/<rung>/tau.json)")
        return rung

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
        cells: list[Cell] = []
        for i, raw in enumerate(value):
            where = f"cells[{i}]"
            raw = self.obj(where, raw)
            params = {}
            for key, item in raw.items():
                if key == "id":
                    continue
                if isinstance(item, (dict, list)) or item is None:
                    raise self.error(f"{where}.{key}", f"must be a scalar: string, number or boolean "
                                                       f"(got {_got(item)})")
                if isinstance(item, float) and not math.isfinite(item):
                    raise self.error(f"{where}.{key}", f"must be finite (got {_shown(item)})")
                params[key] = item
            if "id" in raw:
                cell_id = self.text(f"{where}.id", raw["id"])
            elif params:
                cell_id = "-".join(f"{k}={v}" for k, v in params.items())
            else:
                raise self.error(where, "is empty", "Give the cell its parameters (or an \"id\")")
            for j, other in enumerate(cells):
                if other.id == cell_id:
                    raise self.error(where, f"has the same id {cell_id!r} as cells[{j}]",
                                     "Make the cells distinct or give each an explicit \"id\"")
            cells.append(Cell(cell_id, params))
        return tuple(cells), value

    def hardest(self, cells: tuple[Cell, ...], raw_cells: list[dict]) -> Cell:
        value = self.required("hardest_cell")
        ids = ", ".join(c.id for c in cells)
        if isinstance(value, str):
            for cell in cells:
                if cell.id == value:
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
        for key in spec:
            if key not in GATE_KEYS:
                raise self.error(f"{where}.{key}", f"is not a gate field; allowed: {', '.join(GATE_KEYS)}",
                                 "Remove or rename it")
        op = spec.get("op", "<=")
        if op not in GATE_OPS:
            raise self.error(f"{where}.op", f"must be one of {', '.join(GATE_OPS)} (got {_got(op)})")
        if "threshold" not in spec:
            raise self.error(f"{where}.threshold", "is missing (required)", "Add it")
        threshold = self.number(f"{where}.threshold", spec["threshold"], "a finite number >= 0")
        if threshold < 0:
            raise self.error(f"{where}.threshold", f"must be a finite number >= 0 (got {_shown(spec['threshold'])})")
        vs_tau = spec.get("vs_tau", False)
        if not isinstance(vs_tau, bool):
            raise self.error(f"{where}.vs_tau", f"must be true or false (got {_got(vs_tau)})")
        note = spec.get("note")
        if note is not None:
            self.text(f"{where}.note", note)
        return GateSpec(name, op, threshold, vs_tau, note)

    def gates(self, field_name: str, value: Any, non_empty: bool) -> dict[str, GateSpec]:
        value = self.obj(field_name, value, non_empty=non_empty)
        return {name: self.gate(field_name, name, spec) for name, spec in value.items()}

    def traps(self) -> dict[str, TrapSpec]:
        value = self.obj("traps", self.required("traps"))
        traps = {}
        for name, spec in value.items():
            where = f"traps.{name}"
            if not name.strip():
                raise self.error("traps", "has a trap with an empty name", "Name the trap")
            note = None
            if isinstance(spec, dict):
                for key in spec:
                    if key not in TRAP_KEYS:
                        raise self.error(f"{where}.{key}", f"is not a trap field; allowed: {', '.join(TRAP_KEYS)}",
                                         "Remove or rename it")
                if "expect" not in spec:
                    raise self.error(f"{where}.expect", "is missing (required)", "Add the declared outcome")
                note = spec.get("note")
                if note is not None:
                    self.text(f"{where}.note", note)
                where, spec = f"{where}.expect", spec["expect"]
            if not isinstance(spec, str):
                raise self.error(where, f"must be an expectation such as \"observed == 0\" "
                                        f"(got {_got(spec)})")
            try:
                expect = parse_expr(spec)
            except ExprError as error:
                raise self.error(where, f"is not a valid expectation: {error}") from None
            if not expect.is_comparison or TRAP_OBSERVED not in expect.names:
                raise self.error(where, f"must be a comparison over '{TRAP_OBSERVED}' such as \"observed == 0\" or "
                                        f"\"observed > method\" (got {spec!r})")
            traps[name] = TrapSpec(name, expect, note)
        return traps


def load_prereg(path: Path | str, *, root: Path | None = None) -> Prereg:
    """Load and validate `path` (cached on path, mtime and size); `root` makes the displayed path relative."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise PreregError(
            f"{display_path(path, root)}: no such prereg file. Write it (see README 'tau.json reference') and seal "
            f"it with: ladder seal {display_path(path, root)}"
        ) from None
    return _load_cached(str(path), str(path.resolve()), stat.st_mtime_ns, stat.st_size,
                        None if root is None else str(root))


@functools.lru_cache(maxsize=256)
def _load_cached(given: str, resolved: str, mtime_ns: int, size: int, root: str | None) -> Prereg:
    del resolved, mtime_ns, size  # cache key only
    path = Path(given)
    shown = display_path(path, None if root is None else Path(root))
    return parse_prereg(_read(path, shown), path=path, display=shown)


def _read(path: Path, shown: str) -> dict:
    """The strict JSON object in `path` (seal.read_json_object: no duplicate keys, only finite numbers)."""
    try:
        return read_json_object(path, display=shown)
    except SealError as error:
        problems = str(error).splitlines()
        raise _every(shown, problems) from None


def parse_prereg(data: dict, *, path: Path, display: str) -> Prereg:
    """Validate the JSON object `data` read from `path` into a Prereg (PreregError naming every bad field otherwise)."""
    prereg, errors = _parse(data, path=path, display=display)
    if prereg is None:
        raise _every(display, [str(error) for error in errors])
    return prereg


def _every(where: str, problems: list[str]) -> PreregError:
    """The one problem, or one error listing every problem (each naming file, field and fix) a line each."""
    if len(problems) == 1:
        return PreregError(problems[0])
    return PreregError(f"{where}: {len(problems)} problems:\n" + "\n".join(f"  {problem}" for problem in problems))


def _parse(data: dict, *, path: Path, display: str) -> tuple[Prereg | None, list[PreregError]]:
    """(the Prereg, []) or (None, every problem found): each field is checked independently of the others."""
    r = _Reader(display, data)
    r.top_level()
    rung = r.attempt(r.rung, path.parent.name)
    seeds = r.attempt(r.seeds)
    tau_margin = r.attempt(r.margin)
    cells = r.attempt(r.cells)
    requires = r.attempt(r.requires, rung)
    params = r.attempt(r.params)
    seal = r.attempt(r.seal)
    fields = {
        "claim": r.attempt(r.required_text, "claim"),
        "metric": r.attempt(r.required_text, "metric"),
        "data_points": r.attempt(lambda: r.integer("data_points", r.required("data_points"), 1)),
        "decision_threshold": r.attempt(r.rule),
        "model": r.attempt(r.required_text, "model"),
        "tasks": r.attempt(lambda: r.strings("tasks", r.required("tasks"), non_empty=True)),
        "hardest_cell": None if cells is None else r.attempt(r.hardest, *cells),
        "gates": r.attempt(lambda: r.gates("gates", r.required("gates"), non_empty=True)),
        "traps": r.attempt(r.traps),
        "prefilters": r.attempt(r.gates, "prefilters", data.get("prefilters", {}), False),
        "theorems": r.attempt(r.strings, "theorems", data.get("theorems", []), False),
        "label": r.attempt(r.optional_text, "label"),
        "notes": r.attempt(r.optional_text, "notes"),
    }
    if r.errors:
        return None, r.errors
    return Prereg(
        path=path,
        display_path=display,
        rung=rung,
        seeds=seeds[0],
        n_seeds=seeds[1],
        tau_margin=tau_margin,
        cells=cells[0],
        requires=requires,
        params=params,
        seal=seal,
        raw=data,
        **fields,
    ), []


def prereg_problems(path: Path | str, *, root: Path | None = None) -> list[str]:
    """Every problem `load_prereg` would find in `path`, one message each (file, field, fix); [] when it is valid."""
    path = Path(path)
    shown = display_path(path, root)
    try:
        data = read_json_object(path, display=shown)
    except SealError as error:
        return str(error).splitlines()
    return [str(error) for error in _parse(data, path=path, display=shown)[1]]


def requires_problems(preregs: list[Prereg], folder: str) -> list[str]:
    """The ladder rule's graph over the preregs of one folder: each `requires` naming a rung without a prereg
    there, and each cycle (named rung by rung, e.g. "g4 -> g0 -> g4"); [] when every requirement is a lower rung."""
    by_rung = {prereg.rung: prereg for prereg in preregs}
    problems = []
    for prereg in preregs:
        for i, required in enumerate(prereg.requires):
            if required not in by_rung:
                problems.append(
                    f"{prereg.display_path}: field 'requires[{i}]' names rung {required!r}, which has no prereg in "
                    f"{folder} (no {folder}/{required}/tau.json). Fix the name or write and seal that rung's prereg, "
                    f"then re-seal with: ladder seal {prereg.display_path}"
                )
    for cycle in _cycles({rung: [r for r in p.requires if r in by_rung] for rung, p in sorted(by_rung.items())}):
        files = ", ".join(by_rung[rung].display_path for rung in cycle[:-1])
        problems.append(
            f"{folder}: the requires form a cycle: {' -> '.join(cycle)} ({files}). A rung requires lower rungs only: "
            "remove one of these requires and re-seal that file"
        )
    return problems


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle found by depth-first search, once, as a closed path starting at its smallest rung."""
    found: list[list[str]] = []
    done: set[str] = set()
    for start in graph:
        path: list[str] = []
        stack = [(start, iter(graph[start]))]
        path.append(start)
        on_path = {start}
        while stack:
            node, edges = stack[-1]
            nxt = next(edges, None)
            if nxt is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif nxt in on_path:
                cycle = path[path.index(nxt):]
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                if cycle + [cycle[0]] not in found:
                    found.append(cycle + [cycle[0]])
            elif nxt not in done:
                stack.append((nxt, iter(graph[nxt])))
                path.append(nxt)
                on_path.add(nxt)
    return found


def check_requires(prereg_dir: Path | str, *, root: Path | None = None) -> dict[str, Prereg]:
    """Load every `<rung>/tau.json` under `prereg_dir` and check the ladder rule's graph (see requires_problems).

    Returns the preregs by rung; PreregError naming each missing rung and cycle (or the first unreadable prereg).
    """
    folder = Path(prereg_dir)
    preregs = [load_prereg(path, root=root) for path in sorted(folder.glob(f"*/{PREREG_FILE}"))]
    problems = requires_problems(preregs, display_path(folder, root))
    if problems:
        raise _every(display_path(folder, root), problems)
    return {prereg.rung: prereg for prereg in preregs}


def validate_against_rung(prereg: Prereg, gates: set[str], traps: set[str], prefilters: set[str]) -> None:
    """The prereg and the rung module must declare the same gates, traps and prefilters (PreregError otherwise)."""
    shown = prereg.display_path
    for field_name, kind, in_prereg, declared in (
        ("gates", "gate", prereg.gates, gates),
        ("prefilters", "prefilter", prereg.prefilters, prefilters),
        ("traps", "trap", prereg.traps, traps),
    ):
        listed = ", ".join(sorted(declared)) or "(none)"
        for name in in_prereg:
            if name not in declared:
                raise PreregError(
                    f"{shown}: unknown {kind} '{name}' in field '{field_name}': the rung module declares: {listed}. "
                    f"Fix the name (or declare it in the rung module with ladder.{kind}({name!r})) and re-seal "
                    f"with: ladder seal {shown}"
                )
        for name in sorted(declared):
            if name not in in_prereg:
                raise PreregError(
                    f"{shown}: field '{field_name}' lacks the {kind} '{name}' that the rung module declares. Add "
                    f"its {'expectation' if kind == 'trap' else 'threshold'} and re-seal with: ladder seal {shown}"
                )
