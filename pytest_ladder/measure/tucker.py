"""HOSVD / Tucker decomposition of stacked weight tensors (G2: layer × expert × hidden ...).

Mode-k unfolding T_(k) is (n_k, Π_{j≠k} n_j) with mode k first and the other modes in their order. Its Gram matrix
T_(k) T_(k)ᵀ is formed by a float64 tensordot over the other modes (no explicit unfolding copy), and its eigh gives
the mode's singular values and leading factor U_k (n_k, r_k). The core is T ×_1 U_1ᵀ … ×_N U_Nᵀ and the
reconstruction core ×_1 U_1 … ×_N U_N. Because each U_k has orthonormal columns, the reconstruction is an orthogonal
projection of T, so the relative residual energy is ‖T − T̂‖² / ‖T‖² = 1 − ‖core‖² / ‖T‖² (checked against the
explicit reconstruction in the tests); `tucker_residual` uses it and never materializes T̂.

`StackedTensor` does the same work on a tensor too large for the device (G2's float64 expert tensor of OLMoE-1B-7B is
17 GB): T (L, d1, d2, d3) stays on the CPU as L slices in the dtype it was read in, and the mode Grams and projection
residuals are computed in float64 on the workspace's device in pieces that fit the workspace (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytest_ladder.measure.spectra import effective_rank, singular_values_from_gram
from pytest_ladder.measure.storage import Artifact, DtypeLike, tucker_artifact
from pytest_ladder.measure.workspace import Workspace

F64 = torch.float64


def unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-k unfolding (n_k, Π_{j≠k} n_j)."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def fold(matrix: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `unfold` for a tensor of `shape`."""
    moved = [shape[mode]] + [n for k, n in enumerate(shape) if k != mode]
    return matrix.reshape(moved).movedim(0, mode)


def mode_gram(t: torch.Tensor, mode: int) -> torch.Tensor:
    """T_(k) T_(k)ᵀ (n_k, n_k) in float64."""
    t = t.to(F64)
    others = [k for k in range(t.dim()) if k != mode]
    return torch.tensordot(t, t, dims=(others, others))


def mode_spectra(t: torch.Tensor) -> list[torch.Tensor]:
    """Singular values of every mode unfolding (float64, descending)."""
    return [singular_values_from_gram(mode_gram(t, mode)) for mode in range(t.dim())]


def mode_effective_ranks(t: torch.Tensor) -> list[float]:
    """r_eff of every mode unfolding (spectral entropy, see spectra)."""
    return [float(effective_rank(sv)) for sv in mode_spectra(t)]


def mode_product(t: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """T ×_k M: contracts mode k of T with the columns of M (m, n_k), putting m in place of n_k."""
    return torch.tensordot(matrix, t, dims=([1], [mode])).movedim(0, mode)


@dataclass(frozen=True)
class Tucker:
    """T ≈ core ×_1 U_1 … ×_N U_N, float64; `norm_sq` is ‖T‖² of the decomposed tensor."""

    core: torch.Tensor
    factors: tuple[torch.Tensor, ...]
    norm_sq: float

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(self.core.shape)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(u.shape[0] for u in self.factors)

    def reconstruct(self) -> torch.Tensor:
        out = self.core
        for mode, u in enumerate(self.factors):
            out = mode_product(out, u, mode)
        return out

    def residual_energy(self) -> float:
        """‖T − T̂‖² / ‖T‖² = 1 − ‖core‖² / ‖T‖² (orthogonal projection; module docstring)."""
        if not self.norm_sq > 0:
            raise ValueError("Tucker.residual_energy: the decomposed tensor is zero")
        return max(1.0 - float(self.core.square().sum()) / self.norm_sq, 0.0)

    def artifact(self, name: str, dtype: DtypeLike) -> Artifact:
        return tucker_artifact(name, self.dims, self.ranks, dtype)


def hosvd(t: torch.Tensor, ranks: Sequence[int]) -> Tucker:
    """Truncated HOSVD: U_k = top-r_k eigenvectors of T_(k) T_(k)ᵀ, core = T ×_k U_kᵀ (float64)."""
    if len(ranks) != t.dim():
        raise ValueError(f"hosvd: a tensor of {t.dim()} modes needs {t.dim()} ranks, got {list(ranks)}")
    t = t.to(F64)
    factors = []
    for mode, rank in enumerate(ranks):
        if not 0 < rank <= t.shape[mode]:
            raise ValueError(f"hosvd: rank {rank} of mode {mode} must lie in 1..{t.shape[mode]}")
        _, eigenvectors = torch.linalg.eigh(mode_gram(t, mode))
        factors.append(eigenvectors.flip(-1)[:, :rank])
    core = t
    for mode, u in enumerate(factors):
        core = mode_product(core, u.mT, mode)
    return Tucker(core=core, factors=tuple(factors), norm_sq=float(t.square().sum()))


def tucker_residual(t: torch.Tensor, ranks: Sequence[int]) -> float:
    """G2: relative residual energy of the rank-(r_1..r_N) HOSVD of T at the budget ranks."""
    return hosvd(t, ranks).residual_energy()


def multilinear_rank(t: torch.Tensor, rtol: float = 1e-6) -> tuple[int, ...]:
    """Numerical rank of every mode unfolding: singular values above rtol · σ_max of that mode.

    σ comes from a float64 Gram eigendecomposition, accurate to about 1e-8 · σ_max, hence the default rtol.
    """
    return tuple(int((sv > rtol * sv[0]).sum()) if sv[0] > 0 else 0 for sv in mode_spectra(t))


class StackedTensor:
    """T (L, d1, d2, d3) as L slices (d1, d2, d3) kept where `workspace` stores results (the CPU when its budget is
    bounded) in the dtype they were read in (exact in float64), with float64 work on `workspace.device` in pieces:

    - mode Grams: those of modes 2 and 3 summed over (layer, d1-chunk) pieces; those of modes 0 and 1 are partial
      traces of the (L·d1)² Gram K of the slices' rows, summed over column chunks;
    - projection onto factors U_0..U_3: per layer Z = U_2ᵀ S U_3 over d1-chunks, Y_l = U_1ᵀ Z, then
      ‖core‖² = Σ over column chunks c of Y (L, r1·r2·r3) of ‖U_0ᵀ Y_c‖², and ‖T‖² = Σ_c ‖T_c‖² over the same chunks
      of T (L, d1·d2·d3); residual = 1 − ‖core‖²/‖T‖² (an orthogonal projection, module docstring). With identity
      factors Y = T bit for bit and both sums run the same chunks in the same order: the residual is exactly 0.

    Chunking reorders sums only: values agree with the unchunked float64 computation to rounding.
    """

    def __init__(self, slices: Sequence[torch.Tensor], workspace: Workspace | None = None) -> None:
        if not slices or any(s.dim() != 3 or s.shape != slices[0].shape for s in slices):
            raise ValueError("StackedTensor: needs one or more slices of one 3-D shape")
        self.workspace = workspace or Workspace.on(slices[0].device, None)
        self.slices = [self._pinned(self.workspace.store(s.contiguous())) for s in slices]
        self.shape = (len(self.slices), *self.slices[0].shape)
        self._grams: list[torch.Tensor] | None = None
        self._norm_sq: torch.Tensor | None = None

    @classmethod
    def of(cls, t: "torch.Tensor | StackedTensor", workspace: Workspace | None = None) -> "StackedTensor":
        """A 4-D tensor as a StackedTensor (its layer slices); a StackedTensor as is."""
        if isinstance(t, StackedTensor):
            return t
        if t.dim() != 4:
            raise ValueError(f"StackedTensor.of: expected a 4-D tensor, got shape {tuple(t.shape)}")
        return cls(list(t.unbind(0)), workspace or Workspace.on(t.device, None))

    def _pinned(self, piece: torch.Tensor) -> torch.Tensor:
        """A CPU slice in page-locked memory when the work runs on CUDA (every pass copies it to the device)."""
        if piece.device.type == "cpu" and self.workspace.device.type == "cuda":
            return piece.pin_memory()
        return piece

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def device(self) -> torch.device:
        return self.workspace.device

    def _on(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=F64)

    def _home(self, numel: int) -> torch.device:
        """Where a float64 result of `numel` values is kept: the device if it fits a quarter of the workspace, else
        where the workspace stores results."""
        fits = not self.workspace.bounded or numel * 8 <= self.workspace.limit // 4
        return self.device if fits else self.workspace.home

    def _rows(self, d1_bytes: int) -> list[slice]:
        return self.workspace.spans(self.shape[1], d1_bytes)

    def mode_grams(self) -> list[torch.Tensor]:
        """T_(k) T_(k)ᵀ of every mode (float64, on the device), computed once."""
        if self._grams is None:
            n_layers, d1, d2, d3 = self.shape
            g2 = torch.zeros(d2, d2, dtype=F64, device=self.device)
            g3 = torch.zeros(d3, d3, dtype=F64, device=self.device)
            for piece in self.slices:
                for rows in self._rows(3 * d2 * d3 * 8):
                    s = self._on(piece[rows])
                    flat = s.reshape(-1, d3)
                    g3 += flat.mT @ flat
                    by_row = s.transpose(0, 1).reshape(d2, -1)
                    g2 += by_row @ by_row.mT
            k = torch.zeros(n_layers * d1, n_layers * d1, dtype=F64, device=self.device)
            flat_slices = [piece.reshape(d1, -1) for piece in self.slices]
            for columns in self.workspace.spans(d2 * d3, 2 * n_layers * d1 * 8):
                block = self._on(torch.cat([f[:, columns] for f in flat_slices]))
                k += block @ block.mT
            k = k.view(n_layers, d1, n_layers, d1)
            g0 = k.diagonal(dim1=1, dim2=3).sum(-1)
            g1 = k.diagonal(dim1=0, dim2=2).sum(-1)
            self._grams = [g0, g1, g2, g3]
        return self._grams

    def mode_spectra(self) -> list[torch.Tensor]:
        """Singular values of every mode unfolding (float64, descending)."""
        return [singular_values_from_gram(g) for g in self.mode_grams()]

    def _chunked_norm_sq(self, rows: Sequence[torch.Tensor], u0: torch.Tensor | None) -> torch.Tensor:
        """Σ over column chunks c of ‖U_0ᵀ X_c‖² (‖X_c‖² without U_0), X the (L, m) matrix whose rows are `rows`."""
        m = rows[0].numel()
        total = torch.zeros((), dtype=F64, device=self.device)
        for columns in self.workspace.spans(m, 3 * len(rows) * 8):
            block = self._on(torch.stack([row.reshape(-1)[columns] for row in rows]))
            if u0 is not None:
                block = u0.mT @ block
            total += block.square().sum()
        return total

    def norm_sq(self) -> torch.Tensor:
        """‖T‖² (float64 0-d tensor on the device), chunked as `projection_residual` chunks ‖core‖²."""
        if self._norm_sq is None:
            self._norm_sq = self._chunked_norm_sq(self.slices, None)
        return self._norm_sq

    def projection_residual(self, factors: Sequence[torch.Tensor]) -> float:
        """‖T − T ×_k U_k U_kᵀ‖² / ‖T‖² for factors U_k (d_k, r_k) with orthonormal columns (any rank 0: T̂ = 0)."""
        return self.projection_residuals([factors])[0]

    def projection_residuals(self, factor_sets: Sequence[Sequence[torch.Tensor]]) -> list[float]:
        """`projection_residual` of every factor set, in one pass over T: each piece of T is moved to the device and
        made float64 once and projected by every set there (G2's HOSVD and its ten τ baselines read the 4.3 GB tensor
        of OLMoE-1B-7B once, not eleven times). Each set's value is the one `projection_residual` gives it alone (the
        same products; only the split of the experts into pieces may differ, which reorders no sum)."""
        norm_sq = self.norm_sq()
        if not float(norm_sq) > 0:
            raise ValueError("projection_residual: the tensor is zero")
        sets = []
        for factors in factor_sets:
            if len(factors) != 4:
                raise ValueError(f"projection_residual: a 4-mode tensor needs 4 factors, got {len(factors)}")
            on = tuple(self._on(u) for u in factors)
            for mode, u in enumerate(on):
                if u.shape[0] != self.shape[mode]:
                    raise ValueError(f"projection_residual: factor {mode} has {u.shape[0]} rows, mode {mode} has "
                                     f"{self.shape[mode]}")
            sets.append(on)
        live = [i for i, on in enumerate(sets) if min(u.shape[1] for u in on) > 0]
        _, d1, d2, d3 = self.shape
        projected: dict[int, list[torch.Tensor]] = {i: [] for i in live}
        if live:
            widest = max(sets[i][2].shape[1] * sets[i][3].shape[1] for i in live)
            widest_r3 = max(sets[i][3].shape[1] for i in live)
            # every set's Z (d1, r2·r3) and Y (L, r1·r2·r3) are held at once: kept on the device only if all fit
            z_home = self._home(sum(d1 * sets[i][2].shape[1] * sets[i][3].shape[1] for i in live))
            y_home = self._home(sum(self.shape[0] * math.prod(u.shape[1] for u in sets[i][1:]) for i in live))
            for piece in self.slices:
                z_parts: dict[int, list[torch.Tensor]] = {i: [] for i in live}
                for rows in self._rows((d2 * d3 + d2 * widest_r3 + widest) * 8):
                    s = self._on(piece[rows])
                    for i in live:
                        _, _, u2, u3 = sets[i]
                        z_parts[i].append((u2.mT @ s @ u3).to(z_home))
                    del s
                for i in live:
                    u1, u2, u3 = sets[i][1:]
                    r1, r23 = u1.shape[1], u2.shape[1] * u3.shape[1]
                    z = torch.cat(z_parts[i]).reshape(d1, r23)
                    projected[i].append(torch.cat([(u1.mT @ self._on(z[:, columns])).to(y_home)
                                                   for columns in self.workspace.spans(r23, (d1 + r1) * 8)], dim=1))
                del z_parts
        residuals = []
        for i, on in enumerate(sets):
            if i not in projected:
                residuals.append(1.0)
                continue
            core_sq = self._chunked_norm_sq(projected.pop(i), on[0])
            residuals.append(max(1.0 - float(core_sq / norm_sq), 0.0))
        return residuals

    def hosvd_factors(self, ranks: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The truncated HOSVD's factors: top-r_k eigenvectors of each mode Gram (a zero rank: empty factors)."""
        if len(ranks) != 4:
            raise ValueError(f"hosvd_factors: a 4-mode tensor needs 4 ranks, got {list(ranks)}")
        if min(ranks) == 0:
            return tuple(torch.zeros(d, r, dtype=F64, device=self.device) for d, r in zip(self.shape, ranks))
        factors = []
        for mode, (gram, rank) in enumerate(zip(self.mode_grams(), ranks)):
            if not 0 < rank <= self.shape[mode]:
                raise ValueError(f"hosvd_factors: rank {rank} of mode {mode} must lie in 1..{self.shape[mode]}")
            factors.append(torch.linalg.eigh(gram)[1].flip(-1)[:, :rank])
        return tuple(factors)
