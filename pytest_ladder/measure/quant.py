"""Integer quantizers INT8/INT4/INT2/INT1: symmetric or asymmetric, per-tensor, per-channel or per-group scales,
optional top-K outliers per row, calibrated scales, fake-quant round trips and packed storage accounting.

Levels (b bits):
- symmetric, b ≥ 2: codes in [−(2^(b−1) − 1), 2^(b−1) − 1], scale s = max|x| / (2^(b−1) − 1), x̂ = s·code;
- symmetric, b = 1 (INT1): x̂ = s·sign(x) (sign(0) = +1) with s = mean|x| over the scale's group, the L2-optimal
  scale for fixed signs;
- asymmetric: codes in [0, 2^b − 1], zero point z = min(x) stored as a float offset, s = (max − z)/(2^b − 1),
  x̂ = z + s·code.
Scales (and zero points) are stored at `scale_dtype`; they are rounded *up* (zero points down) to that dtype before
use, so the stored values are the ones applied and the range never clips: |x − x̂| ≤ s/2 for every element inside the
calibrated range (b ≥ 2). Granularity: "tensor" (one scale), "channel" (one per index along `axis`: axis 0 = per
output row of a weight, axis −1 = per channel of token-major activations), "group" (consecutive `group_size`
elements along the last dim). Outliers: the K largest-|x| entries of every last-dim row are taken out before the
scales are computed and put back at `outlier_dtype` after dequantization.

Calibration (G10): `calibrate(x_calibration, spec)` gives `QuantParams` that `quantize(x_eval, spec, params)`
applies to other data; values outside the calibrated range saturate at the extreme codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytest_ladder.measure.rng import Seed, cpu_generator
from pytest_ladder.measure.storage import Artifact, as_dtype, quantized_artifact

F64 = torch.float64
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize: bits, symmetric or not, scale granularity, scale dtype, outliers per row."""

    bits: int
    symmetric: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None
    scale_dtype: torch.dtype = torch.float16
    outliers: int = 0
    outlier_dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ValueError(f"QuantSpec: bits must be an int in 1..16 (8, 4, 2, 1 for the ladder), got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"QuantSpec: granularity {self.granularity!r} unknown; use one of {GRANULARITIES}")
        if self.granularity == "group" and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ValueError("QuantSpec: granularity 'group' needs a positive group_size (e.g. 128)")
        if self.outliers < 0:
            raise ValueError(f"QuantSpec: outliers must be >= 0, got {self.outliers}")
        object.__setattr__(self, "scale_dtype", as_dtype(self.scale_dtype))
        object.__setattr__(self, "outlier_dtype", as_dtype(self.outlier_dtype))

    @property
    def qmax(self) -> int:
        """Largest code: 2^(b−1) − 1 (symmetric; 1 for INT1 signs) or 2^b − 1 (asymmetric)."""
        if self.symmetric:
            return max(2 ** (self.bits - 1) - 1, 1)
        return 2**self.bits - 1

    def artifact(self, name: str, shape: tuple[int, ...]) -> Artifact:
        """What a tensor of `shape` quantized this way stores (packed codes, scales, zero points, outliers)."""
        return quantized_artifact(
            name, shape, bits=self.bits, granularity=self.granularity, axis=self.axis, group_size=self.group_size,
            symmetric=self.symmetric, scale_dtype=self.scale_dtype, outliers=self.outliers,
            outlier_dtype=self.outlier_dtype,
        )


@dataclass(frozen=True)
class QuantParams:
    """Scales (and asymmetric zero points) in the grouped view of the tensor, float64, broadcastable."""

    scale: torch.Tensor
    zero: torch.Tensor | None = None


@dataclass(frozen=True)
class Quantized:
    """Integer codes (unpacked, for computation; storage counts them packed), params and extracted outliers."""

    codes: torch.Tensor
    params: QuantParams
    spec: QuantSpec
    shape: tuple[int, ...]
    outlier_index: torch.Tensor | None = None  # (rows, K) positions along the last dim
    outlier_values: torch.Tensor | None = None  # (rows, K) at spec.outlier_dtype

    def dequantize(self) -> torch.Tensor:
        """x̂ in float64 (outliers restored at their stored precision)."""
        codes = self.codes.to(F64)
        values = codes * self.params.scale
        if self.params.zero is not None:
            values = values + self.params.zero
        values = values.reshape(self.shape)
        if self.outlier_index is not None:
            rows = values.reshape(-1, self.shape[-1]).clone()
            rows.scatter_(1, self.outlier_index, self.outlier_values.to(F64))
            values = rows.reshape(self.shape)
        return values

    def artifact(self, name: str) -> Artifact:
        return self.spec.artifact(name, self.shape)


def _grouped(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A view of x in which each scale covers the reduced dims, and those dims."""
    if x.dim() == 0:
        raise ValueError("quantize: expected a tensor with at least one dim")
    if spec.granularity == "tensor":
        return x, tuple(range(x.dim()))
    if spec.granularity == "channel":
        axis = spec.axis % x.dim() if -x.dim() <= spec.axis < x.dim() else None
        if axis is None:
            raise ValueError(f"quantize: channel axis {spec.axis} out of range for a tensor of shape {tuple(x.shape)}")
        return x, tuple(d for d in range(x.dim()) if d != axis)
    if x.shape[-1] % spec.group_size:
        raise ValueError(
            f"quantize: group_size {spec.group_size} does not divide the last dim of shape {tuple(x.shape)}; "
            "pick a group size that divides it"
        )
    return x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size), (x.dim(),)


def _round_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A value representable in `dtype` that is ≥ `values`, at most two steps above (subnormals included), float64."""
    info = torch.finfo(dtype)
    nearest = values.to(dtype).to(F64)
    if not torch.isfinite(nearest).all():
        raise ValueError(
            f"quantization scales or zero points overflow {dtype} (|value| > {info.max:g}): use QuantSpec("
            "scale_dtype=torch.bfloat16) or torch.float32, or take the outliers aside with QuantSpec(outliers=K)"
        )
    exponent = torch.floor(torch.log2(nearest.abs()))
    step = torch.clamp(torch.exp2(exponent) * info.eps, min=info.tiny * info.eps)
    return torch.where(nearest >= values, nearest, nearest + step)


def _round_down(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return -_round_up(-values, dtype)


@dataclass(frozen=True)
class Extent:
    """What scales are fit on, per scale group of x without its outliers, float64: max |x| (`high`, symmetric) or
    min and max (`low`, `high`, asymmetric)."""

    high: torch.Tensor
    low: torch.Tensor | None = None


def extent(x: torch.Tensor, spec: QuantSpec) -> Extent:
    """x's `Extent` under spec (b ≥ 2; INT1's scale is a mean, not an extent)."""
    x = _without_outliers(x.to(F64), spec)[0]
    grouped, dims = _grouped(x, spec)
    if spec.symmetric:
        return Extent(high=grouped.abs().amax(dim=dims, keepdim=True))
    return Extent(high=grouped.amax(dim=dims, keepdim=True), low=grouped.amin(dim=dims, keepdim=True))


def merged(extents: Sequence[Extent]) -> Extent:
    """The extent of several blocks of rows stacked, from theirs, exactly (a max of maxima is the maximum), where
    the blocks share their scale groups: one scale per tensor, or per channel of the last dim (`mergeable`)."""
    high, low = extents[0].high, extents[0].low
    for found in extents[1:]:
        high = torch.maximum(high, found.high)
        low = None if low is None else torch.minimum(low, found.low)
    return Extent(high=high, low=low)


def mergeable(spec: QuantSpec, dims: int) -> bool:
    """Whether blocks of rows of a `dims`-D tensor share their scale groups under spec (see `merged`)."""
    last = spec.granularity == "channel" and spec.axis in (-1, dims - 1)
    return not (spec.symmetric and spec.bits == 1) and (spec.granularity == "tensor" or last)


def params_of(found: Extent, spec: QuantSpec) -> QuantParams:
    """The scales (and zero points) `calibrate` fits on an extent, rounded to the stored scale dtype."""
    if spec.symmetric:
        scale = _round_up(found.high / spec.qmax, spec.scale_dtype)
        return QuantParams(scale=torch.where(scale > 0, scale, torch.ones_like(scale)))
    zero = _round_down(found.low, spec.scale_dtype)
    scale = _round_up((found.high - zero) / spec.qmax, spec.scale_dtype)
    return QuantParams(scale=torch.where(scale > 0, scale, torch.ones_like(scale)), zero=zero)


def calibrate(x: torch.Tensor, spec: QuantSpec) -> QuantParams:
    """Scales (and zero points) from x's range per spec's granularity, rounded to the stored scale dtype."""
    if spec.symmetric and spec.bits == 1:
        # no division by the scale here, so an all-zero group keeps scale 0 and round-trips exactly
        grouped, dims = _grouped(_without_outliers(x.to(F64), spec)[0], spec)
        return QuantParams(scale=grouped.abs().mean(dim=dims, keepdim=True).to(spec.scale_dtype).to(F64))
    return params_of(extent(x, spec), spec)


def quantize(x: torch.Tensor, spec: QuantSpec, params: QuantParams | None = None) -> Quantized:
    """Codes of x under `params` (default: calibrated on x itself); outliers per spec are kept aside first."""
    shape = tuple(x.shape)
    x64, outlier_index, outlier_values = _without_outliers(x.to(F64), spec)
    grouped, _ = _grouped(x64, spec)
    params = _applicable(params if params is not None else calibrate(x, spec), spec, grouped, shape)
    return Quantized(
        codes=_codes(grouped, spec, params).to(torch.int32), params=params, spec=spec, shape=shape,
        outlier_index=outlier_index, outlier_values=outlier_values,
    )


def _codes(grouped: torch.Tensor, spec: QuantSpec, params: QuantParams) -> torch.Tensor:
    """The integer codes of x's grouped view under `params`, as whole numbers in grouped's dtype (INT1: ±1)."""
    if spec.symmetric and spec.bits == 1:
        return torch.where(grouped >= 0, 1, -1)
    if spec.symmetric:
        return torch.round(grouped / params.scale).clamp(-spec.qmax, spec.qmax)
    return torch.round((grouped - params.zero) / params.scale).clamp(0, spec.qmax)


def _applicable(params: QuantParams, spec: QuantSpec, grouped: torch.Tensor, shape: tuple[int, ...]) -> QuantParams:
    """`params` checked against x's grouped view, on its device (a copy to the GPU only where they are elsewhere)."""
    try:
        fits = torch.broadcast_shapes(params.scale.shape, grouped.shape) == grouped.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"quantize: calibrated scales of shape {tuple(params.scale.shape)} do not apply to a tensor of shape "
            f"{shape} ({spec.granularity} granularity): calibrate on data with the same channel layout"
        )
    if (params.zero is None) != spec.symmetric:
        raise ValueError("quantize: asymmetric specs need params with zero points and symmetric ones without")
    if params.scale.device == grouped.device and (params.zero is None or params.zero.device == grouped.device):
        return params
    return QuantParams(
        scale=params.scale.to(grouped.device), zero=None if params.zero is None else params.zero.to(grouped.device)
    )


def fake_quant(x: torch.Tensor, spec: QuantSpec, params: QuantParams | None = None) -> torch.Tensor:
    """Round trip x -> codes -> x̂ (float64): `quantize(x, spec, params).dequantize()`, the same operations without
    the integer codes where no outliers are set aside (the codes are whole numbers, exact in float64)."""
    if spec.outliers or (spec.symmetric and spec.bits == 1):
        return quantize(x, spec, params).dequantize()
    shape = tuple(x.shape)
    grouped, _ = _grouped(x.to(F64), spec)
    params = _applicable(params if params is not None else calibrate(x, spec), spec, grouped, shape)
    values = _codes(grouped, spec, params) * params.scale
    return (values if params.zero is None else values + params.zero).reshape(shape)


def fake_quant_ste(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round trip with a straight-through gradient: forward x̂, backward identity (in x's dtype)."""
    return x + (fake_quant(x.detach(), spec).to(x.dtype) - x).detach()


def scale_factors(shape: Sequence[int], seed: Seed, *, low: float = 0.1, high: float = 10.0) -> torch.Tensor:
    """Independent log-uniform factors in [low, high] of `shape` (float64, CPU), drawn from `seed` in one call."""
    if not 0 < low <= high:
        raise ValueError(f"random_scales: need 0 < low <= high, got {low}, {high}")
    u = torch.rand(tuple(shape), generator=cpu_generator(seed), dtype=F64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def random_scales(params: QuantParams, seed: Seed, *, low: float = 0.1, high: float = 10.0,
                  factors: torch.Tensor | None = None) -> QuantParams:
    """Random-scales trap: each scale multiplied by an independent log-uniform factor in [low, high] (`factors`:
    drawn beforehand by `scale_factors` for a larger stack, this part of them)."""
    if factors is None:
        factors = scale_factors(params.scale.shape, seed, low=low, high=high)
    return QuantParams(scale=params.scale * factors.to(params.scale.device), zero=params.zero)


def _without_outliers(
    x: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x with the top-K |x| entries of each last-dim row set to 0, their positions (rows, K) and stored values."""
    if not spec.outliers:
        return x, None, None
    if spec.outliers > x.shape[-1]:
        raise ValueError(f"quantize: {spec.outliers} outliers per row exceed the row length {x.shape[-1]}")
    rows = x.reshape(-1, x.shape[-1])
    index = rows.abs().topk(spec.outliers, dim=-1).indices
    values = rows.gather(1, index).to(spec.outlier_dtype)
    cleared = rows.scatter(1, index, 0.0)
    return cleared.reshape(x.shape), index, values
