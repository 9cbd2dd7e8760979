"""The theorem tracker (protocol §10): the status grid of the Lean kill theorems, regenerated from the sources.

It reads every `.lean` file under the Lean folder (default `lean/`) and, for each `theorem`/`lemma`, reports:
its rung (a `rung: g0` line in its doc comment), whether its proof uses `sorry` (directly or through any declaration
it uses), which named `axiom`s it depends on (transitively, through the theorems and definitions of the sources —
the measured constants live there as axioms), and whether a successful `lake build` of exactly these sources was
recorded on this machine.

A theorem is **proved** only when it has no `sorry`, no named axiom, and `ladder theorems --check` ran `lake build`
successfully on sources with the same SHA-256 as now (recorded in `<lean>/.lake-check.json`, git-ignored), with its
file among the modules that build compiles. Otherwise its status is `sorry`, `axiom-dependent` (a proof conditional
on measured constants, or on `Lean.ofReduceBool` through `native_decide`) or `not checked`; `checked` says whether
a matching successful build covers its file. Where no Lean toolchain is installed nothing is ever checked, so no
report can claim more than the sources hold.

Dependencies are found by name: every identifier of a declaration (statement and proof) is matched against the
declarations of the sources (full name or a dotted suffix of it). Name clashes can only add dependencies, never hide
one, so the grid errs towards `sorry`/`axiom-dependent`, never towards `proved`. Imports only the standard library.

This module builds the grid and runs the CLI; reading the sources lives in `lean_source` (Declaration,
DependencyGraph) and the `lake build` record in `lean_build`. Their public names are re-exported from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pytest_ladder.lean_build import (
    DEFAULT_TIMEOUT_S,
    RECORD_NAME,
    build_matches,
    build_note,
    built_files,
    flag_sorry_warnings,
    read_build_record,
    record_path,
    run_lake_build,
    sources_digest,
)
from pytest_ladder.lean_source import (
    SKIP_DIRS,
    Declaration,
    DependencyGraph,
    blank_comments_and_strings,
    lean_files,
    parse_lean_source,
    parse_sources,
)

__all__ = [  # the tracker's public API, including what lean_source and lean_build provide
    "DEFAULT_TIMEOUT_S", "RECORD_NAME", "ROW_KEYS", "SKIP_DIRS", "STATUSES", "THEOREM_KINDS",
    "Declaration", "DependencyGraph", "blank_comments_and_strings", "build_matches", "build_note", "built_files",
    "declared_axioms", "flag_sorry_warnings", "format_grid", "lean_files", "main", "parse_lean_source",
    "parse_sources", "prereg_theorems", "read_build_record", "record_path", "run_lake_build", "sources_digest",
    "theorem_rows", "theorems_for_rung",
]

ROW_KEYS = ("theorem", "rung", "file", "line", "status", "sorry", "axioms", "checked")
STATUSES = ("proved", "axiom-dependent", "sorry", "not checked", "missing")
THEOREM_KINDS = ("theorem", "lemma")


def _status(sorry: bool, axioms: list[str], checked: bool) -> str:
    if sorry:
        return "sorry"
    if axioms:
        return "axiom-dependent"
    return "proved" if checked else "not checked"


def theorem_rows(lean_dir: str | os.PathLike = "lean") -> list[dict]:
    """One row per theorem/lemma of the sources: {theorem, rung, file, line, status, sorry, axioms, checked}."""
    return [row for _, row in _theorem_table(Path(lean_dir))]


def _theorem_table(lean_dir: Path) -> list[tuple[Declaration, dict]]:
    if not lean_dir.is_dir():
        raise FileNotFoundError(
            f"no Lean folder at {str(lean_dir)!r}: pass --lean-dir DIR, the folder holding lakefile.lean"
        )
    decls = parse_sources(lean_dir)
    graph = DependencyGraph(decls)
    record = read_build_record(lean_dir)
    build_ok = build_matches(record, sources_digest(lean_dir))
    compiled = built_files(lean_dir) if build_ok else set()
    flagged = flag_sorry_warnings(decls, record.get("sorry_warnings", []) if build_ok else [])
    table = []
    for index, decl in enumerate(decls):
        if decl.kind not in THEOREM_KINDS:
            continue
        sorry = graph.uses_sorry(index, flagged)
        axioms = graph.axioms(index)
        checked = build_ok and decl.file in compiled
        row = {
            "theorem": decl.name,
            "rung": decl.rung,
            "file": decl.file,
            "line": decl.line,
            "status": _status(sorry, axioms, checked),
            "sorry": sorry,
            "axioms": axioms,
            "checked": checked,
        }
        table.append((decl, row))
    return table


def declared_axioms(lean_dir: str | os.PathLike = "lean") -> list[str]:
    """Names of the `axiom`s the sources declare (the measured constants), in source order."""
    return [d.name for d in parse_sources(lean_dir) if d.kind == "axiom"]




def prereg_theorems(rung: str, prereg_dir: str | os.PathLike = "prereg") -> list[str]:
    """The theorem names `prereg/<rung>/tau.json` links to its rung (its "theorems" field; [] without a prereg).

    The prereg is read by `pytest_ladder.prereg.load_prereg`, so a bad file raises its `PreregError` naming the
    file, the field and the fix.
    """
    path = Path(prereg_dir) / rung / "tau.json"
    if not path.is_file():
        return []
    from pytest_ladder.prereg import load_prereg

    return list(load_prereg(path).theorems)


def theorems_for_rung(
    rung: str, lean_dir: str | os.PathLike = "lean", prereg_dir: str | os.PathLike = "prereg"
) -> list[dict]:
    """Rows of the theorems behind `rung`: tagged `rung: <rung>` in Lean, or named in its prereg's "theorems".

    A prereg name matches a theorem's declared or fully qualified name (`LadderKills.x`). A name that no Lean source
    declares gets a row with status "missing" (file and line None), so a broken link shows instead of vanishing.
    """
    lean_dir = Path(lean_dir)
    table = _theorem_table(lean_dir) if lean_dir.is_dir() else []
    linked = prereg_theorems(rung, prereg_dir)
    found: set[str] = set()
    chosen = []
    for decl, row in table:
        named = {decl.name, decl.full_name} & set(linked)
        found |= named
        if named or (decl.rung or "").lower() == rung.lower():
            chosen.append(row)
    for name in linked:
        if name not in found:
            chosen.append(
                {
                    "theorem": name,
                    "rung": rung,
                    "file": None,
                    "line": None,
                    "status": "missing",
                    "sorry": False,
                    "axioms": [],
                    "checked": False,
                }
            )
    return chosen



def format_grid(rows: list[dict], note: str = "", axioms: Iterable[str] = ()) -> str:
    """The status grid as a text table, with counts, the declared axioms and the build note underneath."""
    from tabulate import tabulate

    table = [
        [
            r["theorem"],
            r["rung"] or "—",
            r["status"],
            "checked" if r["checked"] else "not checked",
            ", ".join(r["axioms"]) or "—",
            f"{r['file']}:{r['line']}" if r["file"] else "—",
        ]
        for r in rows
    ]
    lines = [tabulate(table, headers=["theorem", "rung", "status", "build", "axioms", "where"])]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s] or s != "missing")
    lines.append(f"\n{len(rows)} theorems: {summary}; {sum(r['checked'] for r in rows)} checked by a build")
    axioms = list(axioms)
    if axioms:
        lines.append(f"{len(axioms)} named axioms (measured constants): {', '.join(axioms)}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`ladder theorems [--lean-dir lean] [--json] [--check]`: print the status grid of the Lean kill theorems."""
    parser = argparse.ArgumentParser(prog="ladder theorems", description=main.__doc__)
    parser.add_argument("--lean-dir", default="lean", help="the Lean project folder (holding lakefile.lean)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list (for the scoreboard)")
    parser.add_argument("--check", action="store_true", help="run `lake build` first and record the result")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds allowed for lake build")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    lean_dir = Path(args.lean_dir)
    if not lean_dir.is_dir():
        print(
            f"ladder theorems: no Lean folder at {str(lean_dir)!r}; pass --lean-dir DIR, the folder holding "
            "lakefile.lean",
            file=sys.stderr,
        )
        return 2
    exit_code = 0
    if args.check:
        try:
            record = run_lake_build(lean_dir, args.timeout)
        except FileNotFoundError as exc:
            print(f"ladder theorems --check: {exc}", file=sys.stderr)
        else:
            if not record["ok"]:
                exit_code = 1
                print(
                    f"ladder theorems --check: lake build failed (exit {record['returncode']}); "
                    f"output tail in {record_path(lean_dir)}",
                    file=sys.stderr,
                )
    rows = theorem_rows(lean_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_grid(rows, build_note(lean_dir), declared_axioms(lean_dir)))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
