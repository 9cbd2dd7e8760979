"""Reading Lean sources for the theorem tracker: declarations, their doc-comment rung tags and their dependencies.

`parse_sources` turns every `.lean` file under a folder into `Declaration`s (name, place, `sorry`, identifiers used);
`DependencyGraph` resolves those identifiers by name within the sources to give each declaration's transitive
`sorry` and named-axiom dependencies. Imports only the standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SKIP_DIRS = {".lake", "lake-packages", ".git", "build"}

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

