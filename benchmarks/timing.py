"""Timing for the benchmarks: the fastest of several runs, with the GPU synchronised around each one."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[Any, float]:
    """The result of fn and its fastest wall time over `repeat` runs (robust to a busy machine)."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best
