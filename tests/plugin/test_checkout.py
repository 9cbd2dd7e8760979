"""The repository's conftest.py: from a checkout, the rungs run with the plugin even where its entry point is not
loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD, or an image that has the dependencies but never `pip install`ed us), and it
adds nothing where the entry point already registered the plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("autoload", [True, False])
def test_rungs_collect_from_a_checkout(autoload):
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pytest", "rungs/test_g0.py", "-m", "analytical", "--co", "-q",
                           "-p", "no:cacheprovider", "--ladder-kill-fast"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if line.startswith("rungs/test_g0.py::")]
    assert "rungs/test_g0.py::test_effective_rank[layer:3/16]" in collected
    assert len(collected) == len(set(collected)) > 0
