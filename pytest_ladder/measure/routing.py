"""Routing measurements: top-k sets and route flips (gate 3), top-k margins, low-rank routers (G6), per-route
effective weights (G3) and pairwise co-activation statistics (G7).

A route is the *set* of the top-k experts a token is sent to in one MoE layer; order inside the set is ignored.
Index tensors are (..., k) over any leading (token, layer) dims. Which k experts a router picks is the model's rule
(the models layer's adapter implements it); `topk_indices` is the plain top-k of logits, which is that rule for
softmax routers (softmax is monotone, renormalisation does not change the set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pytest_ladder.measure.lowrank import activation_lowrank, truncate
from pytest_ladder.measure.spectra import (
    effective_rank,
    singular_values,
    singular_values_from_gram,
    top_energy_from_gram,
)
from pytest_ladder.measure.workspace import to_f64
from pytest_ladder.progress import bar

F64 = torch.float64
WORKSPACE_BYTES = 1 << 30  # default working set of the chunked effective-weight measurements (1 GiB)


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (..., k) of the k largest router logits (..., E)."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"topk_indices: k must lie in 1..{logits.shape[-1]} (experts), got {k}")
    return logits.topk(k, dim=-1).indices


def route_flip_mask(dense_idx: torch.Tensor, comp_idx: torch.Tensor) -> torch.Tensor:
    """Bool (...): True where the top-k *set* of the compressed model differs from the dense one (order ignored)."""
    if dense_idx.shape != comp_idx.shape:
        raise ValueError(
            f"route flips: dense routes {tuple(dense_idx.shape)} and compressed routes {tuple(comp_idx.shape)} "
            "differ in shape; capture both on the same tokens, layers and top-k"
        )
    dense_sorted = dense_idx.sort(dim=-1).values
    comp_sorted = comp_idx.to(dense_idx.device).sort(dim=-1).values
    return (dense_sorted != comp_sorted).any(dim=-1)


def route_flip_rate(
    dense_idx: torch.Tensor | Sequence[torch.Tensor], comp_idx: torch.Tensor | Sequence[torch.Tensor]
) -> float:
    """Gate 3: fraction of (token, MoE layer) positions whose top-k set differs; per-layer lists are pooled."""
    if isinstance(dense_idx, torch.Tensor) != isinstance(comp_idx, torch.Tensor):
        raise TypeError("route_flip_rate: give both as tensors or both as per-layer sequences of tensors")
    if isinstance(dense_idx, torch.Tensor):
        dense_idx, comp_idx = [dense_idx], [comp_idx]
    if len(dense_idx) != len(comp_idx):
        raise ValueError(f"route_flip_rate: {len(dense_idx)} dense layers but {len(comp_idx)} compressed layers")
    flips = positions = 0
    for dense, comp in zip(dense_idx, comp_idx):
        mask = route_flip_mask(dense, comp)
        flips += int(mask.sum())
        positions += mask.numel()
    if positions == 0:
        raise ValueError("route_flip_rate: no (token, layer) positions given")
    return flips / positions


def route_jaccard(idx_a: torch.Tensor, idx_b: torch.Tensor) -> torch.Tensor:
    """|A ∩ B| / |A ∪ B| of the index sets A, B per position (..., k_a), (..., k_b) -> (...), float64 (G10.5)."""
    if idx_a.shape[:-1] != idx_b.shape[:-1]:
        raise ValueError(f"route_jaccard: leading dims differ: {tuple(idx_a.shape)} vs {tuple(idx_b.shape)}")
    idx_b = idx_b.to(idx_a.device)
    inter = (idx_a.unsqueeze(-1) == idx_b.unsqueeze(-2)).any(-1).sum(-1).to(F64)
    return inter / (idx_a.shape[-1] + idx_b.shape[-1] - inter)


def topk_margin(logits: torch.Tensor, k: int) -> torch.Tensor:
    """l_(k) − l_(k+1): gap between the k-th and (k+1)-th largest logit per position, float64 (..., )."""
    if not 1 <= k < logits.shape[-1]:
        raise ValueError(f"topk_margin: k must lie in 1..{logits.shape[-1] - 1}, got {k}")
    top = logits.to(F64).topk(k + 1, dim=-1).values
    return top[..., k - 1] - top[..., k]


def margin_certifies_no_flip(logits: torch.Tensor, perturbed_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (...): max_e |Δlogit_e| < margin/2, which guarantees an unchanged top-k set (route_flip_zero_above_margin)."""
    perturbation = (perturbed_logits.to(F64) - logits.to(F64)).abs().amax(dim=-1)
    return perturbation < topk_margin(logits, k) / 2


def lowrank_router(weight: torch.Tensor, rank: int, gram: torch.Tensor | None = None) -> torch.Tensor:
    """G6: rank-r router weight (E, H), plain SVD truncation or, given the input Gram G, activation-aware."""
    if gram is None:
        return truncate(weight, rank)
    return activation_lowrank(weight, gram, rank).reconstruct()


def router_flip_rates(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    ranks: Sequence[int],
    *,
    gram: torch.Tensor | None = None,
    route: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[int, float]:
    """G6: route flip rate of the rank-r router vs the full router on router inputs `hidden` (T, H), per rank.

    `route` maps logits (T, E) to expert indices (T, k) by the model's rule (default: plain top-k).
    """
    route = route or (lambda logits: topk_indices(logits, k))
    hidden = hidden.to(F64)
    dense = route(hidden @ to_f64(weight, hidden.device).mT)
    return {
        rank: route_flip_rate(dense, route(hidden @ lowrank_router(weight, rank, gram).to(hidden.device).mT))
        for rank in ranks
    }


def gate_matrix(idx: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(T, E) float64 with the routing weight g_k at each token's routed experts and 0 elsewhere."""
    if idx.shape != gates.shape or idx.dim() != 2:
        raise ValueError(f"gate_matrix: need idx and gates of the same shape (T, k), got {idx.shape} / {gates.shape}")
    dense = torch.zeros(idx.shape[0], n_experts, dtype=F64, device=idx.device)
    return dense.scatter_add_(1, idx.long(), gates.to(F64))


def effective_weights(weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, *,
                      columns: int | None = None) -> torch.Tensor:
    """G3: per-token effective weight Σ_k g_k W_{e_k} (T, out, in) from expert weights (E, out, in), float64, on the
    weights' device. With `columns`, the experts are taken to float64 that many of their out·in entries at a time
    (no float64 copy of the whole stack); each entry is the same sum over experts either way."""
    mixing = gate_matrix(idx.to(weights.device), gates.to(weights.device), weights.shape[0])
    if columns is None:
        return torch.einsum("te,eoi->toi", mixing, weights.to(F64))
    flat = weights.reshape(weights.shape[0], -1)
    found = torch.empty(mixing.shape[0], flat.shape[1], dtype=F64, device=weights.device)
    for start in range(0, flat.shape[1], columns):
        found[:, start:start + columns] = mixing @ flat[:, start:start + columns].to(F64)
    return found.view(mixing.shape[0], *weights.shape[1:])


def effective_weight_spectra(
    weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, *, chunk: int = 16, progress: bool | None = None
) -> torch.Tensor:
    """Singular values (T, min(out, in)) of every token's effective weight by a full SVD, `chunk` tokens at a time.

    The reference for the Gram paths below (tests, benchmarks/g3_spectra.py); G3 itself never needs the SVD."""
    w = weights.to(F64)
    starts = range(0, idx.shape[0], chunk)
    return torch.cat([
        singular_values(effective_weights(w, idx[start:start + chunk], gates[start:start + chunk]))
        for start in bar(starts, desc="effective-weight spectra", enabled=progress)
    ])


def expert_inner_products(weights: torch.Tensor, *, max_bytes: int | None = None) -> torch.Tensor:
    """K_ef = ⟨W_e, W_f⟩_F (E, E) float64 of expert weights (E, out, in), on their device: one product of the
    flattened experts (no copy beside their float64 one), or with `max_bytes` summed over column blocks whose float64
    copies fit half of it."""
    flat = weights.reshape(weights.shape[0], -1)
    width = flat.shape[1] if max_bytes is None else max(1, int(max_bytes) // (2 * 8 * flat.shape[0]))
    inner = None
    for start in range(0, flat.shape[1], width):
        part = flat[:, start:start + width].to(F64)
        inner = part @ part.mT if inner is None else inner.addmm_(part, part.mT)
    return inner


def effective_weight_sq_norms(weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor,
                              inner: torch.Tensor | None = None, *, max_bytes: int | None = None) -> torch.Tensor:
    """‖W_t‖²_F = m_tᵀ K m_t (T,) float64, from the mixing weights m_t (`gate_matrix`) and K (`expert_inner_products`,
    computed here unless given, `max_bytes` at a time): no effective weight is formed."""
    inner = expert_inner_products(weights, max_bytes=max_bytes) if inner is None else inner.to(F64)
    mixing = gate_matrix(idx.to(inner.device), gates.to(inner.device), inner.shape[0])
    return ((mixing @ inner) * mixing).sum(-1)


def effective_weight_grams(weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, *,
                           columns: int | None = None) -> torch.Tensor:
    """Gram of the smaller side of every token's effective weight, W_t W_tᵀ (out ≤ in) or W_tᵀ W_t (T, s, s), float64:
    its eigenvalues are the σ_i² of W_t (`columns`: see `effective_weights`)."""
    w_t = effective_weights(weights, idx, gates, columns=columns)
    return w_t @ w_t.mT if w_t.shape[-2] <= w_t.shape[-1] else w_t.mT @ w_t


def tokens_per_chunk(weights: torch.Tensor, max_bytes: int | None, *, held: int = 0) -> int:
    """How many tokens' effective weights (out·in), Grams and their working copies (3·s²) fit in `max_bytes` of
    float64 (None: the 1 GiB default) beside `held` bytes the computation keeps throughout (the experts it reads, the
    float64 blocks it reads them in), at least one."""
    out_features, in_features = weights.shape[-2:]
    side = min(out_features, in_features)
    per_token = 8 * (out_features * in_features + 3 * side * side)
    return max(1, ((WORKSPACE_BYTES if max_bytes is None else int(max_bytes)) - held) // per_token)


def _gram_chunks(weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, max_bytes: int | None,
                 desc: str, progress: bool | None):
    """The Grams of every token's effective weight, a chunk of tokens at a time. Experts stored narrower than float64
    are read in float64 a block of columns at a time, an eighth of the budget (the block and its product with the
    chunk's mixing weights), so the working set is the stored experts, that eighth and the chunk."""
    budget = WORKSPACE_BYTES if max_bytes is None else int(max_bytes)
    stored = weights.numel() * weights.element_size()
    if weights.dtype == F64:
        chunk, columns = tokens_per_chunk(weights, budget, held=stored), None
    else:
        chunk = tokens_per_chunk(weights, budget, held=stored + budget // 8)
        columns = max(1, budget // 16 // (8 * max(weights.shape[0], chunk)))
    for start in bar(range(0, idx.shape[0], chunk), desc=desc, enabled=progress):
        yield effective_weight_grams(weights, idx[start:start + chunk], gates[start:start + chunk], columns=columns)


def effective_weight_energy(
    weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, rank: int, *, max_bytes: int | None = None,
    tol: float = 1e-10, progress: bool | None = None,
) -> torch.Tensor:
    """G3: energy_q(W_t) = Σ_{i≤q} σ_i² / ‖W_t‖²_F of every token's effective weight (T,) float64, 0 for W_t = 0.

    The numerator by block subspace iteration on the smaller-side Gram (spectra.top_energy_from_gram, converged to a
    relative change ≤ `tol`), the denominator as m_tᵀ K m_t; no SVD. Tokens go `max_bytes` of float64 at a time
    (`tokens_per_chunk`), so a GPU's working set stays inside that budget.
    """
    top = torch.cat([top_energy_from_gram(gram, rank, tol=tol)
                     for gram in _gram_chunks(weights, idx, gates, max_bytes, "effective-weight energy", progress)])
    total = effective_weight_sq_norms(weights, idx, gates, max_bytes=max_bytes).to(top.device)
    return torch.where(total > 0, top / total, torch.zeros_like(top))


def effective_weight_effective_ranks(
    weights: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, *, max_bytes: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """G3: r_eff (spectral entropy, spectra.effective_rank) of every token's effective weight (T,) float64, exact
    from the eigenvalues of its smaller-side Gram (a symmetric eigensolver, no SVD), `max_bytes` at a time."""
    return torch.cat([effective_rank(singular_values_from_gram(gram))
                      for gram in _gram_chunks(weights, idx, gates, max_bytes, "effective-weight r_eff", progress)])


@dataclass(frozen=True)
class Coactivation:
    """G7: pairwise co-activation of experts over `n_tokens` routes of one layer.

    pairs[i, j] (i ≠ j) counts tokens routed to both i and j (symmetric, zero diagonal); usage[i] counts tokens
    routed to i. Coverage of the top-M pairs is their share of all pair occurrences (each token contributes its
    k(k−1)/2 unordered pairs). A pair is dominant when its lift, observed / expected under independent usage
    (pairs_ij · T / (usage_i · usage_j)), reaches `min_lift`.
    """

    pairs: torch.Tensor
    usage: torch.Tensor
    n_tokens: int

    def effective_rank(self) -> float:
        """r_eff of the pair matrix C_pair (spectral entropy of its singular values, see spectra)."""
        return float(effective_rank(singular_values(self.pairs)))

    def _upper(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.pairs.shape[0]
        rows, cols = torch.triu_indices(n, n, offset=1, device=self.pairs.device)
        return torch.stack([rows, cols], dim=1), self.pairs[rows, cols]

    def top_pairs(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The m most frequent unordered pairs: indices (m, 2) and their counts (m,), most frequent first."""
        index, counts = self._upper()
        order = counts.argsort(descending=True, stable=True)[:m]
        return index[order], counts[order]

    def coverage(self, m: int) -> float:
        """Share of all pair occurrences covered by the m most frequent pairs."""
        _, counts = self._upper()
        total = float(counts.sum())
        if total == 0:
            raise ValueError("Coactivation.coverage: no pair occurrences (top-k = 1 or no tokens)")
        return float(self.top_pairs(m)[1].sum()) / total

    def lifts(self) -> torch.Tensor:
        """(E, E) observed / expected pair counts under independent usage (0 where an expert is unused)."""
        expected = torch.outer(self.usage, self.usage) / self.n_tokens
        return torch.where(expected > 0, self.pairs / expected, torch.zeros_like(expected))

    def dominant_pairs(self, min_lift: float) -> torch.Tensor:
        """(P, 2) unordered pairs i < j with lift ≥ min_lift, sorted by lift (largest first)."""
        index, _ = self._upper()
        lifts = self.lifts()[index[:, 0], index[:, 1]]
        keep = (lifts >= min_lift) & (self.pairs[index[:, 0], index[:, 1]] > 0)
        chosen, chosen_lifts = index[keep], lifts[keep]
        return chosen[chosen_lifts.argsort(descending=True, stable=True)]


def coactivation(idx: torch.Tensor, n_experts: int) -> Coactivation:
    """Co-activation counts of the routes idx (T, k) of one layer over `n_experts` experts (float64 counts)."""
    if idx.dim() != 2:
        raise ValueError(f"coactivation: expected routes (T, k) of one layer, got shape {tuple(idx.shape)}")
    membership = torch.zeros(idx.shape[0], n_experts, dtype=F64, device=idx.device)
    membership.scatter_(1, idx.long(), 1.0)
    counts = membership.mT @ membership
    usage = counts.diagonal().clone()
    pairs = counts - torch.diag_embed(usage)
    return Coactivation(pairs=pairs, usage=usage, n_tokens=idx.shape[0])
