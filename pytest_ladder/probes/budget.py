"""The impact ladder's budget table: bytes per line of a model at its stored dtypes, a target device memory, and each
R rung's byte delta on its line (an impact rung opens with "N GB off line X").

Lines: embeddings, attention, router, experts (routed), norms, head, and — only when present — dense_mlp (dense
layers and shared experts) and other (anything else the checkpoint stores, e.g. buffers). Every tensor falls in
exactly one line (`line_of`), so the lines add up to the checkpoint's bytes. Bytes are counted by
`measure.storage` (numel × itemsize of each stored tensor); GB are decimal (1e9 bytes), as the seeds quote them
(OLMoE-1B-7B: 13.8 GB in bf16). Input is shapes and dtypes only: a checkpoint's headers or a model's parameters,
meta tensors included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch

from pytest_ladder.measure.storage import Artifact, TensorStorage

LINES = ("embeddings", "attention", "router", "experts", "norms", "head")
EXTRA_LINES = ("dense_mlp", "other")  # shown only when the model stores something there
GB = 1e9

_EMBEDDING_PARTS = {"embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "tok_embeddings", "embeddings"}
_HEAD_PARTS = {"lm_head", "embed_out"}
_ATTENTION_PARTS = {"self_attn", "attn", "attention", "self_attention"}
_MOE_PARTS = {"mlp", "block_sparse_moe", "moe", "feed_forward"}


def line_of(name: str) -> str:
    """The budget line of the tensor `name` (checkpoint or parameter name), by Hugging Face naming conventions."""
    parts = name.split(".")
    if any("norm" in part or re.fullmatch(r"ln(_\w+|\d*)", part) for part in parts[:-1]):
        return "norms"
    if any(part in _EMBEDDING_PARTS for part in parts):
        return "embeddings"
    if any(part in _HEAD_PARTS for part in parts) or name == "output.weight":
        return "head"
    if "shared_expert" in name or "shared_experts" in name:
        return "dense_mlp"
    if "experts" in parts:
        return "experts"
    if "router" in parts or any(a in _MOE_PARTS and b == "gate" for a, b in pairwise(parts)):
        return "router"
    if any(part in _ATTENTION_PARTS for part in parts):
        return "attention"
    if any(part in _MOE_PARTS for part in parts):
        return "dense_mlp"
    return "other"


@dataclass(frozen=True)
class BudgetTable:
    """What each line of a model stores (`measure.storage` artifacts) and the target device memory in bytes."""

    lines: dict[str, Artifact]
    target_bytes: int | None = None
    tied_head: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(artifact.nbytes for artifact in self.lines.values())

    def line_bytes(self, line: str) -> int:
        """Bytes of one line (KeyError naming the lines otherwise)."""
        if line not in self.lines:
            raise KeyError(f"budget table: no line {line!r}; lines: {', '.join(self.lines)}")
        return self.lines[line].nbytes

    def dtypes(self, line: str) -> str:
        """The stored dtypes of a line's tensors, e.g. "bfloat16" or "bfloat16+float32"."""
        names = sorted({str(p.dtype).removeprefix("torch.") for p in self.lines[line].parts if p.dtype is not None})
        return "+".join(names)

    def with_target(self, fraction: float) -> BudgetTable:
        """The same table with a target device memory of ceil(fraction · total bytes)."""
        if not 0 < fraction:
            raise ValueError(f"budget table: target fraction must be > 0, got {fraction}")
        return BudgetTable(self.lines, math.ceil(fraction * self.total_bytes), self.tied_head, self.notes)

    def after(self, deltas: Mapping[str, int]) -> int:
        """Total bytes once each line's delta is applied (deltas < 0 save); a delta on a line not here is an error."""
        for line in deltas:
            self.line_bytes(line)
        return self.total_bytes + sum(int(d) for d in deltas.values())

    def rows(self, deltas: Mapping[str, Mapping[str, int]] | None = None) -> list[dict]:
        """Table rows (same keys in every row) for the postmortem: each line, the total and the target device memory;
        per rung in `deltas` ({rung: {line: delta bytes}}) its GB delta and the GB after it, line by line."""
        deltas = dict(deltas or {})
        total = self.total_bytes
        rows: list[dict] = []
        for line, artifact in self.lines.items():
            row = {"line": line + (" (tied to embeddings)" if line == "head" and self.tied_head else ""),
                   "dtype": self.dtypes(line), "bytes": artifact.nbytes, "GB": artifact.nbytes / GB,
                   "share": artifact.nbytes / total if total else 0.0}
            for rung, by_line in deltas.items():
                delta = int(by_line.get(line, 0))
                row[f"{rung} Δ GB"] = delta / GB if line in by_line else ""
                row[f"{rung} after GB"] = (artifact.nbytes + delta) / GB
            rows.append(row)
        total_row = {"line": "total", "dtype": "", "bytes": total, "GB": total / GB, "share": 1.0 if total else 0.0}
        for rung, by_line in deltas.items():
            total_row[f"{rung} Δ GB"] = sum(int(d) for d in by_line.values()) / GB
            total_row[f"{rung} after GB"] = self.after(by_line) / GB
        rows.append(total_row)
        if self.target_bytes is not None:
            target = {"line": "target device memory", "dtype": "", "bytes": self.target_bytes,
                      "GB": self.target_bytes / GB, "share": self.target_bytes / total if total else 0.0}
            for rung, by_line in deltas.items():
                after = self.after(by_line)
                target[f"{rung} Δ GB"] = ""
                target[f"{rung} after GB"] = "fits" if after <= self.target_bytes else \
                    f"over by {(after - self.target_bytes) / GB:.6g} GB"
            rows.append(target)
        return rows


def budget_table(tensors: Mapping[str, tuple[torch.dtype, Sequence[int]]], *, tied_head: bool = False) -> BudgetTable:
    """Bytes per line of the tensors {name: (stored dtype, shape)} (e.g. `Checkpoint.dtype_bytes()`).

    `tied_head`: the output head shares the embedding matrix (config `tie_word_embeddings`); its line then stores
    nothing of its own.
    """
    grouped: dict[str, list[TensorStorage]] = {line: [] for line in LINES + EXTRA_LINES}
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        grouped[line_of(name)].append(TensorStorage(name, tuple(shape), dtype=dtype))
    lines = {line: Artifact(tuple(parts)) for line, parts in grouped.items() if line in LINES or parts}
    return BudgetTable(lines=lines, tied_head=tied_head)


def parameter_shapes(named: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a model's named parameters (pass `dict(model.named_parameters())`: tied weights
    appear once); meta tensors are fine."""
    return {name: (t.dtype, tuple(t.shape)) for name, t in named.items()}
