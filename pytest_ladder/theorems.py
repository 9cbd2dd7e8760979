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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ladder.files import atomic_write

RECORD_NAME = ".lake-check.json"
ROW_KEYS = ("theorem", "rung", "file", "line", "status", "sorry", "axioms", "checked")
STATUSES = ("proved", "axiom-dependent", "sorry", "not checked", "missing")
THEOREM_KINDS = ("theorem", "lemma")
SKIP_DIRS = {".lake", "lake-packages", ".git", "build"}
DEFAULT_TIMEOUT_S = 3600

_MODIFIERS = r"(?:private|protected|noncomputable|partial|unsafe|nonrec|public|meta)"
_PREFIX = r"(?:@\[[^\]]*\]\s*|set_option\s+\S+\s+\S+\s+in\s+|" + _MODIFIERS + r"\s+)*"
_KINDS = r"(theorem|lemma|def|abbrev|instance|axiom|opaque|structure|inductive|class|example)"
_NAME = r"((?:«[^»]*»|[^\s:(){}\[\]⦃⦄«])+)?"
_DECL_RE = re.compile(r"^[ \t]*" + _PREFIX + _KINDS + r"\b[ \t]*" + _NAME, re.MULTILINE)
_SCOPE_RE = re.compile(
    r"^[ \t]*(?:(?P<ns>namespace)[ \t]+(?P<ns_name>\S+)"
    r"|(?:@\[[^\]]*\][ \t]*)?(?:(?:public|private|noncomputable)[ \t]+)*(?P<sec>section)\b"
    r"|(?P<mutual>mutual)\b"
    r"|(?P<end>end)\b)",
    re.MULTILINE,
)
_OTHER_COMMAND_RE = re.compile(
    r"^(?:namespace|section|end|noncomputable[ \t]+section|public[ \t]+section|variable|universe|open|"
    r"attribute|import|omit|include|mutual|export|#\w+|set_option\s+\S+\s+\S+\s*$|initialize|macro|syntax|"
    r"notation|infix|infixl|infixr|prefix|postfix|elab|deriving)\b",
    re.MULTILINE,
)
_IDENT_RE = re.compile(r"(?<![\w'.!?])(?:«[^»]*»|[^\W\d][\w'!?]*)(?:\.(?:«[^»]*»|[^\W\d][\w'!?]*))*")
_SORRY_RE = re.compile(r"(?<![\w'.])(?:sorry|admit|sorryAx)(?![\w'!?])")
# Tactics that trust the compiler instead of the kernel: the proof depends on Lean's `Lean.ofReduceBool` axiom.
_TRUST_RE = re.compile(r"(?<![\w'.])(?:native_decide|Lean\.ofReduceBool)(?![\w'!?])")
_CHAR_RE = re.compile(r"'(?:\\[^']+|[^\\'\n])'")  # a char literal: 'a', '\n', '\x41'
_RUNG_RE = re.compile(r"\brung:\s*([A-Za-z0-9][\w.′'\-]*)")
_IMPORT_RE = re.compile(r"^[ \t]*(?:(?:public|private|meta)[ \t]+)*import[ \t]+(?:all[ \t]+)?([^\n]+)", re.MULTILINE)
# Lean prints `F.lean:3:8: warning: declaration uses 'sorry'`; lake relays it as
# `warning: ./F.lean:3:8: declaration uses 'sorry'`.
_TOP_LEVEL_LINE_RE = re.compile(r"^\S", re.MULTILINE)
_SORRY_WARNING_RE = re.compile(r"(?P<file>[^\s:]+\.lean):(?P<line>\d+):\d+:(?: warning:)? declaration uses 'sorry'")


@dataclass(frozen=True)
class Declaration:
    """One Lean declaration as the tracker sees it: where it is, what it uses, whether it says `sorry`."""

    kind: str
    name: str
    full_name: str
    file: str  # path relative to the Lean folder, with forward slashes
    line: int  # 1-based line of the declaration keyword
    end_line: int  # last line of its body
    rung: str | None
    has_sorry: bool
    identifiers: frozenset[str] = field(repr=False)
    trusts: frozenset[str] = frozenset()  # built-in axioms the proof text invokes (native_decide: Lean.ofReduceBool)


# ---------------------------------------------------------------------------------------------------------------
# Reading Lean source


def blank_comments_and_strings(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Lean source with comments, strings and char literals blanked (newlines kept), and its doc comments.

    Handles `--` line comments, nested `/- ... -/` block comments (`/--` doc and `/-!` module docs included) and
    `"..."` strings with escapes. Returns (code, [(start, end, doc text)]) with offsets into `text`.
    """
    out = list(text)
    docs: list[tuple[int, int, str]] = []
    i, n = 0, len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif c == "/" and text.startswith("/-", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/-", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("-/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if text.startswith("/--", i) and not text.startswith("/--/", i):
                docs.append((i, j, text[i + 3 : max(i + 3, j - 2)]))
            blank(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i, min(j + 1, n))
            i = j + 1
        elif c == "'" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_'!?.")):
            m = _CHAR_RE.match(text, i)
            if m:
                blank(i, m.end())
                i = m.end()
            else:
                i += 1
        else:
            i += 1
    return "".join(out), docs


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_lean_source(text: str, file: str) -> list[Declaration]:
    """The declarations of one Lean file (`file` is the name recorded in each `Declaration`)."""
    code, docs = blank_comments_and_strings(text)
    decl_matches = list(_DECL_RE.finditer(code))
    # Every place where a top-level command starts ends the body of the declaration before it.
    starts = sorted({m.start() for m in decl_matches} | {m.start() for m in _OTHER_COMMAND_RE.finditer(code)})
    scopes = _scope_events(code)
    doc_ends = sorted(docs, key=lambda d: d[1])
    decls: list[Declaration] = []
    for m in decl_matches:
        kind, raw_name = m.group(1), m.group(2)
        if kind == "example" or raw_name is None:
            continue
        start = m.start()
        end = next((s for s in starts if s > start), len(code))
        body = code[start:end]
        keyword_at = m.start(1)
        namespace = _namespace_at(scopes, start)
        name = raw_name.strip()
        if name.startswith("_root_."):
            full_name = name.removeprefix("_root_.")
        else:
            full_name = ".".join([*namespace, name]) if namespace else name
        doc = _doc_before(doc_ends, code, start)
        rung_match = _RUNG_RE.search(doc) if doc else None
        decls.append(
            Declaration(
                kind=kind,
                name=name,
                full_name=full_name,
                file=file,
                line=_line_of(code, keyword_at),
                end_line=_line_of(code, max(start, end - 1)),
                rung=rung_match.group(1) if rung_match else None,
                has_sorry=bool(_SORRY_RE.search(body)),
                identifiers=frozenset(_IDENT_RE.findall(body[m.end(2) - start :])),
                trusts=frozenset({"Lean.ofReduceBool"}) if _TRUST_RE.search(body) else frozenset(),
            )
        )
    return decls


def _scope_events(code: str) -> list[tuple[int, str, list[str]]]:
    events = []
    for m in _SCOPE_RE.finditer(code):
        if m.group("ns"):
            events.append((m.start(), "push", m.group("ns_name").split(".")))
        elif m.group("sec") or m.group("mutual"):
            events.append((m.start(), "push", []))
        else:
            events.append((m.start(), "pop", []))
    return events


def _namespace_at(events: list[tuple[int, str, list[str]]], offset: int) -> list[str]:
    stack: list[list[str]] = []
    for at, op, names in events:
        if at >= offset:
            break
        if op == "push":
            stack.append(names)
        elif stack:
            stack.pop()
    return [part for frame in stack for part in frame]


def _doc_before(docs: list[tuple[int, int, str]], code: str, offset: int) -> str | None:
    """The doc comment that ends right before `offset`, with only blank (or blanked) text in between."""
    for start, end, doc in reversed(docs):
        if end <= offset:
            return doc if not code[end:offset].strip() else None
    return None


def lean_files(lean_dir: Path) -> list[Path]:
    """Every `.lean` file under `lean_dir` except build outputs and fetched packages, sorted."""
    found = []
    for root, dirs, files in os.walk(lean_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(root) / f for f in files if f.endswith(".lean")]
    return sorted(found)


def _is_lakefile(path: Path, lean_dir: Path) -> bool:
    return path.parent == lean_dir and path.name == "lakefile.lean"


def parse_sources(lean_dir: str | os.PathLike) -> list[Declaration]:
    """All declarations of the Lean sources under `lean_dir` (the lakefile excluded)."""
    lean_dir = Path(lean_dir)
    decls: list[Declaration] = []
    for path in lean_files(lean_dir):
        if _is_lakefile(path, lean_dir):
            continue
        rel = path.relative_to(lean_dir).as_posix()
        decls += parse_lean_source(path.read_text(encoding="utf-8"), rel)
    return decls


# ---------------------------------------------------------------------------------------------------------------
# Dependencies


class DependencyGraph:
    """Transitive `sorry` and named-axiom dependencies of declarations, resolved by name within the sources."""

    def __init__(self, decls: Iterable[Declaration]) -> None:
        self.decls = list(decls)
        self._by_key: dict[str, list[int]] = {}
        for index, decl in enumerate(self.decls):
            parts = decl.full_name.split(".")
            for k in range(len(parts)):
                self._by_key.setdefault(".".join(parts[k:]), []).append(index)
        self._direct = [self._resolve(i) for i in range(len(self.decls))]
        self._closure: dict[int, frozenset[int]] = {}

    def _resolve(self, index: int) -> frozenset[int]:
        used: set[int] = set()
        for token in self.decls[index].identifiers:
            parts = token.split(".")
            for k in range(len(parts)):
                used.update(self._by_key.get(".".join(parts[k:]), ()))
        used.discard(index)
        return frozenset(used)

    def reachable(self, index: int) -> frozenset[int]:
        """Every declaration `index` uses, directly or through others (itself excluded)."""
        if index in self._closure:
            return self._closure[index]
        seen: set[int] = set()
        stack = list(self._direct[index])
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            stack.extend(self._direct[j] - seen)
        seen.discard(index)
        self._closure[index] = frozenset(seen)
        return self._closure[index]

    def axioms(self, index: int) -> list[str]:
        """Names of the `axiom`s `index` depends on (and `Lean.ofReduceBool` behind `native_decide`), sorted."""
        used = self.reachable(index) | {index}
        named = {self.decls[j].name for j in used if self.decls[j].kind == "axiom" and j != index}
        return sorted(named.union(*(self.decls[j].trusts for j in used)))

    def uses_sorry(self, index: int, flagged: set[int] = frozenset()) -> bool:
        """True when `index` or anything it depends on says `sorry` (or is in `flagged`, from build warnings)."""
        if self.decls[index].has_sorry or index in flagged:
            return True
        return any(self.decls[j].has_sorry or j in flagged for j in self.reachable(index))


# ---------------------------------------------------------------------------------------------------------------
# What `lake build` compiles, and the record of a build


def sources_digest(lean_dir: str | os.PathLike) -> str:
    """SHA-256 over every Lean source, the lakefile, `lean-toolchain` and `lake-manifest.json` (paths and bytes)."""
    lean_dir = Path(lean_dir)
    paths = set(lean_files(lean_dir))
    for extra in ("lakefile.lean", "lakefile.toml", "lean-toolchain", "lake-manifest.json"):
        if (lean_dir / extra).is_file():
            paths.add(lean_dir / extra)
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(lean_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _lean_libs(lean_dir: Path) -> list[tuple[list[str], str]]:
    """(root modules, source folder) of each default-target `lean_lib` in the lakefile."""
    libs: list[tuple[list[str], str]] = []
    lakefile = lean_dir / "lakefile.lean"
    if lakefile.is_file():
        code, _ = blank_comments_and_strings(lakefile.read_text(encoding="utf-8"))
        raw = lakefile.read_text(encoding="utf-8")
        for m in re.finditer(r"(@\[[^\]]*\bdefault_target\b[^\]]*\]\s*)?lean_lib\s+(«[^»]+»|[\w.]+)", code):
            if not m.group(1):
                continue
            name = m.group(2).strip("«»")
            nxt = _TOP_LEVEL_LINE_RE.search(code, m.end())
            body_code = code[m.end() : nxt.start() if nxt else len(code)]
            body_raw = raw[m.end() : nxt.start() if nxt else len(code)]
            roots_m = re.search(r"roots\s*:=\s*#\[([^\]]*)\]", body_code)
            roots = re.findall(r"`(«[^»]+»|[\w.]+)", roots_m.group(1)) if roots_m else [name]
            src = "."
            if re.search(r"\bsrcDir\b", body_code):
                literal = re.search(r'\bsrcDir\s*:=\s*"([^"]*)"', body_raw)
                if literal is None:  # a computed srcDir: what gets built is unknown, so nothing counts as built
                    continue
                src = literal.group(1)
            libs.append(([r.strip("«»") for r in roots], src))
        return libs
    toml_path = lean_dir / "lakefile.toml"
    if toml_path.is_file():
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: cannot read it, so nothing counts as built (never over-claims)
            return []
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        defaults = set(config.get("defaultTargets", []))
        for lib in config.get("lean_lib", []):
            if lib.get("name") in defaults:
                libs.append((list(lib.get("roots", [lib["name"]])), lib.get("srcDir", ".")))
    return libs


def built_files(lean_dir: str | os.PathLike) -> set[str]:
    """Files (relative to `lean_dir`) a plain `lake build` compiles: the default targets' roots and their imports."""
    lean_dir = Path(lean_dir)
    built: set[str] = set()
    for roots, src in _lean_libs(lean_dir):
        base = (lean_dir / src).resolve()
        queue = list(roots)
        while queue:
            module = queue.pop()
            path = base.joinpath(*module.split(".")).with_suffix(".lean")
            try:
                rel = path.relative_to(lean_dir.resolve()).as_posix()
            except ValueError:
                continue
            if rel in built or not path.is_file():
                continue
            built.add(rel)
            code, _ = blank_comments_and_strings(path.read_text(encoding="utf-8"))
            for m in _IMPORT_RE.finditer(code):
                queue += [tok.strip("«»") for tok in m.group(1).split()]
    return built


def record_path(lean_dir: str | os.PathLike) -> Path:
    return Path(lean_dir) / RECORD_NAME


def read_build_record(lean_dir: str | os.PathLike) -> dict | None:
    """The recorded `lake build` result for `lean_dir`, or None (never built here, or an unreadable record)."""
    path = record_path(lean_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def build_matches(record: dict | None, digest: str) -> bool:
    """True when `record` is a successful build of sources whose digest is `digest`."""
    return bool(record) and record.get("ok") is True and record.get("sources_sha256") == digest


def run_lake_build(lean_dir: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run `lake build` in `lean_dir` and record the result (with the sources' digest) in `<lean_dir>/.lake-check.json`.

    A build counts as successful only if it exits 0 and the sources did not change while it ran. Raises
    FileNotFoundError when `lake` is not on PATH (nothing is recorded then).
    """
    lean_dir = Path(lean_dir)
    lake = shutil.which("lake")
    if lake is None:
        raise FileNotFoundError(
            "lake is not on PATH: install a Lean 4 toolchain (elan) to check the proofs; nothing was checked"
        )
    before = sources_digest(lean_dir)
    started = time.time()
    try:
        proc = subprocess.run(
            [lake, "build"], cwd=lean_dir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = None
        output = _text(exc.stdout) + _text(exc.stderr) + f"\n[ladder] lake build timed out after {timeout_s:g} s\n"
    after = sources_digest(lean_dir)
    record = {
        "command": "lake build",
        "lake": lake,
        "sources_sha256": before,
        "ok": returncode == 0 and before == after,
        "returncode": returncode,
        "sources_changed_during_build": before != after,
        "sorry_warnings": sorted(
            {f"{m.group('file')}:{m.group('line')}" for m in _SORRY_WARNING_RE.finditer(output)}
        ),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - started, 3),
        "output_tail": output[-4000:],
    }
    atomic_write(record_path(lean_dir), json.dumps(record, indent=2) + "\n")
    return record


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------------------------
# The grid


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
    flagged = _flag_sorry_warnings(decls, record.get("sorry_warnings", []) if build_ok else [])
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


def _flag_sorry_warnings(decls: list[Declaration], warnings: Iterable[str]) -> set[int]:
    """Declarations whose lines hold a `declaration uses 'sorry'` warning of the recorded build."""
    flagged: set[int] = set()
    for warning in warnings:
        file, _, line = str(warning).rpartition(":")
        if not line.isdigit():
            continue
        while file.startswith("./"):
            file = file[2:]
        for index, decl in enumerate(decls):
            same_file = file == decl.file or file.endswith("/" + decl.file)
            if same_file and decl.line <= int(line) <= decl.end_line:
                flagged.add(index)
    return flagged


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


def build_note(lean_dir: str | os.PathLike) -> str:
    """One line on the recorded build: none, successful for these sources, failed, or for other sources."""
    record = read_build_record(lean_dir)
    if record is None:
        where = "lake is on PATH" if shutil.which("lake") else "no Lean toolchain (lake) on PATH"
        return f"lake build: never run here ({where}); run `ladder theorems --check` to check the proofs"
    if record.get("sources_sha256") != sources_digest(lean_dir):
        return "lake build: the recorded build is of other sources (they changed since); run `ladder theorems --check`"
    if record.get("ok") is not True:
        return f"lake build: FAILED at {record.get('finished_at')} (exit {record.get('returncode')}); see {RECORD_NAME}"
    return f"lake build: succeeded on these sources at {record.get('finished_at')}"


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
