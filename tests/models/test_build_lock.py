"""The embedded model's build lock says who holds it and since when; a waiter shows it (a real second process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_ladder.models.embedded import build_lock

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from pytest_ladder.models.embedded import build_lock
with build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(folder: Path, seconds: float) -> tuple[subprocess.Popen, dict]:
    """A real process holding the build lock of `folder` for `seconds`; its holder note once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert holder.stdout.readline() == "held\n"
    return holder, json.loads(Path(f"{folder}.lock.holder").read_text())


def test_waiter_names_the_holder_until_it_releases(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, note = hold(folder, 1.5)
    assert note["pid"] == holder.pid and note["host"] == socket.gethostname()
    logs: list[str] = []
    start = time.monotonic()
    with build_lock(folder, log=logs.append, notice_every=0.25):
        waited = time.monotonic() - start
        mine = json.loads(Path(f"{folder}.lock.holder").read_text())
    holder.wait(timeout=30)
    line = f"waiting for the build of {folder} held by pid {holder.pid} on {socket.gethostname()} since {note['since']}"
    assert 3 <= len(logs) <= waited / 0.25 + 2 and set(logs) == {line}
    assert mine["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{folder.name}.lock"]  # the note goes with the holder


def test_timeout_names_the_holder(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, note = hold(folder, 5)
    logs: list[str] = []
    with pytest.raises(RuntimeError) as error:
        with build_lock(folder, log=logs.append, timeout=0.6, notice_every=0.2):
            pass
    holder.kill()
    holder.wait(timeout=30)
    who = f"held by pid {holder.pid} on {socket.gethostname()} since {note['since']}"
    assert str(error.value) == (
        f"waited 0.6 seconds for the build of {folder} ({who}; lock {folder}.lock); if no build is running, delete "
        "the lock file and retry"
    )
    assert logs[0] == f"waiting for the build of {folder} {who}"


def test_a_killed_holder_frees_the_lock(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, _ = hold(folder, 60)
    holder.kill()
    holder.wait(timeout=30)
    with build_lock(folder, log=[].append, timeout=5):
        assert json.loads(Path(f"{folder}.lock.holder").read_text())["pid"] == os.getpid()
