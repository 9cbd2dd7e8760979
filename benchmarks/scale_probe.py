"""A pytest plugin for benchmarks/scale_check.py: per rung module, wall time and GPU peaks, written as JSON.

Loaded with `-p scale_probe` (benchmarks/ on PYTHONPATH) and `SCALE_PROBE_OUT=<file.json>`. A rung starts at the
setup of its module's first item and ends at the next module's first setup (or the session's end); for each it
records wall seconds, torch.cuda.max_memory_allocated / max_memory_reserved (peak stats reset at every item, the
rung's peak is the largest of its items') and the largest nvidia-smi memory.used seen by a 0.1 s sampling thread
during the rung; per item, its wall seconds and peaks. The file is rewritten after every rung (a session stopped by a
deadline keeps the rungs it finished) and a line per rung goes to stderr. Beside it, `<file>.stamps.json` keeps the
wall-clock times (time.time()) the session was configured, its first rung started, its last rung ended and it was
unconfigured: what the session spent outside the rungs (collection, the model's load, the last archive).

With `SCALE_PROBE_PEAKS=1` CUDA's allocator records every allocation with its Python stack (torch.cuda.memory's
memory history; it slows the run) and each item's line in the JSON gains `peak_parts`: what was allocated at the
moment of the item's allocated peak, grouped by the innermost pytest_ladder (or rungs/) frame that asked for it,
largest first, with what was already allocated when the item started (the weights and what earlier items kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _live_cuda_tensors(top: int = 6) -> list[str]:
    """The largest CUDA tensors alive that are no module's parameter or buffer: what a rung left on the GPU."""
    import gc

    import torch

    owned, found = set(), {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.nn.Module):
                owned.update(t.data_ptr() for t in obj.parameters(recurse=False))
                owned.update(t.data_ptr() for t in obj.buffers(recurse=False))
            elif isinstance(obj, torch.Tensor) and obj.is_cuda and not obj.is_meta:
                found[obj.data_ptr()] = obj
        except Exception:
            continue
    loose = sorted((t for p, t in found.items() if p not in owned), key=lambda t: -t.untyped_storage().nbytes())
    return [f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} {t.untyped_storage().nbytes() / 2**20:.0f} MiB"
            for t in loose[:top]]


def _peak_parts(before: int, top: int = 8) -> list[str]:
    """What was allocated at the recorded history's allocated peak, grouped by the innermost project frame."""
    import torch

    traces = torch.cuda.memory._snapshot().get("device_traces", [[]])
    events = traces[torch.cuda.current_device()] if traces else []
    live: dict[int, int] = {}
    total = peak = peak_at = 0
    for i, event in enumerate(events):
        if event["action"] == "alloc":
            live[event["addr"]] = event["size"]
            total += event["size"]
            if total > peak:
                peak, peak_at = total, i + 1
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])
    where: dict[int, tuple[int, str]] = {}
    for event in events[:peak_at]:
        if event["action"] == "alloc":
            frames = [f for f in event.get("frames", []) if "pytest_ladder" in f["filename"] or "/rungs/" in
                      f["filename"]]
            site = f"{frames[0]['filename'].rsplit('/', 2)[-1]}:{frames[0]['line']} {frames[0]['name']}" \
                if frames else "(outside the project)"
            where[event["addr"]] = (event["size"], site)
        elif event["action"] == "free_completed":
            where.pop(event["addr"], None)
    groups: dict[str, list[int]] = {}
    for size, site in where.values():
        groups.setdefault(site, []).append(size)
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [f"before the item {before / 2**30:.2f} GiB"] + [
        f"{sum(sizes) / 2**20:.0f} MiB in {len(sizes)} at {site}" for site, sizes in ranked]


class ScaleProbe:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.module: str | None = None
        self.started = 0.0
        self.sampler: _Sampler | None = None
        self.items: list[dict] = []
        self.item_started = 0.0
        self.stamps: dict[str, float] = {"configure": time.time()}

    def stamp(self, name: str, *, first: bool = False) -> None:
        if not (first and name in self.stamps):
            self.stamps[name] = time.time()
        if os.environ.get("SCALE_PROBE_OUT"):
            Path(os.environ["SCALE_PROBE_OUT"] + ".stamps.json").write_text(json.dumps(self.stamps, indent=1))

    def _close(self) -> None:
        if self.module is None:
            return
        import torch

        row = {"module": self.module, "wall_s": round(time.perf_counter() - self.started, 2)}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            row["allocated_gib"] = max([torch.cuda.max_memory_allocated() / 1024**3] +
                                       [i["allocated_gib"] for i in self.items])
            row["reserved_gib"] = max([torch.cuda.max_memory_reserved() / 1024**3] +
                                      [i["reserved_gib"] for i in self.items])
            row["allocated_gib"], row["reserved_gib"] = round(row["allocated_gib"], 2), round(row["reserved_gib"], 2)
        row["items"] = self.items
        self.items = []
        if torch.cuda.is_available():
            row["live_gib"] = round(torch.cuda.memory_allocated() / 1024**3, 2)
            row["live_tensors"] = _live_cuda_tensors()
        if self.sampler is not None:
            self.sampler.stop.set()
            self.sampler.join()
            row["nvidia_smi_mib"] = self.sampler.peak
        self.rows.append(row)
        self.module = None
        self.stamp("last_rung_end")
        if os.environ.get("SCALE_PROBE_OUT"):
            Path(os.environ["SCALE_PROBE_OUT"]).write_text(json.dumps(self.rows, indent=1))
        slow = sorted(row["items"], key=lambda i: -i["wall_s"])[:3]
        print(f"[scale_probe] {row['module']}: {row['wall_s']} s, peak {row.get('allocated_gib')} / "
              f"{row.get('reserved_gib')} GiB, nvidia-smi {row.get('nvidia_smi_mib')} MiB, left allocated "
              f"{row.get('live_gib')} GiB {row.get('live_tensors')}; slowest: " +
              ", ".join(f"{i['item']} {i['wall_s']} s {i.get('allocated_gib')} GiB" for i in slow),
              file=sys.__stderr__, flush=True)

    def _open(self, module: str) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.module, self.started = module, time.perf_counter()
        self.stamp("first_rung", first=True)
        self.sampler = _Sampler()
        self.sampler.start()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        module = item.nodeid.split("::")[0]
        if module != self.module:
            self._close()
            self._open(module)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        import torch

        peaks = torch.cuda.is_available() and os.environ.get("SCALE_PROBE_PEAKS") == "1"
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if peaks:
            torch.cuda.memory._record_memory_history(enabled=None)  # a fresh history per item
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
            before = torch.cuda.memory_allocated()
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            entry = {"item": item.nodeid.split("::")[-1], "wall_s": round(time.perf_counter() - started, 2)}
            if torch.cuda.is_available():
                entry["allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
                entry["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
            if peaks:
                entry["peak_parts"] = _peak_parts(before)
                torch.cuda.memory._record_memory_history(enabled=None)
                print(f"[scale_probe] {item.nodeid}: {entry['allocated_gib']} / {entry['reserved_gib']} GiB; "
                      + "; ".join(entry["peak_parts"]), file=sys.__stderr__, flush=True)
            self.items.append(entry)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._close()
        out = os.environ.get("SCALE_PROBE_OUT")
        if out:
            Path(out).write_text(json.dumps(self.rows, indent=1))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.stamp("unconfigure")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ScaleProbe(), "scale-probe")
