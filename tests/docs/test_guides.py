"""The guides run: every command in docs/own-claim.md runs, in order, on a tmp copy of the repository's prereg/ and
rungs/ (with its pyproject.toml and conftest.py, so the copy is the rootdir); every edit shown as a diff is applied;
every pasted output is found in the command's real output (run ids aside). The generated references (docs/cli.md)
equal what their functions generate now.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ladder.cli import cli_markdown, main as ladder

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "own-claim.md"
RUN_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}")


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """'## heading' -> its fenced blocks in order, as (language, body)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        found[heading.strip()] = re.findall(r"^```(\w*)\n(.*?)^```$", body, flags=re.M | re.S)
    return found


def apply_diff(root: Path, diff: str) -> None:
    """Apply a guide's diff: a `--- path` header, then groups of `-` lines replaced by the `+` lines after them; a
    `-` line ending in "…" matches any line starting with the text before it."""
    lines = diff.splitlines()
    path = root / lines[0].removeprefix("--- ")
    text = path.read_text(encoding="utf-8").splitlines()
    groups: list[tuple[list[str], list[str]]] = []
    for line in lines[2:]:
        if line.startswith("-") and (not groups or groups[-1][1]):
            groups.append(([], []))
        groups[-1][0 if line.startswith("-") else 1].append(line[1:])

    def matches(line: str, pattern: str) -> bool:
        return line.startswith(pattern[:-1]) if pattern.endswith("…") else line == pattern

    for old, new in groups:
        hits = [i for i in range(len(text)) if all(i + k < len(text) and matches(text[i + k], pattern)
                                                 for k, pattern in enumerate(old))]
        assert len(hits) == 1, f"{path}: the guide's lines {old} match {len(hits)} places"
        text[hits[0]:hits[0] + len(old)] = new
    path.write_text("\n".join(text) + "\n", encoding="utf-8")


def run_command(root: Path, command: str) -> subprocess.CompletedProcess:
    """A guide's `ladder ...` or `pytest ...` command, run with this checkout's code in `root`."""
    program, *args = command.split()
    prefix = {"ladder": ["-m", "pytest_ladder.cli"], "pytest": ["-m", "pytest", "-p", "no:cacheprovider"]}[program]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *prefix, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


# the embedded build the guide's pytest outputs come from (the guide names it); the build is deterministic on one kind
# of processor, not across kinds (torch's CPU kernels and MKL round differently), so elsewhere the values differ
GUIDE_WEIGHTS = re.search(r"weights sha256 `([0-9a-f]{12})…`", GUIDE.read_text(encoding="utf-8")).group(1)
VERDICT_LINE = re.compile(r"^(?P<rung>\w+): (KILL|PASS|INVALID|PARTIAL|PREFILTER_PASS)\b")


def _newest_weights(root: Path) -> str:
    """model.weights_sha256 of the newest decision archived under root."""
    import json

    newest = max((root / "archive").glob("*/*/decision.json"), key=lambda path: path.parent.name)
    return json.loads(newest.read_text(encoding="utf-8"))["model"].get("weights_sha256") or ""


def check_output(command: str, expected: str, real: list[str], weights: str | None) -> None:
    """Every line of the guide's output block is in the command's output (run ids aside). For a pytest run on an
    embedded build other than the guide's, the values are that build's: the output must give the same rung a verdict
    line and the same gate table header (the guide's text cannot be matched line by line there)."""
    lines = [RUN_ID.sub("<run>", line.rstrip()) for line in expected.splitlines()]
    if weights is not None and not weights.startswith(GUIDE_WEIGHTS):
        verdict = VERDICT_LINE.match(lines[0])
        assert verdict is not None, f"{command}: the guide's output does not start with a verdict line"
        assert any((m := VERDICT_LINE.match(line)) and m["rung"] == verdict["rung"] for line in real), (
            f"{command}: no verdict line for {verdict['rung']} in\n" + "\n".join(real))
        assert lines[1] in real, f"{command}: no line {lines[1]!r} in\n" + "\n".join(real)
        return
    for line in lines:
        assert line in real, f"{command}: no line {line!r} in\n" + "\n".join(real)


def walk(tmp_path: Path, heading: str) -> list[str]:
    """Run the section's steps on a fresh copy; return the commands run."""
    for name in ("prereg", "rungs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "conftest.py"):
        shutil.copy(REPO / name, tmp_path / name)
    blocks, commands, done = sections(GUIDE.read_text(encoding="utf-8"))[heading], [], None
    for language, body in blocks:
        if language == "bash":
            (command,) = body.splitlines()
            done = run_command(tmp_path, command)
            commands.append(command)
            expected_status = (0, 1) if command.startswith("pytest") else (0,)
            assert done.returncode in expected_status, f"{command}\n{done.stdout}\n{done.stderr}"
        elif language == "text":
            assert done is not None, "an output block before any command"
            real = [RUN_ID.sub("<run>", line.rstrip()) for line in done.stdout.splitlines()]
            weights = _newest_weights(tmp_path) if commands[-1].startswith("pytest") else None
            check_output(commands[-1], body, real, weights)
            done = None
        elif language == "diff":
            apply_diff(tmp_path, body)
    return commands


def test_own_claim_lists_the_two_ways_in():
    assert list(sections(GUIDE.read_text(encoding="utf-8"))) == [
        "A variant of a seed rung: G4 at 4× the rank", "A claim with a module of its own: INT4 experts"]


def test_own_claim_variant(tmp_path):
    commands = walk(tmp_path, "A variant of a seed rung: G4 at 4× the rank")
    assert commands == ["ladder new g4_rank4x --from g4", "ladder seal prereg/g4_rank4x/tau.json",
                        "pytest rungs/test_g4.py::g4_rank4x --ladder-prereg-dir prereg"]
    assert len(list((tmp_path / "archive" / "g4_rank4x").glob("*/decision.json"))) == 1


def test_own_claim_with_its_own_module(tmp_path):
    commands = walk(tmp_path, "A claim with a module of its own: INT4 experts")
    assert commands == ["ladder new my_int4", "ladder seal prereg/my_int4/tau.json",
                        "pytest rungs/test_my_int4.py --ladder-prereg-dir prereg"]
    assert len(list((tmp_path / "archive" / "my_int4").glob("*/decision.json"))) == 1


def test_apply_diff_refuses_a_line_that_is_not_there(tmp_path):
    (tmp_path / "f.txt").write_text("a\nb\n")
    apply_diff(tmp_path, "--- f.txt\n+++ f.txt\n-a\n+A")
    assert (tmp_path / "f.txt").read_text() == "A\nb\n"
    with pytest.raises(AssertionError, match="match 0 places"):
        apply_diff(tmp_path, "--- f.txt\n+++ f.txt\n-x…\n+y")


def test_cli_reference_is_generated_from_the_help(capsys):
    assert ladder(["help", "--markdown"]) == 0
    generated = capsys.readouterr().out
    assert generated == cli_markdown()
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == generated, (
        "docs/cli.md is stale: regenerate it with `ladder help --markdown > docs/cli.md`")
    from pytest_ladder.cli import COMMANDS

    for name in COMMANDS:
        assert f"\n## ladder {name}\n\n```text\nusage: ladder {name}" in generated


FIXTURES = ("prereg", "gate", "trap", "cell", "ladder_seeds", "ladder_model", "ladder_corpora", "ladder_weights",
            "ladder_routing", "ladder_layers", "ladder_workspace", "rung_cache", "attention_study")
HELPERS = ("record_cell", "cell_layers", "resolve_layer", "resolve_size")


def test_fixtures_guide_names_every_fixture_and_helper():
    import importlib

    binding, rung, rung_fixtures, model_fixtures = (importlib.import_module(f"pytest_ladder.{name}")
                                                    for name in ("binding", "rung", "rung_fixtures", "fixtures"))

    text = (REPO / "docs" / "fixtures.md").read_text(encoding="utf-8")
    for name in FIXTURES:
        assert f"| `{name}` |" in text, name
        assert any(hasattr(module, name) for module in (binding, rung_fixtures, model_fixtures)) or name == "cell"
    for name in HELPERS:
        assert f"| `{name}(" in text, name
        assert hasattr(rung_fixtures, name) or hasattr(rung, name)


@pytest.mark.parametrize("page", ["own-claim.md", "fixtures.md", "cli.md", "prereg-reference.md"])
def test_docs_links_resolve_and_readme_links_them(page):
    document = REPO / "docs" / page
    for path in re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", document.read_text(encoding="utf-8")):
        assert path.startswith("http") or (document.parent / path).exists(), f"{page} links to {path}"
    assert f"](docs/{page})" in (REPO / "README.md").read_text(encoding="utf-8")


def test_outputs_are_matched_value_for_value_on_the_guides_build_only():
    expected = "r: KILL at gate g @ c: 0.5 > 0.1\nkind  name  value\ngate  g     0.5"
    other = ["r: KILL at gate h @ c: 0.7 > 0.1", "kind  name  value", "gate  h     0.7"]
    check_output("pytest", expected, expected.splitlines(), GUIDE_WEIGHTS + "0" * 52)
    with pytest.raises(AssertionError, match="no line 'r: KILL at gate g"):
        check_output("pytest", expected, other, GUIDE_WEIGHTS + "0" * 52)
    check_output("pytest", expected, other, "f" * 64)  # another build: its own values, the same rung and table
    with pytest.raises(AssertionError, match="no verdict line for r"):
        check_output("pytest", expected, other[1:], "f" * 64)
    with pytest.raises(AssertionError, match="no line 'kind  name  value'"):
        check_output("pytest", expected, other[:1], "f" * 64)
