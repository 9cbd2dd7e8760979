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
from pytest_ladder.measure.workspace import Workspace, to_f64

F64 = torch.float64
Y_SHARE = 1 / 3  # of a bounded workspace: the layers' projections one pass accumulates (StackedTensor.layer_grams)


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
    """T (L, d1, d2, d3) as L slices (d1, d2, d3) in the dtype they were read in (exact in float64), with float64 work
    on `workspace.device` in pieces. A slice already on that device is kept as given: a view of a model's resident
    weights (a fused expert parameter's half, a transposed down projection) costs nothing beyond the weights and
    is never copied whole. Any other slice is kept where `workspace` stores results (the CPU when its budget is
    bounded). Every piece moved to the work is a contiguous float64 copy, so resident and stored slices give the
    same values bit for bit.

    - mode Grams: those of modes 2 and 3 summed over (layer, d1-chunk) pieces; those of modes 0 and 1 are partial
      traces of the (L·d1)² Gram K of the slices' rows, summed over column chunks;
    - projection onto factors U_0..U_3: ‖core‖² = Σ_{l,l'} (U_0 U_0ᵀ)_{ll'} G_{ll'} with G the (L, L) Gram of the
      layers' projections Y_l = S_l ×_1 U_1ᵀ ×_2 U_2ᵀ ×_3 U_3ᵀ, summed over chunks of Y's columns (`layer_grams`);
      ‖T‖² is the same sum for identity factors, so identity factors give a residual of exactly 0.

    Chunking reorders sums only: values agree with the unchunked float64 computation to rounding.
    """

    def __init__(self, slices: Sequence[torch.Tensor], workspace: Workspace | None = None) -> None:
        if not slices or any(s.dim() != 3 or s.shape != slices[0].shape for s in slices):
            raise ValueError("StackedTensor: needs one or more slices of one 3-D shape")
        self.workspace = workspace or Workspace.on(slices[0].device, None)
        self.slices = [s if s.device == self.workspace.device else self._pinned(self.workspace.store(s.contiguous()))
                       for s in slices]
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
        """`x` as a contiguous float64 tensor on the device (one copy, also of a strided view already there)."""
        if x.device == self.device:
            return x.to(dtype=F64, memory_format=torch.contiguous_format)
        return to_f64(x, self.device)

    @staticmethod
    def _columns(piece: torch.Tensor, columns: slice) -> torch.Tensor:
        """piece.reshape(d1, -1)[:, columns] without reshaping the whole slice (a strided view would be copied
        whole): only the rows of mode 2 the columns fall in are made contiguous."""
        d3 = piece.shape[2]
        first, last = columns.start // d3, -(-columns.stop // d3)
        rows = piece[:, first:last].reshape(piece.shape[0], -1)
        return rows[:, columns.start - first * d3:columns.stop - first * d3]

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
                    del s, flat, by_row  # the next piece is made beside nothing of this one
            k = torch.zeros(n_layers * d1, n_layers * d1, dtype=F64, device=self.device)
            for columns in self.workspace.spans(d2 * d3, 2 * n_layers * d1 * 8):
                # each layer's columns reach the device in float64 first: the slices may lie on different devices
                # (a layer resident on the GPU, an offloaded one read from the checkpoint into the CPU)
                block = torch.cat([self._on(self._columns(piece, columns)) for piece in self.slices])
                k += block @ block.mT
                del block  # else the last block lives on while the next one's pieces and block are made
            k = k.view(n_layers, d1, n_layers, d1)
            g0 = k.diagonal(dim1=1, dim2=3).sum(-1)
            g1 = k.diagonal(dim1=0, dim2=2).sum(-1)
            self._grams = [g0, g1, g2, g3]
        return self._grams

    def mode_spectra(self) -> list[torch.Tensor]:
        """Singular values of every mode unfolding (float64, descending)."""
        return [singular_values_from_gram(g) for g in self.mode_grams()]

    def _pieces(self) -> list[slice]:
        """Rows (over d1) of a layer slice moved to the device at once: the float64 piece and the two products made
        from it fit a quarter of the workspace. Fixed by the shape and the workspace alone, so every factor set sums
        its pieces in the same order whichever sets share a pass."""
        _, _, d2, d3 = self.shape
        return self.workspace.spans(self.shape[1], 3 * d2 * d3 * 8, share=0.25)

    def layer_grams(self, factor_sets: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """For each set (U_1, U_2, U_3) (orthonormal columns, on the device), the (L, L) Gram G[l, l'] = ⟨Y_l, Y_l'⟩ of
        the layers' projections Y_l = S_l ×_1 U_1ᵀ ×_2 U_2ᵀ ×_3 U_3ᵀ (r1, r2, r3), float64 on the device.

        G couples layers, so the columns of Y are taken a chunk of r2 at a time (Y[:, :, b, :] for every layer,
        which fits a third of the workspace, beside the quarter a piece of S and its products take),
        G = Σ_b Y_b Y_bᵀ; chunks of several sets that fit together share a pass over T (each pass moves T to the
        device once). Per piece of rows e of S_l: Z = (U_2[:, b]ᵀ S_l[e]) U_3 and
        Y_l[:, b] += U_1[e]ᵀ Z. Holding every set's whole Y at once (L·r1·r2·r3 values: 6 GB per set for the
        OLMoE-1B-7B HOSVD) is what this avoids. Identity factors copy S bit for bit (products with 0 and 1 only)."""
        n_layers = self.shape[0]
        share = None if not self.workspace.bounded else int(self.workspace.limit * Y_SHARE)
        jobs = []  # (set, chunk of r2, bytes of its Y_b for every layer)
        for i, (u1, u2, u3) in enumerate(factor_sets):
            per_column = n_layers * u1.shape[1] * u3.shape[1] * 8
            jobs.extend((i, b, per_column * (b.stop - b.start))
                        for b in self.workspace.spans(u2.shape[1], per_column, share=Y_SHARE))
        passes, current, used = [], [], 0
        for job in jobs:
            if current and share is not None and used + job[2] > share:
                passes.append(current)
                current, used = [], 0
            current.append(job)
            used += job[2]
        if current:
            passes.append(current)
        grams = [torch.zeros(n_layers, n_layers, dtype=F64, device=self.device) for _ in factor_sets]
        for jobs in passes:
            ys = [torch.zeros(n_layers, factor_sets[i][0].shape[1] * (b.stop - b.start) * factor_sets[i][2].shape[1],
                              dtype=F64, device=self.device) for i, b, _ in jobs]
            for layer, piece in enumerate(self.slices):
                for rows in self._pieces():
                    s = self._on(piece[rows])
                    for (i, b, _), y in zip(jobs, ys):
                        u1, u2, u3 = factor_sets[i]
                        z = (u2[:, b].mT @ s) @ u3
                        y[layer] += (u1[rows].mT @ z.reshape(z.shape[0], -1)).reshape(-1)
                    del s
            for (i, _, _), y in zip(jobs, ys):
                grams[i] += y @ y.mT
            del ys
        return grams

    @staticmethod
    def _core_sq(gram: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
        """‖core‖² = Σ_j ‖Σ_l U_0[l, j] Y_l‖² = Σ_{l,l'} (U_0 U_0ᵀ)_{ll'} G_{ll'} from a set's layer Gram."""
        return (u0 * (gram @ u0)).sum()

    def norm_sq(self) -> torch.Tensor:
        """‖T‖² (float64 0-d tensor on the device): ‖core‖² of the identity factors by the route every set takes, so
        identity factors give a residual of exactly 0."""
        if self._norm_sq is None:
            eye = [torch.eye(d, dtype=F64, device=self.device) for d in self.shape]
            self._norm_sq = self._core_sq(self.layer_grams([eye[1:]])[0], eye[0])
        return self._norm_sq

    def projection_residual(self, factors: Sequence[torch.Tensor]) -> float:
        """‖T − T ×_k U_k U_kᵀ‖² / ‖T‖² for factors U_k (d_k, r_k) with orthonormal columns (any rank 0: T̂ = 0)."""
        return self.projection_residuals([factors])[0]

    def projection_residuals(self, factor_sets: Sequence[Sequence[torch.Tensor]]) -> list[float]:
        """`projection_residual` of every factor set, sharing passes over T (`layer_grams`): G2's HOSVD and its ten
        τ baselines read the 4.3 GB tensor of OLMoE-1B-7B as few times as the workspace allows. Each set's value is
        the one `projection_residual` gives it alone, bit for bit (its pieces, chunks and sums are its own)."""
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
        grams = dict(zip(live, self.layer_grams([sets[i][1:] for i in live])))
        return [max(1.0 - float(self._core_sq(grams[i], on[0]) / norm_sq), 0.0) if i in grams else 1.0
                for i, on in enumerate(sets)]

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
