"""G0 (free orthogonal regauge) and G2 (Tucker across layer × expert × hidden): what the weights' spectra allow.

G0. An orthogonal regauge Q changes a weight's coordinates, never its singular values (σ(QW) = σ(W)); so the best any
regauge followed by keeping r coordinates can do is the Eckart–Young residual Σ_{i>r} σ_i² / Σ σ_i² of W itself.
Per MoE layer the probe reads every expert matrix (gate (E, I, H), up (E, I, H), down (E, H, I)) and the stacked
layer matrix [gate_e; up_e; down_eᵀ]_e (3·E·I, H), whose rows all live in the hidden space a residual-stream regauge
rotates. The claim is judged on the layer's most compressible matrix (min over all of them). The executed
pipeline rotates the smaller side of each matrix by Q, keeps the first r rotated coordinates and rotates back:
W' = Q_r Q_rᵀ W (left) or W Q_r Q_rᵀ (right); the best Q holds the singular vectors (error = the Eckart–Young floor),
a Haar-random Q is the τ baseline, Q = I at full rank is the trivial pass (W' = W bit for bit).

G2. The experts of one weight type form a tensor T (layer, expert, intermediate, hidden) (down transposed to
(I, H)). A Tucker model with mode ranks r stores Π r_k + Σ d_k r_k values. Its mode-k unfolding has rank ≤ r_k, so by
Eckart–Young its residual is at least the tail energy of that unfolding past r_k; the analytical floor is the least
max_k tail_k(r_k) over every rank tuple within the parameter budget (exact search over the tails). The executed
pipeline projects T on factor matrices U_k (HOSVD, Haar-random, or identity for the trivial pass) and measures
‖T − T ×_k U_k U_kᵀ‖² / ‖T‖² = 1 − ‖core‖² / ‖T‖², in float64 pieces that fit the GPU workspace (T of OLMoE-1B-7B is
17 GB in float64; it stays on the CPU as read).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.lowrank import input_basis, project_inputs
from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.rng import Seed, cpu_generator
from pytest_ladder.measure.spectra import effective_rank, residual_energy, singular_values, singular_values_from_gram
from pytest_ladder.measure.tucker import StackedTensor
from pytest_ladder.measure.workspace import Workspace, to_f64

F64 = torch.float64
KINDS = ("gate", "up", "down", "layer")  # the matrices G0 reads per layer; "layer" is the stacked layer matrix


# --------------------------------------------------------------------------------------------------- G0 --------


def layer_matrices(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    """G0's matrices of one layer, float64: gate, up (E, I, H), down (E, H, I), stacked layer matrix (1, 3EI, H)."""
    e, i, h = gate.shape
    if up.shape != (e, i, h) or down.shape != (e, h, i):
        raise ValueError(f"layer_matrices: expected gate/up (E, I, H) and down (E, H, I), got {tuple(gate.shape)}, "
                         f"{tuple(up.shape)}, {tuple(down.shape)}")
    gate, up, down = gate.to(F64), up.to(F64), down.to(F64)
    stacked = torch.cat([gate.reshape(e * i, h), up.reshape(e * i, h), down.mT.reshape(e * i, h)])
    return {"gate": gate, "up": up, "down": down, "layer": stacked.unsqueeze(0)}


def layer_spectra(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    """σ of every matrix kind of `layer_matrices`, (batch, min(m, n)) float64 descending, by eigh of the smaller
    Gram; the stacked layer matrix's from its Gram Σ_e gate_eᵀgate_e + up_eᵀup_e + down_e down_eᵀ (H, H), so only
    one weight type is held in float64 at a time (OLMoE-1B-7B: 1 GB, not the 3.2 GB stacked matrix)."""
    spectra, layer_gram = {}, None
    for kind, w in (("gate", gate), ("up", up), ("down", down)):
        w = w.to(F64)
        spectra[kind] = singular_values(w, method="gram")
        rows = w.mT if kind == "down" else w  # (E, I, H): rows in the hidden space
        rows = rows.reshape(-1, rows.shape[-1])
        gram = rows.mT @ rows
        layer_gram = gram if layer_gram is None else layer_gram + gram
        del w, rows
    spectra["layer"] = singular_values_from_gram(layer_gram).unsqueeze(0)
    return spectra


@dataclass(frozen=True)
class RegaugeFloor:
    """G0's analytical floor on one layer: the least residual energy and effective rank any regauge can expose."""

    residual: float  # min over matrices of Σ_{i>r} σ_i² / Σ σ_i² at the matrix's budget rank r
    residual_at: str  # which matrix, e.g. "up[3]" or "layer[0]"
    effective_rank_ratio: float  # min over matrices of r_eff / r (≤ 1: the energy spreads over at most r directions)
    effective_rank_at: str
    per_kind: dict[str, dict[str, float]]  # kind -> min/max residual, min r_eff, budget rank


def regauge_floor(spectra: dict[str, torch.Tensor], ranks: dict[str, int]) -> RegaugeFloor:
    """Eckart–Young residual and r_eff / r of every matrix (orthogonal regauges leave σ unchanged); min per layer."""
    best_residual, best_ratio = (math.inf, ""), (math.inf, "")
    per_kind = {}
    for kind, sv in spectra.items():
        rank = ranks[kind]
        residual, reff = residual_energy(sv, rank), effective_rank(sv)
        ratio = reff / rank
        i, j = int(residual.argmin()), int(ratio.argmin())
        best_residual = min(best_residual, (float(residual[i]), f"{kind}[{i}]"))
        best_ratio = min(best_ratio, (float(ratio[j]), f"{kind}[{j}]"))
        per_kind[kind] = {"rank": rank, "residual_min": float(residual.min()), "residual_max": float(residual.max()),
                          "effective_rank_min": float(reff.min())}
    return RegaugeFloor(best_residual[0], best_residual[1], best_ratio[0], best_ratio[1], per_kind)


def _rotated_side(w: torch.Tensor) -> str:
    """The side a regauge rotates: the smaller dimension (left = output rows, right = input columns)."""
    return "left" if w.shape[-2] < w.shape[-1] else "right"


def regauge_truncate(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """W' = Q_r Q_rᵀ W (left) or W Q_r Q_rᵀ (right) on W's smaller side; q (…, n, r) orthonormal columns."""
    if _rotated_side(w) == "right":
        return project_inputs(w, q)
    return project_inputs(w.mT, q).mT


def best_regauge(w: torch.Tensor, rank: int) -> torch.Tensor:
    """The optimal regauge's kept coordinates: the top-r singular vectors of W's smaller side (…, n, r)."""
    side_gram = w.mT @ w if _rotated_side(w) == "right" else w @ w.mT
    return input_basis(side_gram, rank)


def random_regauge(w: torch.Tensor, rank: int, seed: Seed) -> torch.Tensor:
    """A Haar-random regauge's kept coordinates (n, r), shared by the batch: the τ baseline of G0."""
    n = min(w.shape[-2:])
    return random_orthonormal_columns(n, rank, seed, device=w.device)


def identity_regauge(w: torch.Tensor) -> torch.Tensor:
    """Q = I at full rank: the trivial pass (W' = W exactly)."""
    n = min(w.shape[-2:])
    return torch.eye(n, dtype=F64, device=w.device)


@dataclass(frozen=True)
class RegaugeError:
    """G0's executed pipeline on one layer: the least relative error ‖W − W'‖_F / ‖W‖_F over its matrices."""

    value: float
    at: str
    per_kind: dict[str, float]


def regauge_error(matrices: dict[str, torch.Tensor], regauges: dict[str, torch.Tensor]) -> RegaugeError:
    """min over the layer's matrices of ‖W − W'‖_F / ‖W‖_F with W' = regauge_truncate(W, Q) and Q per kind."""
    best = (math.inf, "")
    per_kind = {}
    for kind, w in matrices.items():
        errors = frobenius_relative_error(w, regauge_truncate(w, regauges[kind]))
        i = int(errors.argmin())
        best = min(best, (float(errors[i]), f"{kind}[{i}]"))
        per_kind[kind] = float(errors.min())
    return RegaugeError(best[0], best[1], per_kind)


def singular_value_drift(w: torch.Tensor, q: torch.Tensor) -> float:
    """max |σ(W') − σ(W)| / σ_max(W) over the batch for the full regauge W' = Q W (left) or W Q (right) of W's smaller
    side, Q (n, n): 0 up to rounding for any orthogonal Q (Lean: orthogonal_gauge_preserves_singular_values)."""
    w = w.to(F64)
    q = to_f64(q, w.device)
    before = singular_values(w)
    after = singular_values(w @ q if _rotated_side(w) == "right" else q @ w)
    return float(((after - before).abs() / before[..., :1]).max())


GRAM_CONDITION = 1e-3  # σ_min / σ_max at or above which σ from the Gram is accurate to ~1e-10 σ_max (`drift_sigma`)


def well_conditioned(sv: torch.Tensor) -> torch.Tensor:
    """Whether σ from the Gram (descending, (..., n)) is accurate to about n·ε·σ_max / σ_min ≤ 1e-10 σ_max:
    σ_min ≥ GRAM_CONDITION · σ_max (bool, batched)."""
    return sv[..., -1] >= GRAM_CONDITION * sv[..., 0]


def drift_sigma(w: torch.Tensor) -> torch.Tensor:
    """σ of W (..., m, n) for G0's drift traps, float64 descending: by eigh of the smaller Gram (one symmetric
    eigensolver; on a GPU ~10x faster than an SVD of the matrix) where that is accurate far below the traps' 1e-9
    tolerance (`well_conditioned`: |Δσ_i| ≲ n·ε·σ_max² / σ_i), by SVD for the matrices where it is not (a nearly
    rank-deficient matrix's small σ have Gram errors up to √ε·σ_max)."""
    found = singular_values(w, method="gram")
    poor = ~well_conditioned(found)
    if bool(poor.any()):
        found = found.clone()
        found[poor] = singular_values(w.to(F64)[poor])
    return found


class HeldLayers:
    """G0's layers read from a checkpoint view (`experts(layer, projection)`), worked on in float64 pieces that fit the
    run's GPU workspace: one layer's weights held as read (on the CPU under a bounded workspace: OLMoE-1B-7B's are
    0.8 GB in bf16; the float64 matrices would be 6.4 GB), every layer's spectra kept in `store` (the rung's cache,
    so they go when the rung ends).

    A batched kind (gate, up, down) goes a few experts at a time; the stacked layer matrix (3·E·I, H) a block of rows
    at a time: its Gram (whose eigenvalues give its σ) and its regauge error (Σ of the blocks' ‖W − W'‖² over
    Σ ‖W‖²) never form it; where its Gram's σ are too coarse for the drift traps, σ comes from a QR of the blocks
    stacked under the running triangular factor (σ(W) = σ(R)). Per-expert values do not depend on the pieces; the
    layer matrix's sums are reordered by them only."""

    def __init__(self, weights: Any, store: dict, workspace: Workspace | None = None) -> None:
        self.workspace = workspace or Workspace.on(weights.device, None)
        self.weights = weights.on(self.workspace.home) if self.workspace.bounded else weights
        self.store = store

    @property
    def device(self) -> torch.device:
        return self.workspace.device

    def _read(self, layer: int) -> dict[str, torch.Tensor]:
        """gate, up (E, I, H) and down (E, H, I) of one layer as stored (the previous layer's go)."""
        found = self.store.setdefault("read", {})
        if layer not in found:
            found.clear()
            read = {p: self.weights.experts(layer, p) for p in ("gate", "up", "down")}
            if read["gate"].device.type == "cpu" and self.device.type == "cuda":
                read = {p: w.contiguous().pin_memory() for p, w in read.items()}
            found[layer] = read
        return found[layer]

    def _spans(self, w: torch.Tensor, copies: int = 4) -> list[slice]:
        return self.workspace.spans(w.shape[0], copies * 8 * math.prod(w.shape[1:]))

    def _batched(self, layer: int, kind: str) -> Any:
        """(experts span, the span's matrices in float64 on the device), a few experts at a time."""
        w = self._read(layer)[kind]
        for span in self._spans(w):
            yield span, to_f64(w[span], self.device)

    def _layer_rows(self, layer: int) -> Any:
        """Blocks of rows (rows, H) of the stacked layer matrix [gate_e; up_e; down_eᵀ]_e, float64 on the device."""
        read = self._read(layer)
        for kind in ("gate", "up", "down"):
            w = read[kind]
            for span in self._spans(w):
                block = w[span].mT if kind == "down" else w[span]
                yield to_f64(block.reshape(-1, block.shape[-1]), self.device)

    def spectra(self, layer: int) -> dict[str, torch.Tensor]:
        """σ of every matrix kind (see `layer_spectra`), by eigh of the smaller Gram; the layer matrix's from its
        H × H Gram, kept for the best regauge."""
        found = self.store.setdefault("spectra", {})
        if layer not in found:
            spectra = {kind: torch.cat([singular_values(block, method="gram") for _, block in
                                        self._batched(layer, kind)]) for kind in ("gate", "up", "down")}
            gram = None
            for rows in self._layer_rows(layer):
                part = rows.mT @ rows
                gram = part if gram is None else gram + part
            self.store.setdefault("layer_gram", {})[layer] = gram
            spectra["layer"] = singular_values_from_gram(gram).unsqueeze(0)
            found[layer] = spectra
        return found[layer]

    def floor(self, layer: int, ranks: dict[str, int]) -> RegaugeFloor:
        return regauge_floor(self.spectra(layer), ranks)

    def errors(self, layer: int, regauge_sets: Sequence[dict[str, torch.Tensor]]) -> list[RegaugeError]:
        """`regauge_error` of the layer under each set of regauges ({kind: Q}, Q (n, r) shared or (E, n, r) per
        expert), every set in one pass over the layer's pieces."""
        per_set: list[dict[str, torch.Tensor]] = [{} for _ in regauge_sets]
        for kind in ("gate", "up", "down"):
            parts: list[list[torch.Tensor]] = [[] for _ in regauge_sets]
            for span, block in self._batched(layer, kind):
                for i, regauges in enumerate(regauge_sets):
                    q = regauges[kind]
                    q = q[span] if q.dim() == 3 else q
                    parts[i].append(frobenius_relative_error(block, regauge_truncate(block, q.to(self.device))).cpu())
            for i, found in enumerate(parts):
                per_set[i][kind] = torch.cat(found)
        removed = [torch.zeros((), dtype=F64, device=self.device) for _ in regauge_sets]
        total = torch.zeros((), dtype=F64, device=self.device)
        qs = [regauges["layer"].to(self.device).reshape(-1, regauges["layer"].shape[-1]) for regauges in regauge_sets]
        for rows in self._layer_rows(layer):
            total += rows.square().sum()
            for i, q in enumerate(qs):
                removed[i] += (rows - project_inputs(rows, q)).square().sum()
        for i in range(len(regauge_sets)):
            per_set[i]["layer"] = (removed[i] / total).sqrt().reshape(1).cpu()
        results = []
        for errors in per_set:
            best = min((float(e.min()), f"{kind}[{int(e.argmin())}]") for kind, e in errors.items())
            results.append(RegaugeError(best[0], best[1], {kind: float(e.min()) for kind, e in errors.items()}))
        return results

    def _layer_singular_values(self, layer: int, q: torch.Tensor | None) -> torch.Tensor:
        """σ of the stacked layer matrix W (or of W Q) for the drift traps, from its H × H Gram (`drift_sigma`'s
        rule: the QR route where the Gram's σ are not accurate enough). σ(W) is computed once per rung; when every
        rotated block equals its block bit for bit (Q = I), it is σ(W Q) too."""
        unrotated = self.store.setdefault("layer_sigma", {})
        if layer in unrotated and (q is None or all(torch.equal(rows @ q, rows) for rows in self._layer_rows(layer))):
            return unrotated[layer]
        gram = None
        for rows in self._layer_rows(layer):
            rows = rows if q is None else rows @ q
            gram = rows.mT @ rows if gram is None else gram + rows.mT @ rows
        found = singular_values_from_gram(gram)
        if not well_conditioned(found):
            r = None
            for rows in self._layer_rows(layer):
                rows = rows if q is None else rows @ q
                r = torch.linalg.qr(rows if r is None else torch.cat([r, rows]), mode="r").R
            found = torch.linalg.svdvals(r)
        if q is None:
            unrotated[layer] = found
        return found

    def _expert_singular_values(self, layer: int, kind: str, span: slice, block: torch.Tensor) -> torch.Tensor:
        """σ of a piece of a batched kind's matrices (`drift_sigma`), kept for the rung (both traps compare with it)."""
        found = self.store.setdefault("expert_sigma", {})
        key = (layer, kind, span.start, span.stop)
        if key not in found:
            found[key] = drift_sigma(block)
        return found[key]

    def drift(self, layer: int, rotation: Callable[[int], torch.Tensor]) -> float:
        """max |σ(W') − σ(W)| / σ_max(W) over the layer's matrices for the full regauge W' = Q W (left) or W Q (right)
        of each matrix's smaller side, Q = rotation(n) (n, n): 0 up to rounding for any orthogonal Q. σ(W) is
        computed once per rung; σ(W′) is σ(W) itself where W′ equals W bit for bit (Q = I)."""
        worst, rotations = 0.0, {}
        for kind in ("gate", "up", "down"):
            for span, block in self._batched(layer, kind):
                n = min(block.shape[-2:])
                if n not in rotations:  # one Q per size, drawn once for every piece
                    rotations[n] = to_f64(rotation(n), self.device)
                q = rotations[n]
                before = self._expert_singular_values(layer, kind, span, block)
                rotated = block @ q if _rotated_side(block) == "right" else q @ block
                after = before if torch.equal(rotated, block) else drift_sigma(rotated)
                worst = max(worst, float(((after - before).abs() / before[..., :1]).max()))
        hidden = self._read(layer)["gate"].shape[-1]
        q = to_f64(rotation(hidden), self.device)
        before, after = self._layer_singular_values(layer, None), self._layer_singular_values(layer, q)
        return max(worst, float(((after - before).abs() / before[..., :1]).max()))

    def trivial_pass(self, layer: int) -> dict[str, float]:
        """Q = I at full rank through the executed pipeline, the floor at full rank and σ drift under Q = I: each
        exactly 0 for a working pipeline (G0's trivial-pass trap)."""
        svs = self.spectra(layer)
        identity = {k: torch.eye(s.shape[-1], dtype=F64, device=self.device) for k, s in svs.items()}
        error = self.errors(layer, [identity])[0].value
        floor = regauge_floor(svs, {k: s.shape[-1] for k, s in svs.items()}).residual
        drift = self.drift(layer, lambda n: torch.eye(n, dtype=F64))
        return {"error": error, "floor_residual": floor, "sigma_drift": drift}

    def best_regauges(self, layer: int, ranks: dict[str, int]) -> dict[str, torch.Tensor]:
        """The optimal regauge's kept coordinates per kind: each expert matrix's top singular vectors on its smaller
        side (E, n, r), and the layer matrix's from its Gram (H, r)."""
        found = {kind: torch.cat([best_regauge(block, ranks[kind]) for _, block in self._batched(layer, kind)])
                 for kind in ("gate", "up", "down")}
        self.spectra(layer)
        found["layer"] = input_basis(self.store["layer_gram"][layer], ranks["layer"])
        return found

    def best_and_tau(self, layer: int, ranks: dict[str, int], seeds: Sequence[Seed]) -> tuple[RegaugeError, Any]:
        """The best regauge's executed error on the layer and the τ floor of Haar-random regauges (measure.tau), all
        in one pass over the layer."""
        from pytest_ladder.measure.tau import tau_floor

        svs = self.spectra(layer)
        randoms = [{k: random_orthonormal_columns(svs[k].shape[-1], ranks[k], seed) for k in KINDS} for seed in seeds]
        best, *baselines = self.errors(layer, [self.best_regauges(layer, ranks)] + randoms)
        by_seed = dict(zip(seeds, baselines))
        return best, tau_floor(lambda seed: seed, lambda seed: by_seed[seed].value, seeds)

    def random_drift(self, layer: int, seed: Seed) -> float:
        """max |Δσ| / σ_max of the layer's matrices under one Haar-random orthogonal regauge (0 up to rounding)."""
        from pytest_ladder.measure.orthogonal import random_orthogonal

        return self.drift(layer, lambda n: random_orthogonal(n, seed))


# --------------------------------------------------------------------------------------------------- G2 --------


def expert_tensor(per_layer: Sequence[torch.Tensor], projection: str,
                  workspace: Workspace | None = None) -> StackedTensor:
    """T (layer, expert, intermediate, hidden) from each layer's stacked experts of `projection` (gate/up (E, I, H) as
    stored, down (E, H, I) transposed), kept as read (on the CPU under a bounded `workspace`) and used in float64."""
    if projection not in ("gate", "up", "down"):
        raise ValueError(f"expert_tensor: projection must be gate, up or down, got {projection!r}")
    return StackedTensor([w.mT if projection == "down" else w for w in per_layer], workspace)


def tucker_params(dims: Sequence[int], ranks: Sequence[int]) -> int:
    """Values a Tucker model stores: Π r_k (core) + Σ d_k r_k (factors); the closed form of `tucker_artifact`."""
    return math.prod(ranks) + sum(d * r for d, r in zip(dims, ranks))


def mode_tails(t: torch.Tensor | StackedTensor) -> list[torch.Tensor]:
    """tail_k(r) = Σ_{i>r} σ_i² / Σ σ_i² of every mode unfolding, for r = 0..d_k (float64)."""
    return [torch.tensor([float(residual_energy(sv, r)) for r in range(sv.shape[-1] + 1)], dtype=F64, device=sv.device)
            for sv in StackedTensor.of(t).mode_spectra()]


@dataclass(frozen=True)
class TuckerFloor:
    """G2's analytical floor: the least Eckart–Young residual any Tucker model within the budget can reach."""

    residual: float  # min over feasible rank tuples of max_k tail_k(r_k)
    ranks: tuple[int, ...]  # the smallest rank tuple reaching it
    budget_params: int
    params: int  # what that tuple stores
    mode_effective_ranks: tuple[float, ...]


def tucker_floor(t: torch.Tensor | StackedTensor, budget_params: int) -> TuckerFloor:
    """min over r with Π r_k + Σ d_k r_k ≤ budget of max_k tail_k(r_k): a lower bound on every Tucker model's residual.

    Exact: for a level ℓ each mode needs r_k(ℓ) = min{r : tail_k(r) ≤ ℓ}; the parameter count of r(ℓ) falls as ℓ
    rises, so a bisection over the sorted tail values finds the least feasible level. If not even ranks (1, …, 1)
    fit, every Tucker model stores nothing and the floor is 1.
    """
    t = StackedTensor.of(t)
    dims = tuple(t.shape)
    tails = mode_tails(t)
    reff = tuple(float(effective_rank(sv)) for sv in t.mode_spectra())

    def ranks_at(level: float) -> tuple[int, ...]:
        return tuple(max(1, int((tail > level).sum())) for tail in tails)  # tails fall with r: count those above

    ones = (1,) * len(dims)
    if tucker_params(dims, ones) > budget_params:
        return TuckerFloor(1.0, (0,) * len(dims), budget_params, 0, reff)
    levels = sorted({float(v) for tail in tails for v in tail})
    lo, hi = 0, len(levels) - 1  # levels[hi] = 1 is feasible (every rank 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if tucker_params(dims, ranks_at(levels[mid])) <= budget_params:
            hi = mid
        else:
            lo = mid + 1
    ranks = ranks_at(levels[lo])
    residual = max(float(tail[r]) for tail, r in zip(tails, ranks))
    return TuckerFloor(residual, ranks, budget_params, tucker_params(dims, ranks), reff)


def projection_residual(t: torch.Tensor | StackedTensor, factors: Sequence[torch.Tensor]) -> float:
    """‖T − T̂‖² / ‖T‖² with T̂ = T ×_k U_k U_kᵀ = 1 − ‖core‖² / ‖T‖² (orthonormal factors; measure.tucker.StackedTensor:
    float64 on the tensor's device in pieces, the factors moved there wherever they were made; identity factors give
    exactly 0)."""
    return StackedTensor.of(t).projection_residual(factors)


def projection_residuals(t: torch.Tensor | StackedTensor, factor_sets: Sequence[Sequence[torch.Tensor]]) -> list[float]:
    """`projection_residual` of every factor set in one pass over T (each value as computed alone)."""
    return StackedTensor.of(t).projection_residuals(factor_sets)


def hosvd_factors(t: torch.Tensor | StackedTensor, ranks: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The truncated HOSVD's factor matrices at `ranks` (top eigenvectors of each mode Gram); a zero rank anywhere
    (nothing fits the budget) gives empty factors, i.e. T̂ = 0."""
    return StackedTensor.of(t).hosvd_factors(ranks)


def random_factors(dims: Sequence[int], ranks: Sequence[int], seed: Seed, *,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """Haar-random orthonormal factors (d_k, r_k) on `device` (that of the tensor they will project), drawn on the CPU
    mode after mode from one seeded generator: G2's τ baseline."""
    generator = cpu_generator(seed)
    return tuple(random_orthonormal_columns(d, r, generator, device=device) for d, r in zip(dims, ranks))


def identity_factors(dims: Sequence[int], *, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """U_k = I at full ranks, on `device`: the trivial pass (T̂ = T exactly)."""
    return tuple(torch.eye(d, dtype=F64, device=device) for d in dims)


def mode_energy_curves(t: torch.Tensor | StackedTensor, points: int = 32) -> dict[str, list[float]]:
    """Cumulative energy of each mode unfolding at up to `points` evenly spaced ranks, for the postmortem plots."""
    curves = {}
    for mode, sv in enumerate(StackedTensor.of(t).mode_spectra()):
        d = sv.shape[-1]
        ranks = sorted({max(1, round(d * (k + 1) / points)) for k in range(min(points, d))})
        curves[f"mode{mode}_energy"] = [1.0 - float(residual_energy(sv, r)) for r in ranks]
    return curves

