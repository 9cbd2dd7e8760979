"""A killed parameterised claim names where it would have passed: the real G6 and G7 rungs on the embedded model
record the curve they measured as a sweep when a cell fails, and the postmortem reads the passing rank / cache size
off it (the G4 case: tests/rungs/test_planted_lowrank.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_g6_and_g7_kills_name_their_passing_rank_and_cache_size(tmp_path):
    command = [sys.executable, "-m", "pytest", "rungs/test_g6.py", "rungs/test_g7.py", "-q", "-p", "no:cacheprovider",
               "--ladder-archive-dir", str(tmp_path), "--ladder-kill-fast"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    for rung, param in (("g6", "rank"), ("g7", "cache size")):
        (folder,) = [p.parent for p in tmp_path.glob(f"{rung}/*/decision.json")] or [None]
        assert folder is not None, run.stdout[-4000:]
        record = json.loads((folder / "decision.json").read_text())
        assert record["verdict"] == "KILL"
        killed = next(g for g in record["gates"] if g["name"] == record["killed_by"]["name"]
                      and g["cell"] == record["killed_by"]["cell"])
        sweep = killed["extra"]["sweep"]
        assert sweep["param"] == param and len(sweep["values"]) == len(sweep["results"]) >= 3
        meets = {"<=": lambda y: y <= killed["threshold"], ">=": lambda y: y >= killed["threshold"]}[killed["op"]]
        passing = [x for x, y in zip(sweep["values"], sweep["results"]) if meets(y)]
        postmortem = (folder / "postmortem.md").read_text()
        if passing:
            assert f"- would pass at {param} {min(passing)} (value " in postmortem
        else:
            assert f"- no measured {param} meets the threshold" in postmortem
    passed = [g for g in json.loads(next(tmp_path.glob("g6/*/decision.json")).read_text())["gates"]
              if g["outcome"] == "passed"]
    assert passed and all("sweep" not in (g.get("extra") or {}) for g in passed)  # measured only for a kill
