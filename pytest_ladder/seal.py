"""The seal of a prereg (protocol §2): SHA-256 of its canonical JSON without the seal field, written into the file.

Canonical form: `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)` in UTF-8,
so re-indenting or reordering keys keeps the seal and any change of a value breaks it. The seal is tamper-evident,
not tamper-proof: re-sealing is always possible and shows in version history. Random-baseline seeds derive from the
seal, so nobody picks seeds after seeing results. CLI: `ladder seal PATH...`, `ladder verify PATH...`.

The seal hashes the parsed content, never the file's bytes: a UTF-8 byte-order mark (some Windows editors write one),
indentation, key order and line endings are not part of it. A prereg saved with a BOM therefore keeps the seal it had
without one; seal, verify and the pytest plugin all read it (`read_json_object`), and `ladder seal` writes the file
back as UTF-8 without a BOM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ladder.files import atomic_write

SEAL_FIELD = "seal"
PREREG_NAME = "tau.json"


class SealError(ValueError):
    """A file that cannot be sealed or checked: unreadable, not JSON, not an object, or holding NaN/Infinity."""


@dataclass(frozen=True)
class SealStatus:
    """Outcome of `verify_seal`: `ok` only when the file's seal equals the hash of its content."""

    ok: bool
    path: Path
    found: str | None  # the seal written in the file (None when missing or unreadable)
    expected: str  # the hash of the content ("" when the file could not be read as JSON)
    message: str


def canonical_bytes(data: dict) -> bytes:
    """UTF-8 canonical JSON of `data` without its seal field (sorted keys, no whitespace, no NaN)."""
    content = {key: value for key, value in data.items() if key != SEAL_FIELD}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def compute_seal(data: dict) -> str:
    """sha256(canonical_bytes(data)) as 64 lowercase hex digits."""
    return hashlib.sha256(canonical_bytes(data)).hexdigest()


class JsonContentError(SealError):
    """The file was read but its content is not a strict JSON object: syntax, a duplicate key, a non-finite number."""


class _NonFinite:
    """Stands in, while parsing, for a number that is not finite (NaN, Infinity, or a literal such as 1e400)."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Duplicated(dict):
    """An object in which some keys appear more than once (the last value is kept, as json does)."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: list[str]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _int(text: str) -> Any:
    value = int(text)
    try:
        float(value)
    except OverflowError:  # beyond every float: a rule or a threshold could not use it
        return _NonFinite(text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict:
    seen: set[str] = set()
    duplicates = []
    for key, _ in pairs:
        if key in seen and key not in duplicates:
            duplicates.append(key)
        seen.add(key)
    return _Duplicated(pairs, duplicates) if duplicates else dict(pairs)


def _field(where: str, key: Any) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)


def _clean(value: Any, where: str, problems: list[str]) -> Any:
    """`value` with plain dicts, listing each duplicate key and non-finite number (by field) in `problems`."""
    if isinstance(value, _NonFinite):
        why = "strict JSON has no NaN or Infinity" if value.text in ("NaN", "Infinity", "-Infinity") else "it overflows"
        problems.append(f"field '{where}' must be a finite number (got {value.text}): {why}. Fix the value")
        return None
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append(f"field '{_field(where, key)}' appears more than once (a duplicate key: a reader sees the "
                            "first value, the parser keeps the last). Keep exactly one")
        return {key: _clean(item, _field(where, key), problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item, _field(where, i), problems) for i, item in enumerate(value)]
    return value


def read_json_object(path: Path | str, *, display: str | None = None) -> dict:
    """The JSON object in `path`, strict: no duplicate keys, no NaN/Infinity/overflowing numbers; a UTF-8 BOM is
    allowed. SealError naming the file (as `display`, default the path) and the position or, a line each, every bad
    field with its fix."""
    path = Path(path)
    shown = display or str(path)
    reseal = f"re-seal with: ladder seal {shown}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise SealError(f"{shown}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise SealError(f"{shown}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        data = json.loads(text, parse_float=_float, parse_int=_int, parse_constant=_NonFinite,
                          object_pairs_hook=_object)
    except json.JSONDecodeError as error:
        raise JsonContentError(
            f"{shown}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}. Fix the syntax and "
            f"{reseal}"
        ) from None
    except ValueError as error:  # an integer literal beyond Python's digit limit
        raise JsonContentError(f"{shown}: not valid JSON: {error}. Fix the value and {reseal}") from None
    if not isinstance(data, dict):
        raise JsonContentError(f"{shown}: the top level must be a JSON object {{...}}, got {type(data).__name__}")
    problems: list[str] = []
    data = _clean(data, "", problems)
    if problems:
        raise JsonContentError("\n".join(f"{shown}: {problem} and {reseal}" for problem in problems))
    return data


def seal_file(path: Path | str) -> str:
    """Compute the seal of `path` and write it in as the last field (indent 2, key order kept); return it."""
    path = Path(path)
    data = read_json_object(path)
    seal = compute_seal(data)
    content = {key: value for key, value in data.items() if key != SEAL_FIELD}
    content[SEAL_FIELD] = seal
    atomic_write(path, json.dumps(content, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return seal


def verify_seal(path: Path | str, *, display: str | None = None) -> SealStatus:
    """Check the seal of `path` from its raw JSON (works before schema validation); the message says what to do."""
    path = Path(path)
    shown = display or str(path)
    reseal = (
        f"If the change was made before any data was seen, re-seal with `ladder seal {shown}`; re-sealing after "
        "seeing data is visible in version history."
    )
    try:
        data = read_json_object(path, display=shown)
    except SealError as error:
        message = str(error)
        return SealStatus(
            False, path, None, "", f"{message}\n{shown}: the seal cannot be checked until the file parses."
        )
    expected = compute_seal(data)
    found = data.get(SEAL_FIELD)
    if found is None:
        return SealStatus(
            False, path, None, expected,
            f"{shown}: no seal: the prereg must be sealed before the run. Seal it with `ladder seal {shown}` "
            "(re-sealing after seeing data is visible in version history).",
        )
    if not isinstance(found, str) or found != expected:
        return SealStatus(
            False, path, found if isinstance(found, str) else repr(found), expected,
            f"{shown}: seal mismatch: the file says {str(found)[:12]}…, its content hashes to {expected[:12]}…, so "
            f"a value changed after sealing. Restore the sealed values, or: {reseal}",
        )
    return SealStatus(True, path, found, expected, f"{shown}: seal ok ({expected[:12]}…)")


def derive_seeds(seal: str, n: int, *, purpose: str = "tau") -> list[int]:
    """`n` deterministic 31-bit seeds: the first 4 bytes of sha256(f"{seal}:{purpose}:{i}"), top bit cleared."""
    if n < 0:
        raise ValueError(f"derive_seeds: n must be >= 0, got {n}")
    return [
        int.from_bytes(hashlib.sha256(f"{seal}:{purpose}:{i}".encode()).digest()[:4], "big") & 0x7FFFFFFF
        for i in range(n)
    ]


def prereg_files(paths: list[str]) -> list[Path]:
    """Expand the CLI's paths: a file as given, a folder as every tau.json under it (sorted). Missing: SealError."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files.extend(sorted(path.rglob(PREREG_NAME)))
        elif path.is_file():
            files.append(path)
        else:
            raise SealError(f"{given}: no such file or folder")
    return files


def _args_and_files(
    prog: str, description: str, argv: list[str], schema: bool
) -> tuple[argparse.Namespace, list[Path]]:
    """The command's arguments and the prereg files its PATHs name. Exits (SystemExit) like argparse on --help or a
    bad option, and with 2 after saying why when a PATH is missing or no file is found."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("paths", nargs="+", metavar="PATH", help=f"a {PREREG_NAME} file, or a folder searched for them")
    if schema:
        parser.add_argument("--schema", action="store_true",
                            help="accepted for old commands: the schema is always checked")
    args = parser.parse_args(argv)
    try:
        files = prereg_files(args.paths)
        if not files:
            raise SealError(f"no {PREREG_NAME} under {', '.join(args.paths)}")
    except SealError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, files


def seal_main(argv: list[str]) -> int:
    """`ladder seal PATH...`: validate every file (strict JSON, then the prereg schema) and write the seals only
    when all are valid; otherwise list every problem found (file, field, fix), write nothing and exit 2."""
    try:
        _, files = _args_and_files("ladder seal", "Validate prereg tau.json files and write their SHA-256 seals "
                                   "(nothing is written unless every file is valid).", argv, schema=False)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from pytest_ladder.prereg import prereg_problems  # imports pytest: only when sealing

    problems = [problem for file in files for problem in prereg_problems(file)]  # check every file before writing
    if problems:
        print(f"ladder seal: nothing sealed: {len(problems)} problem{'s' if len(problems) > 1 else ''} to fix first:",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    for file in files:
        print(f"{file}  {seal_file(file)}")
    return 0


def verify_main(argv: list[str]) -> int:
    """`ladder verify PATH...`: per file its seal (ok/MISSING/BROKEN/INVALID) and each schema problem (SCHEMA), every
    file reported even after a bad one; then, per prereg folder, each `requires` naming an absent rung or forming a
    cycle (REQUIRES). `ok` means seal and schema both hold. Exit 0 only if every check holds, 1 otherwise, 2 when no
    file is given or found. `--schema` is accepted and changes nothing (the schema is always checked)."""
    try:
        _, files = _args_and_files("ladder verify", "Check the seal and the schema of prereg tau.json files.",
                                   argv, schema=True)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    failures = 0
    loaded: dict[Path, list[Any]] = {}  # prereg folder -> the preregs of it that passed the schema
    for file in files:
        try:
            status = verify_seal(file)
            problems = _schema_problems(file, loaded) if status.expected else []
        except Exception as error:  # noqa: BLE001 - one file's surprise must not hide the report on the others
            print(f"{'ERROR':<8}{file}  {file}: cannot be checked ({type(error).__name__}: {error})")
            failures += 1
            continue
        if status.ok and not problems:
            print(f"{'ok':<8}{file}  {status.expected}")
            continue
        if not status.ok:
            word = "MISSING" if status.found is None and status.expected else "BROKEN" if status.expected else "INVALID"
            print(f"{word:<8}{file}  {status.message}")
        for problem in problems:
            print(f"{'SCHEMA':<8}{file}  {problem}")
        failures += (not status.ok) + len(problems)
    for folder, problem in _ladder_problems(loaded):
        print(f"REQUIRES {folder}  {problem}")
        failures += 1
    return 0 if failures == 0 else 1


def _schema_problems(file: Path, loaded: dict[Path, list[Any]]) -> list[str]:
    """Every schema problem of `file` (file, field, fix); when there is none, keep its Prereg in `loaded` under its
    prereg folder for the ladder check."""
    from pytest_ladder.prereg import PreregError, load_prereg, prereg_problems  # imports pytest: only when verifying

    try:
        prereg = load_prereg(file)
    except PreregError:
        return prereg_problems(file) or [f"{file}: does not load as a prereg. Fix it and re-seal with: ladder seal "
                                         f"{file}"]
    loaded.setdefault(file.parent.parent, []).append(prereg)
    return []


@dataclass(frozen=True)
class _Present:
    """A required rung whose prereg file exists but does not load: present for the ladder check, its own problems
    reported when it is verified itself."""

    rung: str
    display_path: str
    requires: tuple[str, ...] = ()


def _ladder_problems(loaded: dict[Path, list[Any]]) -> list[tuple[Path, str]]:
    """(folder, problem) for each `requires` of the verified preregs naming a rung without a prereg file in their
    folder, and each cycle; the required preregs are read from disk, so verifying one file checks its whole chain."""
    from pytest_ladder.prereg import PreregError, load_prereg, requires_problems

    problems = []
    for folder, preregs in sorted(loaded.items()):
        found: dict[str, Any] = {prereg.rung: prereg for prereg in preregs}
        todo = [required for prereg in preregs for required in prereg.requires]
        while todo:
            name = todo.pop()
            path = folder / name / PREREG_NAME
            if name in found or not path.is_file():
                continue
            try:
                found[name] = load_prereg(path)
            except PreregError:
                found[name] = _Present(name, str(path))
                continue
            todo.extend(found[name].requires)
        problems += [(folder, problem) for problem in requires_problems(list(found.values()), str(folder))]
    return problems
