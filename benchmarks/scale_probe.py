"""A pytest plugin for benchmarks/scale_check.py: per rung module, wall time and GPU peaks, written as JSON.

Loaded with `-p scale_probe` (benchmarks/ on PYTHONPATH) and `SCALE_PROBE_OUT=<file.json>`. A rung starts at the
setup of its module's first item and ends at the next module's first setup (or the session's end); for each it
records wall seconds, torch.cuda.max_memory_allocated / max_memory_reserved (peak stats reset at every rung start)
and the largest nvidia-smi memory.used seen by a 0.1 s sampling thread during the rung.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak = max([self.peak] + [int(v) for v in out.split() if v.strip().isdigit()])
            except (OSError, subprocess.SubprocessError):
                return
            self.stop.wait(0.1)


class ScaleProbe:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.module: str | None = None
        self.started = 0.0
        self.sampler: _Sampler | None = None

    def _close(self) -> None:
        if self.module is None:
            return
        import torch

        row = {"module": self.module, "wall_s": round(time.perf_counter() - self.started, 2)}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            row["allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
            row["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
        if self.sampler is not None:
            self.sampler.stop.set()
            self.sampler.join()
            row["nvidia_smi_mib"] = self.sampler.peak
        self.rows.append(row)
        self.module = None

    def _open(self, module: str) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.module, self.started = module, time.perf_counter()
        self.sampler = _Sampler()
        self.sampler.start()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        module = item.nodeid.split("::")[0]
        if module != self.module:
            self._close()
            self._open(module)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._close()
        out = os.environ.get("SCALE_PROBE_OUT")
        if out:
            Path(out).write_text(json.dumps(self.rows, indent=1))


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ScaleProbe(), "scale-probe")
