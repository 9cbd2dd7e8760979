"""`pytest rungs/ -m analytical --collect-only` imports no torch, transformers or numpy: every rung module loads its
heavy libraries inside the functions that need them, so selecting the analytical prefilters stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys, pytest
code = pytest.main(['rungs/', '-m', 'analytical', '--collect-only', '-q', '-p', 'no:cacheprovider'])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'accelerate', 'numpy'))
print('EXIT', int(code), 'HEAVY', heavy[:5])
"""


def test_collecting_the_analytical_prefilters_imports_no_torch():
    run = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "EXIT 0 HEAVY []" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    assert "38/386 tests collected" in run.stdout
