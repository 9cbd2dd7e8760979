"""Packaging: `ladder --version`, `python -m pytest_ladder` (the same command as `ladder`), and a wheel that ships
py.typed, the LICENSE and the metadata pyproject.toml declares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from pytest_ladder import __version__
from pytest_ladder.cli import main as ladder
from pytest_ladder.cli import usage

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, whatever is installed
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_version_is_one_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_ladder_version(flag, capsys):
    assert ladder([flag]) == 0
    assert capsys.readouterr().out == f"pytest-ladder {__version__}\n"


@pytest.mark.parametrize("module", ["pytest_ladder", "pytest_ladder.cli"])
def test_python_m_version_in_a_real_process(module):
    done = run("-m", module, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"pytest-ladder {__version__}\n", "")


def test_python_m_pytest_ladder_is_the_ladder_command(tmp_path):
    done = run("-m", "pytest_ladder", "--help")
    assert (done.returncode, done.stdout, done.stderr) == (0, usage() + "\n", "")
    assert "verify" in done.stdout and "seal" in done.stdout
    done = run("-m", "pytest_ladder", "verify", "prereg")
    preregs = len(list((REPO / "prereg").glob("*/tau.json")))
    assert done.returncode == 0 and len(done.stdout.splitlines()) == preregs >= 16
    done = run("-m", "pytest_ladder", "nonsense")
    assert done.returncode == 2 and done.stderr.startswith("ladder: unknown command 'nonsense'")


def test_wheel_ships_py_typed_license_and_metadata(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot read PEP 639 license metadata")
    source = tmp_path / "src"  # a copy: building never writes build/ or *.egg-info into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pytest_ladder", source / "pytest_ladder",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = run("-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "dist"), ".",
               cwd=source)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"pytest_ladder-{__version__}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "pytest_ladder/py.typed" in names and "pytest_ladder/__main__.py" in names
    assert "pytest_ladder/prereg.schema.json" in names
    assert license_text == (REPO / "LICENSE").read_text() and "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    assert (metadata["Version"], metadata["License-Expression"]) == (__version__, "Apache-2.0")
    classifiers = metadata.get_all("Classifier")
    assert {"Framework :: Pytest", "Topic :: Scientific/Engineering :: Artificial Intelligence",
            "Typing :: Typed"} <= set(classifiers)
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL")} >= {"Homepage", "Changelog", "Protocol"}


# ------------------------------------------------------------------------------------------- the protocol text ----

PROTOCOL = REPO / "docs" / "protocol.md"


def sections(text: str) -> dict[str, str]:
    """'6' -> the body of '## 6. ...'."""
    parts = re.split(r"^## (\d+)\. .*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_protocol_section_cited_exists():
    numbered = sections(PROTOCOL.read_text(encoding="utf-8"))
    assert list(numbered) == [str(n) for n in range(1, 11)]
    files = [REPO / "README.md", REPO / "lean" / "README.md", *sorted((REPO / "pytest_ladder").rglob("*.py"))]
    cited = set()
    for file in files:
        for group in re.findall(r"protocol(?:\.md)?\]?\(?[^)\s]*\)?\s*((?:§[\d.]+(?:,\s*)?)+)", file.read_text()):
            cited |= {(file.name, number.rstrip(".")) for number in re.findall(r"§([\d.]+)", group)}
    assert {number for _, number in cited} >= {"6", "7", "10", "6.1", "6.4"}
    for where, number in sorted(cited):
        section, _, item = number.partition(".")
        assert section in numbered, f"{where} cites protocol §{number}"
        if item:
            assert re.search(rf"^{item}\. \*\*", numbered[section], flags=re.M), f"{where} cites protocol §{number}"


def test_links_between_the_documents_resolve():
    for document in (REPO / "README.md", REPO / "lean" / "README.md", REPO / "CHANGELOG.md", PROTOCOL):
        for target in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", document.read_text(encoding="utf-8")):
            path, anchor = target
            if path.startswith("http") or (not path and not anchor):
                continue
            file = (document.parent / path).resolve() if path else document
            assert file.exists(), f"{document.name} links to {path}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", file.read_text(encoding="utf-8"), flags=re.M)
                assert anchor[1:] in map(slug, headings), f"{document.name} links to {path}{anchor}"


def test_the_protocol_states_the_gate_and_trap_rule():
    text = PROTOCOL.read_text(encoding="utf-8")
    assert "a gate tests a condition written in the claim; a trap tests the pipeline, not the claim" in text.lower()
    assert "](gate-audit.md)" in text
