"""What `lake build` compiles, and the record of a build (`<lean>/.lake-check.json`) the theorem tracker trusts.

A build counts for a theorem only when it succeeded on sources with the same SHA-256 as now (`sources_digest`) and
compiled the theorem's file (`built_files`: the default targets' roots and their imports). Imports only the
standard library (and `pytest_ladder.files` for the atomic write).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from pytest_ladder.files import atomic_write
from pytest_ladder.lean_source import Declaration, blank_comments_and_strings, lean_files

RECORD_NAME = ".lake-check.json"
DEFAULT_TIMEOUT_S = 3600

_IMPORT_RE = re.compile(r"^[ \t]*(?:(?:public|private|meta)[ \t]+)*import[ \t]+(?:all[ \t]+)?([^\n]+)", re.MULTILINE)
_TOP_LEVEL_LINE_RE = re.compile(r"^\S", re.MULTILINE)
# Lean prints `F.lean:3:8: warning: declaration uses 'sorry'`; lake relays it as
# `warning: ./F.lean:3:8: declaration uses 'sorry'`.
_SORRY_WARNING_RE = re.compile(r"(?P<file>[^\s:]+\.lean):(?P<line>\d+):\d+:(?: warning:)? declaration uses 'sorry'")


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


def flag_sorry_warnings(decls: list[Declaration], warnings: Iterable[str]) -> set[int]:
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
