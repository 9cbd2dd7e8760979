"""A pytest plugin that says what holds the GPU at each test's memory peak: CUDA allocations by the code that made them.

Loaded with `-p peak_trace` (benchmarks/ on PYTHONPATH) and `PEAK_TRACE_OUT=<file.json>`; `PEAK_TRACE_GIB=<g>` (default
0) reports only items whose allocated peak exceeds g GiB. Each item runs under torch's CUDA allocator history
(`torch.cuda.memory._record_memory_history`, Python stacks). At its end the recorded allocations and frees are replayed:
at the moment the item's own allocations peaked, the blocks still live are grouped by the innermost frame of this
project (pytest_ladder/ or rungs/) that made them, largest first. Allocations made before the item (the weights) are
the base; the peak is base + the item's own. Written to the file after every reported item, and a summary per item
to stderr.

    PYTHONPATH=benchmarks:. PEAK_TRACE_OUT=peaks.json PEAK_TRACE_GIB=16.9 \
        pytest rungs/test_g3.py -p peak_trace --ladder-device cuda --ladder-model DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

OWN = ("/pytest_ladder/", "/rungs/")


def _where(frames: list[dict]) -> str:
    """The innermost project frame of an allocation's stack, and the innermost frame overall when that is elsewhere."""
    own = next((f for f in frames if any(part in f["filename"] for part in OWN)), None)
    inner = frames[0] if frames else None
    if own is None:
        return f"{inner['filename']}:{inner['line']} {inner['name']}" if inner else "?"
    text = f"{own['filename'].split('/')[-2]}/{own['filename'].split('/')[-1]}:{own['line']} {own['name']}"
    if inner is not None and inner is not own:
        text += f" <- {inner['name']}"
    return text


def live_at_peak(events: list[dict]) -> tuple[int, dict[str, int]]:
    """Replay allocator events: the largest sum of live bytes allocated during the trace, and those live blocks then,
    bytes per allocating place."""
    live: dict[int, tuple[int, list]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, list]] = {}
    for event in events:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, event.get("frames", []))
            total += size
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action == "free_completed" and addr in live:
            total -= live.pop(addr)[0]
    groups: dict[str, int] = {}
    for size, frames in at_peak.values():
        key = _where(frames)
        groups[key] = groups.get(key, 0) + size
    return peak, dict(sorted(groups.items(), key=lambda kv: -kv[1]))


class PeakTrace:
    def __init__(self, out: Path, threshold_gib: float) -> None:
        self.out, self.threshold = out, threshold_gib
        self.rows: list[dict] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python",
                                                 max_entries=2_000_000)
        try:
            yield
        finally:
            torch.cuda.synchronize()
            peak_stat = torch.cuda.max_memory_allocated()
            reserved = torch.cuda.max_memory_reserved()
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            if peak_stat / 1024**3 >= self.threshold:
                events = snapshot["device_traces"][torch.cuda.current_device()]
                own_peak, groups = live_at_peak(events)
                row = {"item": item.nodeid, "base_gib": round(base / 1024**3, 3),
                       "peak_allocated_gib": round(peak_stat / 1024**3, 3),
                       "peak_reserved_gib": round(reserved / 1024**3, 3),
                       "replayed_peak_over_base_gib": round(own_peak / 1024**3, 3), "events": len(events),
                       "live_at_peak_mib": {k: round(v / 2**20, 1) for k, v in list(groups.items())[:25]}}
                self.rows.append(row)
                self.out.write_text(json.dumps(self.rows, indent=1))
                print(f"\n[peak] {item.nodeid}: {row['peak_allocated_gib']} GiB allocated (base "
                      f"{row['base_gib']}, +{row['replayed_peak_over_base_gib']} replayed)", file=sys.stderr)
                for key, mib in list(row["live_at_peak_mib"].items())[:8]:
                    print(f"[peak]   {mib:9.1f} MiB  {key}", file=sys.stderr)


def pytest_configure(config: pytest.Config) -> None:
    out = os.environ.get("PEAK_TRACE_OUT")
    if out:
        config.pluginmanager.register(PeakTrace(Path(out), float(os.environ.get("PEAK_TRACE_GIB", "0"))),
                                      "peak-trace")
