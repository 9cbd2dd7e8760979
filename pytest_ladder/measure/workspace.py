"""The GPU working set a run may use beyond the model's weights (`--ladder-gpu-workspace`).

GPU memory is a budget the user sets: weights on the GPU (all of them, or the `--ladder-max-memory` cap) plus this
workspace. Probes keep large intermediate results (expert stacks, per-expert Grams) on the CPU when the budget is
bounded and compute on the GPU in chunks over experts (or tokens) whose working set fits the workspace. Chunking
changes only the order of independent per-expert products, so values agree with the unchunked computation to float64
rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_WORKSPACE = 4 * 1024**3


@dataclass(frozen=True)
class Workspace:
    """Where probes compute (`device`) and how many bytes of it they may use at once (`limit`; None: unbounded,
    results stay where they are computed). A limit bounds a CPU run's working set the same way."""

    device: torch.device
    limit: int | None = None

    @classmethod
    def on(cls, device: torch.device | str, limit: int | None) -> "Workspace":
        return cls(torch.device(device), limit)

    @property
    def bounded(self) -> bool:
        return self.limit is not None

    def chunk(self, n_items: int, item_bytes: int, *, share: float = 0.5) -> int:
        """How many of `n_items` items of `item_bytes` (all the memory one item's computation holds) fit in
        `share` of the workspace at once: at least 1, at most n_items."""
        if not self.bounded or n_items <= 1:
            return max(1, n_items)
        return max(1, min(n_items, math.floor(self.limit * share / max(1, item_bytes))))

    @property
    def home(self) -> torch.device:
        """Where `store` keeps results: the CPU when the budget is bounded, else the device."""
        return torch.device("cpu") if self.bounded else self.device

    def store(self, tensor: torch.Tensor) -> torch.Tensor:
        """Where a kept result lives: on the CPU when the budget is bounded (it is moved in chunks when used),
        else where it was computed."""
        return tensor.to("cpu") if self.bounded else tensor

    def accumulate(self, total: torch.Tensor | None, part: torch.Tensor, *, share: float = 1 / 8) -> torch.Tensor:
        """`total + part` kept at `home`, added into `total`. With no total yet `part` becomes it (moved home, or kept
        as it is when it is at home and contiguous: the caller hands over a part it no longer uses).

        A CPU total of parts computed on the GPU is page-locked, and each sum is taken on the GPU a block of rows at a
        time (`share` of the workspace): moving the total both ways from pinned memory costs a fraction of copying the
        part into pageable memory and adding on the CPU (G10.5's normal equations: 5.7 GB per fold). IEEE addition
        rounds the same on either device, so the sum is bit for bit the CPU's."""
        home = self.home
        if total is None:
            if part.device.type == home.type and home.index in (None, part.device.index):
                return part.contiguous()
            kept = torch.empty(part.shape, dtype=part.dtype, pin_memory=part.is_cuda and home.type == "cpu")
            kept.copy_(part)
            return kept
        if total.device == part.device or part.device.type != "cuda":
            total += part.to(total.device)
            return total
        for span in self.spans(total.shape[0], total[0].numel() * total.element_size(), share=share):
            block = total[span].to(part.device, non_blocking=True)
            block += part[span]
            total[span].copy_(block, non_blocking=True)
        torch.cuda.current_stream(part.device).synchronize()  # the CPU total is read as soon as this returns
        return total

    def spans(self, n_items: int, item_bytes: int, *, share: float = 0.5) -> list[slice]:
        """Consecutive slices of 0..n_items whose items fit `share` of the workspace (see `chunk`)."""
        size = self.chunk(n_items, item_bytes, share=share)
        return [slice(start, min(n_items, start + size)) for start in range(0, n_items, size)]


def to_f64(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`x` in float64 on `device`, converted there. A CPU tensor crosses in its own dtype (a bf16 expert matrix moves
    a quarter of its float64 bytes), asynchronously when it is page-locked: torch's `x.to(device, float64)` would
    convert on the CPU first and copy four times the bytes from pageable memory. Conversions to float64 are exact,
    so the value is the same either way."""
    device = torch.device(device)
    if x.device != device and x.device.type == "cpu":
        x = x.to(device, non_blocking=x.is_pinned())
    return x.to(device=device, dtype=torch.float64)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> int:
    """Bytes of a tensor of `shape` and `dtype`."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


__all__ = ["Workspace", "DEFAULT_WORKSPACE", "nbytes", "to_f64"]
