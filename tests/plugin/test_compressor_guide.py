"""docs/compressors.md cannot rot: every `$ command` of its console blocks runs, in order, in a copy of the
repository's rungs, preregs and examples, and each output line the guide shows (fnmatch: `*` for what changes)
appears in what the command printed, in the order shown. The one edit the guide describes in prose (the G4 variant's
prereg) is made as it says."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "compressors.md"
ARCHIVE = "/tmp/ladder-guide"  # the guide's archive folder; the test uses its own


def console_blocks(text: str) -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as [(command, [expected output lines])]."""
    blocks, current, inside = [], None, False
    for line in text.splitlines():
        if line.strip() == "```console":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append(current)
        elif inside and line.startswith("$ "):
            current.append((line[2:], []))
        elif inside:
            current[-1][1].append(line)
    return blocks


def shown_in_order(expected: list[str], printed: list[str]) -> bool:
    position = 0
    for pattern in (line.replace("[", "[[]") for line in expected):  # brackets in node ids are literal
        while position < len(printed) and not fnmatch.fnmatchcase(printed[position], pattern):
            position += 1
        if position == len(printed):
            return False
        position += 1
    return True


def run(command: str, cwd: Path, archive: Path) -> str:
    words = shlex.split(command.replace(ARCHIVE, str(archive)))
    head = {"ladder": [sys.executable, "-m", "pytest_ladder.cli"],
            "pytest": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]}[words[0]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(head + words[1:], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    return done.stdout + done.stderr


def make_g4_variant(project: Path) -> None:
    """The guide's prose: copy prereg/g4 to prereg/g4_rank4x, four times the rank, "rung": "g4"."""
    data = json.loads((project / "prereg" / "g4" / "tau.json").read_text())
    data.pop("seal")
    data["params"]["rank_fraction"] = 0.046875
    data["rung"] = "g4"
    (project / "prereg" / "g4_rank4x").mkdir()
    (project / "prereg" / "g4_rank4x" / "tau.json").write_text(json.dumps(data, indent=2))


def test_every_command_of_the_guide_prints_what_the_guide_shows(tmp_path):
    project = tmp_path / "project"
    for folder in ("rungs", "prereg", "examples"):
        shutil.copytree(ROOT / folder, project / folder)
    for file in ("conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / file, project / file)
    blocks = console_blocks(GUIDE.read_text())
    assert len(blocks) >= 5 and all(blocks)
    for block in blocks:
        for command, expected in block:
            if command.startswith("ladder seal prereg/g4_rank4x"):
                make_g4_variant(project)
            printed = run(command, project, tmp_path / "archive").splitlines()
            assert shown_in_order(expected, printed), f"$ {command}\nexpected:\n" + "\n".join(expected) + \
                "\nprinted:\n" + "\n".join(printed[-60:])
    assert not (project / "archive").exists()  # the guide's runs archive elsewhere
