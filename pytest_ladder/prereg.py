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

import functools
from pathlib import Path

from pytest_ladder.files import display_path
from pytest_ladder.prereg_reader import _Reader
from pytest_ladder.prereg_types import (  # noqa: F401  (re-exported: the prereg's public types live here too)
    ALLOWED, GATE_KEYS, GATE_OPS, OPTIONAL, REQUIRED, RULE_NAMES, RUNG_NAME, TRAP_KEYS, TRAP_OBSERVED, Cell, GateSpec,
    Prereg, PreregError, TrapSpec, format_number,
)
from pytest_ladder.seal import PREREG_NAME as PREREG_FILE
from pytest_ladder.seal import SealError, read_json_object


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
    rung, module = r.attempt(r.rung, path.parent.name) or (None, None)
    seeds = r.attempt(r.seeds)
    tau_margin = r.attempt(r.margin)
    cells = r.attempt(r.cells)
    requires = r.attempt(r.requires, rung)
    params = r.attempt(r.params)
    seal = r.attempt(r.seal)
    r.attempt(r.field_notes)  # explanations only: checked, kept in `raw`
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
        module=module,
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


def check_requires_of(prereg: Prereg, prereg_dir: Path | str, *, root: Path | None = None) -> None:
    """The ladder graph reachable from `prereg` through `requires` in `prereg_dir`: PreregError naming each required
    rung without a prereg there and each cycle (see requires_problems); unrelated preregs are not read."""
    folder = Path(prereg_dir)
    found = {prereg.rung: prereg}
    todo = list(prereg.requires)
    while todo:
        name = todo.pop()
        path = folder / name / PREREG_FILE
        if name in found or not path.is_file():
            continue
        found[name] = load_prereg(path, root=root)
        todo.extend(found[name].requires)
    problems = requires_problems(list(found.values()), display_path(folder, root))
    if problems:
        raise _every(display_path(folder, root), problems)


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
