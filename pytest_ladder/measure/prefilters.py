"""Analytical prefilters (protocol §6.1): kill before any forward pass.

- byte budget in closed form: the byte delta of a rank-r factorisation or a quantized tensor against the dense
  original, through the same storage descriptions the gates use (so closed form and gate cannot disagree);
- spectrum floor: the best relative error any rank-r W' can reach, by Eckart–Young sqrt(Σ_{i>r} σ_i² / Σ σ_i²),
  from the plain spectrum (Frobenius) or the whitened spectrum of W S, S Sᵀ = G (activation-weighted);
- random floor: a Haar-random rank-r input subspace keeps on average r/n of the energy of W (or of W X):
  E‖W(I − P)‖² = (1 − r/n)‖W‖², i.e. residual energy 1 − r/n and rms relative error sqrt(1 − r/n); plus the
  empirical best over seeded draws (a τ floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytest_ladder.measure.errors import activation_error, frobenius_relative_error
from pytest_ladder.measure.lowrank import random_projection
from pytest_ladder.measure.quant import QuantSpec
from pytest_ladder.measure.spectra import residual_energy, whitened_singular_values
from pytest_ladder.measure.storage import DtypeLike, as_dtype, dense_artifact, global_delta_bytes, lowrank_artifact
from pytest_ladder.measure.tau import TauFloor, tau_floor


def lowrank_delta_bytes(
    shape: Sequence[int], rank: int, dtype: DtypeLike, *, dense_dtype: DtypeLike | None = None, count: int = 1
) -> int:
    """Bytes of `count` rank-r factorisations (A, B at `dtype`) minus `count` dense (out, in) matrices at dense_dtype.

    Closed form: count · (r·(out + in)·b_factor − out·in·b_dense).
    """
    dense_dtype = dtype if dense_dtype is None else dense_dtype
    one = global_delta_bytes(lowrank_artifact("w", shape, rank, dtype), dense_artifact("w", shape, dense_dtype))
    return count * one


def break_even_rank(shape: Sequence[int], dtype: DtypeLike, *, dense_dtype: DtypeLike | None = None) -> int:
    """The largest rank whose factors store strictly fewer bytes than the dense matrix (0 if none does)."""
    out_features, in_features = (int(s) for s in shape)
    factor_bytes = as_dtype(dtype).itemsize
    dense_bytes = out_features * in_features * as_dtype(dense_dtype if dense_dtype is not None else dtype).itemsize
    rank = (dense_bytes - 1) // ((out_features + in_features) * factor_bytes)
    return max(min(rank, out_features, in_features), 0)


def quantized_delta_bytes(shape: Sequence[int], spec: QuantSpec, dense_dtype: DtypeLike) -> int:
    """Bytes of the quantized tensor (codes, scales, zero points, outliers) minus the dense tensor at dense_dtype."""
    shape = tuple(int(s) for s in shape)
    return global_delta_bytes(spec.artifact("w", shape), dense_artifact("w", shape, dense_dtype))


def spectrum_floor(sv: torch.Tensor, rank: int) -> torch.Tensor:
    """Eckart–Young: min over rank-r W' of ‖W − W'‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i² / Σ σ_i²), batched."""
    return residual_energy(sv, rank).sqrt()


def activation_spectrum_floor(w: torch.Tensor, gram: torch.Tensor, rank: int) -> torch.Tensor:
    """min over rank-r W' of ‖(W − W')X‖_F / ‖W X‖_F: the Eckart–Young floor of the whitened spectrum σ(W S)."""
    return spectrum_floor(whitened_singular_values(w, gram), rank)


def random_residual_energy(n: int, rank: int) -> float:
    """Expected residual energy of a Haar-random rank-r projection of the n-dim input space: 1 − r/n."""
    if not 0 <= rank <= n:
        raise ValueError(f"random_residual_energy: need 0 <= rank <= n, got rank={rank}, n={n}")
    return 1.0 - rank / n


@dataclass(frozen=True)
class RandomFloor:
    """Closed form (expected residual energy 1 − r/n, rms relative error sqrt(1 − r/n)) and the seeded draws."""

    expected_residual_energy: float
    rms_error: float
    empirical: TauFloor


def random_floor(w: torch.Tensor, rank: int, seeds: Sequence[int], *, gram: torch.Tensor | None = None) -> RandomFloor:
    """Random floor of rank r for W (..., out, in): closed form plus the best relative error over seeded projections.

    With `gram` the error is activation-weighted (pooled over the batch), else Frobenius (mean over the batch).
    """
    def metric(w_prime: torch.Tensor) -> float:
        if gram is not None:
            return activation_error(w, w_prime, gram).pooled
        return float(frobenius_relative_error(w, w_prime).mean())

    expected = random_residual_energy(w.shape[-1], rank)
    empirical = tau_floor(lambda seed: random_projection(w, rank, seed), metric, seeds)
    return RandomFloor(expected_residual_energy=expected, rms_error=expected**0.5, empirical=empirical)

