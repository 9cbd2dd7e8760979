"""A decision does not depend on how it was run: the real G4 rung on the embedded model reaches the same verdict,
naming the same reason, in a full run and under --ladder-kill-fast (which skips the remaining cells after a kill,
never the traps that validate it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def g4_decision(archive: Path, *options: str) -> dict:
    command = [sys.executable, "-m", "pytest", "rungs/test_g4.py", "-q", "-p", "no:cacheprovider",
               "--ladder-archive-dir", str(archive), *options]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    decisions = sorted(archive.glob("g4/*/decision.json"))
    assert len(decisions) == 1, run.stdout[-4000:] + run.stderr[-2000:]
    return json.loads(decisions[0].read_text())


def test_g4_verdict_is_the_same_with_and_without_kill_fast(tmp_path):
    full = g4_decision(tmp_path / "full")
    fast = g4_decision(tmp_path / "fast", "--ladder-kill-fast")
    assert fast["verdict"] == full["verdict"]
    assert fast["invalid_because"] == full["invalid_because"] or (
        (fast["invalid_because"]["kind"], fast["invalid_because"]["name"])
        == (full["invalid_because"]["kind"], full["invalid_because"]["name"]))
    traps = {t["name"]: t for t in full["traps"]}
    assert {t["name"]: t["fired_as_declared"] for t in fast["traps"]} == {
        name: t["fired_as_declared"] for name, t in traps.items()}
    assert fast["selection"]["kill_fast"] is True and full["selection"]["kill_fast"] is False
    assert fast["selection"]["skipped"] > 0 and full["selection"]["skipped"] == 0
