"""Explicit storage descriptions of artifacts: what a compressed model must store, byte by byte (gate 1).

An `Artifact` is a list of `TensorStorage` parts. Each part is either a tensor at a stored dtype (bytes =
numel × itemsize) or packed k-bit codes (bytes = ceil(numel · k / 8), one packing per part). Everything a deployed
model needs is a part: weights, packed codes, scales, zero points, bases, factors, cores, indices, codebooks, outlier
values and their indices, sign vectors, metadata. `global_delta_bytes(compressed, dense)` is then one subtraction;
rungs describe artifacts with the helpers below and never count bytes by hand.

The helpers only need shapes and dtypes (no tensor data), so meta tensors and closed-form prefilters work alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from typing import Any

import torch

KINDS = (
    "weight",  # a dense tensor kept as is
    "codes",  # packed low-bit integer codes
    "scales",  # quantization scales
    "zero_points",  # quantization zero points / offsets
    "basis",  # a (shared) basis, e.g. a task's rank-r input basis
    "factor",  # low-rank or Tucker factor matrices
    "core",  # a Tucker core
    "indices",  # any integer index table (outlier positions, routes, permutations)
    "mask",  # which entries are kept (a pruning mask, usually one bit per entry)
    "codebook",  # vector-quantization codebooks
    "outlier_values",  # values kept at high precision next to low-bit codes
    "outlier_indices",  # where those values go
    "signs",  # sign vectors (e.g. the Rademacher diagonal of an SRHT)
    "metadata",  # anything else that must ship (shapes, per-channel flags...)
)

DtypeLike = torch.dtype | str


def as_dtype(dtype: DtypeLike) -> torch.dtype:
    """A torch dtype from a dtype or its name ("bfloat16", "torch.float16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        found = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return found
    raise ValueError(f"unknown dtype {dtype!r}: use a torch dtype or its name, e.g. 'bfloat16', 'float16', 'int8'")


def index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype that stores indices 0..n-1 (uint8, int16, int32, int64)."""
    if n <= 0:
        raise ValueError(f"index_dtype: n must be positive, got {n}")
    for dtype, limit in ((torch.uint8, 1 << 8), (torch.int16, 1 << 15), (torch.int32, 1 << 31)):
        if n <= limit:
            return dtype
    return torch.int64


@dataclass(frozen=True)
class TensorStorage:
    """One stored tensor: `shape` at `dtype` (numel × itemsize bytes) or packed `bits`-bit codes (⌈numel·bits/8⌉)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None = None
    bits: int | None = None
    kind: str = "weight"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"storage part {self.name!r}: negative size in shape {self.shape}")
        if (self.dtype is None) == (self.bits is None):
            raise ValueError(
                f"storage part {self.name!r}: give exactly one of dtype= (a stored tensor) or bits= (packed codes)"
            )
        if self.dtype is not None:
            object.__setattr__(self, "dtype", as_dtype(self.dtype))
        elif isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 64:
            raise ValueError(f"storage part {self.name!r}: bits must be an int in 1..64, got {self.bits!r}")
        if self.kind not in KINDS:
            raise ValueError(f"storage part {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.bits is not None:
            return -(-self.numel * self.bits // 8)
        return self.numel * self.dtype.itemsize

    def to_dict(self) -> dict:
        stored = {"bits": self.bits} if self.bits is not None else {"dtype": str(self.dtype).removeprefix("torch.")}
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), **stored, "nbytes": self.nbytes}


@dataclass(frozen=True)
class Artifact:
    """Everything one (compressed or dense) model piece stores; `nbytes` is the sum over its parts."""

    parts: tuple[TensorStorage, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        for part in parts:
            if not isinstance(part, TensorStorage):
                raise TypeError(f"Artifact parts must be TensorStorage, got {type(part).__name__}")
        names = [p.name for p in parts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Artifact: part names must be unique (qualify them, e.g. 'layer3.up.codes'): {duplicates}"
            )
        object.__setattr__(self, "parts", parts)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __add__(self, other: Artifact) -> Artifact:
        return Artifact(self.parts + other.parts)

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per storage kind (weights, codes, scales...), for the budget table."""
        out: dict[str, int] = {}
        for part in self.parts:
            out[part.kind] = out.get(part.kind, 0) + part.nbytes
        return out

    def to_dict(self) -> dict:
        return {"nbytes": self.nbytes, "by_kind": self.bytes_by_kind(), "parts": [p.to_dict() for p in self.parts]}


def combine(artifacts: Iterable[Artifact]) -> Artifact:
    """One artifact holding the parts of all `artifacts` (names must stay unique)."""
    parts: list[TensorStorage] = []
    for artifact in artifacts:
        parts.extend(artifact.parts)
    return Artifact(tuple(parts))


def global_delta_bytes(compressed: Artifact, dense: Artifact) -> int:
    """Gate 1: bytes the compressed artifact stores minus the dense original's bytes at its stored dtype (< 0 saves)."""
    return compressed.nbytes - dense.nbytes


@dataclass(frozen=True)
class DeclaredBytes:
    """Gate 1 of a compressor of any kind: the bytes its storage() declares minus the dense original's (< 0 saves),
    both artifacts."""

    delta: int
    compressed: Artifact
    dense: Artifact

    @property
    def fraction(self) -> float:
        """compressed / dense bytes (the share of the dense bytes the method stores)."""
        return self.compressed.nbytes / self.dense.nbytes


def declared_bytes(compressor: Any, dense: Artifact, *shapes: Any) -> DeclaredBytes:
    """`global_delta_bytes` of `compressor.storage(*shapes)` against `dense`; a storage() that returns anything but
    an Artifact is a TypeError saying what to return."""
    compressed = compressor.storage(*shapes)
    if not isinstance(compressed, Artifact):
        raise TypeError(f"{type(compressor).__name__}.storage() must return a pytest_ladder.measure.storage.Artifact, "
                        f"got {type(compressed).__name__}: describe every stored part with TensorStorage")
    return DeclaredBytes(global_delta_bytes(compressed, dense), compressed, dense)


def dense_artifact(name: str, shape: Sequence[int], dtype: DtypeLike, *, kind: str = "weight") -> Artifact:
    """One tensor kept as is at `dtype`."""
    return Artifact((TensorStorage(name, tuple(shape), dtype=dtype, kind=kind),))


def tensors_artifact(tensors: Mapping[str, torch.Tensor]) -> Artifact:
    """Dense artifact of named tensors at their own dtype (shapes and dtypes only: meta tensors are fine).

    Pass `dict(model.named_parameters())` (shared/tied weights appear once), not a state_dict that repeats them.
    """
    return Artifact(tuple(TensorStorage(name, tuple(t.shape), dtype=t.dtype) for name, t in tensors.items()))


def lowrank_artifact(name: str, shape: Sequence[int], rank: int, dtype: DtypeLike) -> Artifact:
    """Rank-r factorisation W ≈ A B of an (out, in) matrix: A (out, r) and B (r, in) at `dtype`."""
    out_features, in_features = _matrix_shape(name, shape)
    _check_rank(name, rank, min(out_features, in_features))
    return Artifact((
        TensorStorage(f"{name}.a", (out_features, rank), dtype=dtype, kind="factor"),
        TensorStorage(f"{name}.b", (rank, in_features), dtype=dtype, kind="factor"),
    ))


def tucker_artifact(name: str, dims: Sequence[int], ranks: Sequence[int], dtype: DtypeLike) -> Artifact:
    """Tucker decomposition of a tensor of shape `dims`: core (ranks) plus one (dims[k], ranks[k]) factor per mode."""
    if len(dims) != len(ranks):
        raise ValueError(f"tucker_artifact {name!r}: {len(dims)} dims but {len(ranks)} ranks; give one rank per mode")
    for mode, (n, r) in enumerate(zip(dims, ranks)):
        _check_rank(f"{name} mode {mode}", r, n)
    parts = [TensorStorage(f"{name}.core", tuple(ranks), dtype=dtype, kind="core")]
    parts += [
        TensorStorage(f"{name}.factor{mode}", (n, r), dtype=dtype, kind="factor")
        for mode, (n, r) in enumerate(zip(dims, ranks))
    ]
    return Artifact(tuple(parts))


def codebook_artifact(name: str, n_vectors: int, codebook_size: int, dim: int, dtype: DtypeLike) -> Artifact:
    """Vector quantization: a (codebook_size, dim) codebook at `dtype` plus one ⌈log2 K⌉-bit packed index per vector."""
    if codebook_size < 1 or n_vectors < 0 or dim < 1:
        raise ValueError(f"codebook_artifact {name!r}: need codebook_size >= 1, dim >= 1, n_vectors >= 0")
    index_bits = max((codebook_size - 1).bit_length(), 1)
    return Artifact((
        TensorStorage(f"{name}.codebook", (codebook_size, dim), dtype=dtype, kind="codebook"),
        TensorStorage(f"{name}.indices", (n_vectors,), bits=index_bits, kind="indices"),
    ))


def quantized_artifact(
    name: str,
    shape: Sequence[int],
    *,
    bits: int,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int | None = None,
    symmetric: bool = True,
    scale_dtype: DtypeLike = torch.float16,
    outliers: int = 0,
    outlier_dtype: DtypeLike = torch.float16,
) -> Artifact:
    """A quantized tensor: packed codes, scales, zero points (asymmetric), top-K outliers per last-dim row.

    Scales: 1 (granularity "tensor"), shape[axis] ("channel"), numel / group_size ("group", groups of consecutive
    elements along the last dim). Asymmetric quantization stores one zero point (offset) per scale at `scale_dtype`.
    Outliers: K values per row of the last dim at `outlier_dtype` plus their column indices at `index_dtype`.
    """
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    n_scales = n_scales_for(name, shape, granularity, axis, group_size)
    parts = [
        TensorStorage(f"{name}.codes", shape, bits=bits, kind="codes"),
        TensorStorage(f"{name}.scales", (n_scales,), dtype=scale_dtype, kind="scales"),
    ]
    if not symmetric:
        parts.append(TensorStorage(f"{name}.zero_points", (n_scales,), dtype=scale_dtype, kind="zero_points"))
    if outliers:
        if not shape or not 0 < outliers <= shape[-1]:
            raise ValueError(f"quantized_artifact {name!r}: outliers={outliers} must lie in 1..{shape[-1:]} (last dim)")
        rows = numel // shape[-1]
        parts += [
            TensorStorage(f"{name}.outlier_values", (rows, outliers), dtype=outlier_dtype, kind="outlier_values"),
            TensorStorage(
                f"{name}.outlier_indices", (rows, outliers), dtype=index_dtype(shape[-1]), kind="outlier_indices"
            ),
        ]
    return Artifact(tuple(parts))


def n_scales_for(name: str, shape: tuple[int, ...], granularity: str, axis: int, group_size: int | None) -> int:
    """How many scales a quantizer of `granularity` keeps for a tensor of `shape` (see `quantized_artifact`)."""
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        if not shape or not -len(shape) <= axis < len(shape):
            raise ValueError(f"{name!r}: channel axis {axis} out of range for shape {shape}")
        return shape[axis]
    if granularity == "group":
        if not group_size or not shape or shape[-1] % group_size:
            raise ValueError(
                f"{name!r}: group quantization needs group_size dividing the last dim {shape[-1:]}, got {group_size}"
            )
        return math.prod(shape) // group_size
    raise ValueError(f"{name!r}: unknown granularity {granularity!r}; use 'tensor', 'channel' or 'group'")


def _matrix_shape(name: str, shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{name!r}: expected an (out, in) matrix shape, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_rank(name: str, rank: int, limit: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= limit:
        raise ValueError(f"{name!r}: rank must be an int in 0..{limit}, got {rank!r}")
