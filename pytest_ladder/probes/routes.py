"""Probes over the router's decisions: G3 (per-route effective weights), G6 (rank-r router), G7 (pair cache).

- G3: a token routed to experts e_1..e_k with weights g_1..g_k sees the effective weight W_t = Σ_k g_k W_{e_k}
  (per projection: gate, up, down). The claim is that W_t is low-rank: the rank-q truncation of W_t keeps a large
  share of its energy, energy_q(W_t) = Σ_{i≤q} σ_i² / Σ σ_i² (Eckart–Young: no rank-q map keeps more).
- G6: the router weight (E, H) replaced by its best rank-r approximation on the router inputs (activation-aware
  truncation fit on calibration inputs), judged by the route flip rate on held-out inputs, routed by the
  architecture's own rule (the adapter's `route`).
- G7: a cache of the M most frequent expert pairs replaces the router's pairwise decisions; it covers the share
  of all routed pairs the top-M pairs account for (measure.Coactivation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from pytest_ladder.measure.lowrank import random_projection
from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.prefilters import lowrank_delta_bytes
from pytest_ladder.measure.routing import (
    coactivation,
    effective_weight_effective_ranks,
    effective_weight_energy,
    effective_weight_sq_norms,
    lowrank_router,
    route_flip_rate,
)
from pytest_ladder.measure.workspace import Workspace, nbytes, to_f64

F64 = torch.float64
Route = Callable[[torch.Tensor], torch.Tensor]  # router logits (T, E) -> expert indices (T, k)


# ----------------------------------------------------------------------------------------------------- G3 ----


R_EFF_TOKENS = 128  # r_eff (context, not a gate) is computed on the first this many held-out tokens


@dataclass(frozen=True)
class RouteEnergy:
    """G3 on one projection of one layer, experts (E, out, in) and routes (T, k): per-token energy at rank q of W_t
    (float64, (T,)), and the effective rank r_eff of the first `R_EFF_TOKENS` tokens' W_t, computed exactly on first
    use. r_eff is context the gate records, not what it decides; it needs every eigenvalue (a symmetric eigensolver
    per token: 9.8 ms for OLMoE-1B-7B's 1024 × 1024 Grams on an H200, 30 s for the 3 × 1000 tokens of a cell), so it
    is read on a fixed sample of tokens; energy_q needs only the top q and is computed for every token."""

    weights: torch.Tensor
    index: torch.Tensor
    gates: torch.Tensor
    rank: int
    energy: torch.Tensor
    max_bytes: int | None = None

    @cached_property
    def effective_rank(self) -> torch.Tensor:
        """r_eff of the first `R_EFF_TOKENS` tokens' effective weights (min(T, R_EFF_TOKENS),)."""
        sample = slice(0, R_EFF_TOKENS)
        return effective_weight_effective_ranks(self.weights.to(self.index.device), self.index[sample],
                                                self.gates[sample], max_bytes=self.max_bytes)

    def summary(self) -> dict[str, float]:
        return {"energy_mean": float(self.energy.mean()), "energy_min": float(self.energy.min()),
                "r_eff_mean": float(self.effective_rank.mean()), "r_eff_min": float(self.effective_rank.min()),
                "r_eff_tokens": int(self.effective_rank.numel())}


def route_energy(weights: torch.Tensor, index: torch.Tensor, gates: torch.Tensor, rank: int, *,
                 max_bytes: int | None = None) -> RouteEnergy:
    """energy_q and r_eff of every token's effective weight Σ_k g_k W_{e_k} from experts (E, out, in), routes (T, k);
    `max_bytes` bounds the working set (measure.routing.tokens_per_chunk). Computed where the routes are (the
    experts may wait on the CPU: they are moved for the computation and kept where they were)."""
    energy = effective_weight_energy(weights.to(index.device), index, gates, rank, max_bytes=max_bytes)
    return RouteEnergy(weights=weights, index=index, gates=gates, rank=rank, energy=energy, max_bytes=max_bytes)


FULL_RANK_ROUNDING = 1e-12  # |1 − energy at full rank| of a sound pipeline: float64 rounding of a trace, far below


def full_rank_residual(weights: torch.Tensor, index: torch.Tensor, gates: torch.Tensor, *,
                       max_bytes: int | None = None) -> tuple[float, float]:
    """G3's trivial pass: nothing is dropped at rank min(out, in), so energy_full(W_t) = tr(W_t W_tᵀ) / m_tᵀ K m_t = 1,
    its two sides reached by different code (the formed effective weight; the expert inner products).

    Returns the share of tokens off 1 by more than float64 rounding (`FULL_RANK_ROUNDING`), exactly 0 for a sound
    pipeline, and the largest |1 − energy_full| seen."""
    full = effective_weight_energy(weights.to(index.device), index, gates, min(weights.shape[-2:]),
                                   max_bytes=max_bytes)
    deviation = (1 - full).abs()
    return float((deviation > FULL_RANK_ROUNDING).to(F64).mean()), float(deviation.max())


def random_subspace_energy(weights: torch.Tensor, index: torch.Tensor, gates: torch.Tensor, rank: int,
                           seed: int) -> torch.Tensor:
    """Per token, the share of ‖W_t‖²_F a Haar-random rank-q input subspace Q keeps: ‖W_t Q‖² / ‖W_t‖² (T,).

    The random-basis trap of G3: it never beats the top-q singular directions (Eckart–Young). Computed as quadratic
    forms mᵀ K m of each token's mixing weights m over the expert inner products K_ef = ⟨W_e Q, W_f Q⟩ (kept) and
    ⟨W_e, W_f⟩ (total), independently of the Gram path of `route_energy`. Computed where the routes are."""
    w = to_f64(weights, index.device)
    q = random_orthonormal_columns(w.shape[-1], rank, seed, device=w.device)
    kept = effective_weight_sq_norms(w @ q, index, gates)
    return kept / effective_weight_sq_norms(w, index, gates)


# ----------------------------------------------------------------------------------------------------- G6 ----


def router_flip_rate(hidden: torch.Tensor, weight: torch.Tensor, weight_prime: torch.Tensor, route: Route) -> float:
    """Route flip rate of router W' against W on router inputs (T, H), both routed by `route` (float64 logits)."""
    hidden = hidden.to(F64)
    dense = route(hidden @ to_f64(weight, hidden.device).mT)
    return route_flip_rate(dense, route(hidden @ to_f64(weight_prime, hidden.device).mT))


def lowrank_router_weight(weight: torch.Tensor, rank: int, calibration_gram: torch.Tensor) -> torch.Tensor:
    """The claim's rank-r router: the activation-aware truncation of W (E, H) on the calibration inputs' Gram."""
    return lowrank_router(weight, rank, calibration_gram)


def random_router_weight(weight: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """A τ baseline of the same rank: W Q Qᵀ with Q spanning a Haar-random rank-r subspace of the inputs."""
    return random_projection(weight, rank, seed)


def router_flip_curve(hidden: torch.Tensor, weight: torch.Tensor, ranks: Sequence[int],
                      calibration_gram: torch.Tensor, route: Route) -> dict[int, float]:
    """Flip rate of the rank-r router at each rank (the postmortem's series)."""
    return {rank: router_flip_rate(hidden, weight, lowrank_router_weight(weight, rank, calibration_gram), route)
            for rank in ranks}


# ----------------------------------------------------------------------------------------------------- G7 ----


@dataclass(frozen=True)
class PairCache:
    """G7 on one layer: coverage of the top-M pair cache, C_pair's r_eff, pairs with lift ≥ min_lift."""

    coverage: float
    n_pairs: int
    cache_size: int
    effective_rank: float
    n_dominant: int
    coverage_curve: dict[int, float]


def pair_cache(index: torch.Tensor, n_experts: int, cache_size: int, *, min_lift: float,
               curve: Sequence[int] = ()) -> PairCache:
    """Coverage of the `cache_size` most frequent expert pairs over the routes (T, k) of one layer."""
    stats = coactivation(index, n_experts)
    n_pairs = n_experts * (n_experts - 1) // 2
    if not 1 <= cache_size <= n_pairs:
        raise ValueError(f"pair_cache: cache size must lie in 1..{n_pairs} (pairs of {n_experts} experts), "
                         f"got {cache_size}")
    return PairCache(
        coverage=stats.coverage(cache_size),
        n_pairs=n_pairs,
        cache_size=cache_size,
        effective_rank=stats.effective_rank(),
        n_dominant=int(stats.dominant_pairs(min_lift).shape[0]),
        coverage_curve={m: stats.coverage(m) for m in curve if 1 <= m <= n_pairs},
    )


# ---------------------------------------------------------------------------------------- shared routing data ----


def routed_grams(inputs: torch.Tensor, topk_index: torch.Tensor, n_experts: int, *,
                 workspace: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per expert e, G_e = X_eᵀ X_e (E, H, H) float64 over the rows of `inputs` (N, H) routed to e by `topk_index`
    (N, k) (models.capture: X_e = inputs[(topk_index == e).any(-1)]), and the counts n_e (E,).

    With a bounded `workspace` the Grams are computed on its device a chunk of experts at a time and kept on the
    CPU (an OLMoE-1B-7B layer's are 2.1 GB)."""
    device = inputs.device if workspace is None else workspace.device
    x = to_f64(inputs, device)
    membership = torch.zeros(x.shape[0], n_experts, dtype=F64, device=device)
    membership.scatter_(1, topk_index.to(device).long(), 1.0)
    hidden = x.shape[-1]
    if workspace is None:
        return torch.einsum("ne,ni,nj->eij", membership, x, x), membership.sum(0)
    parts = []
    for span in workspace.spans(n_experts, 2 * nbytes((hidden, hidden)) + nbytes(tuple(x.shape))):
        routed = membership[:, span].mT.unsqueeze(-1) * x  # (c, N, H): rows not routed to the expert are 0
        parts.append(workspace.store(routed.mT @ routed))
        del routed
    return torch.cat(parts), membership.sum(0).cpu()


class RoutingStudy:
    """The routing data G3, G4, G6 and G7 read, captured once per loaded model, corpora and size (the session keeps
    one per size: rung_fixtures.ladder_routing).

    Per task: the held-out capture (every MoE layer: top-k indices and weights, router inputs) over the first
    `n_points` held-out tokens; the calibration capture (every MoE layer: the router-input Gram Σ x xᵀ and the token
    count per expert) over the first `calibration_points` calibration tokens, per size asked for.
    """

    def __init__(self, loaded: Any, corpora: Mapping[str, Any], *, n_points: int, batch_size: int = 8) -> None:
        self.loaded, self.corpora, self.n_points, self.batch_size = loaded, corpora, n_points, batch_size
        self._captures: dict[tuple[str, str, int], Any] = {}
        self._grams: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._stacks: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def adapter(self) -> Any:
        return self.loaded.adapter

    @property
    def n_layers(self) -> int:
        return int(self.loaded.model.config.num_hidden_layers)

    def sequences(self, task: str, split: str, n_points: int) -> list[list[int]]:
        """The model inputs of the split's first `n_points` tokens (models.corpora.token_sequences)."""
        from pytest_ladder.models.corpora import token_sequences

        return token_sequences(self.corpora[task].split(split), self.loaded.tokenizer, n_points,
                               self.loaded.max_length, self.loaded.prefix_token_id)

    def capture(self, task: str, split: str, spec: Any, n_points: int | None = None) -> Any:
        """Capture `spec` on the split's first `n_points` tokens (default: the held-out size), model as it is now."""
        from pytest_ladder.models.capture import capture

        pad = self.loaded.tokenizer.pad_token_id
        return capture(self.loaded.model, self.adapter, self.sequences(task, split, n_points or self.n_points), spec,
                       batch_size=self.batch_size, pad_token_id=self.loaded.prefix_token_id if pad is None else pad,
                       desc=f"capture {task} {split}")

    def _cached(self, task: str, split: str, n_points: int) -> Any:
        from pytest_ladder.models.capture import CaptureSpec

        if (task, split, n_points) not in self._captures:
            spec = (CaptureSpec(gram=False, topk=True, inputs=True) if split == "heldout"
                    else CaptureSpec(gram=False, topk=False, input_gram=True))
            captured = self.capture(task, split, spec, n_points)
            if split == "calibration":  # an (H, H) float64 Gram per layer (48 × 32 MiB for OLMoE-1B-7B's 3 tasks)
                for layer in captured.layers.values():
                    layer.input_gram, layer.expert_tokens = (
                        None if t is None else self.workspace.store(t) for t in (layer.input_gram, layer.expert_tokens))
            self._captures[task, split, n_points] = captured
        return self._captures[task, split, n_points]

    def heldout(self, task: str, layer: int | None = None) -> Any:
        """The dense model's held-out capture of `task` (a LayerCapture: topk_index, topk_weight, inputs)."""
        captured = self._cached(task, "heldout", self.n_points)
        return captured if layer is None else captured[layer]

    def calibration(self, task: str, layer: int, n_points: int) -> Any:
        """The calibration LayerCapture of `layer` over `n_points` calibration tokens (input_gram, expert_tokens), on
        the study's device. The session keeps them where the workspace stores results (the CPU when its budget is
        bounded): they serve every rung of the session, and 1.5 GiB of them held on the GPU counted against each."""
        import dataclasses

        kept = self._cached(task, "calibration", n_points)[layer]
        input_gram, expert_tokens = (None if t is None else t.to(self.device)
                                     for t in (kept.input_gram, kept.expert_tokens))
        return dataclasses.replace(kept, input_gram=input_gram, expert_tokens=expert_tokens)

    @property
    def device(self) -> torch.device:
        """Where the study computes: the model's execution device (a GPU when offloaded behind one)."""
        from pytest_ladder.models.capture import model_device

        return model_device(self.loaded.model)

    @property
    def workspace(self) -> Workspace:
        """The GPU working set the study may use beyond the weights (--ladder-gpu-workspace; unbounded on the CPU)."""
        return Workspace.on(self.device, getattr(self.loaded.spec, "gpu_workspace", None))

    def expert_grams(self, task: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out routed Grams G_e (E, H, H) and counts (E,) of `layer` on `task` (`routed_grams`): on `device`,
        or on the CPU under a bounded workspace (moved in chunks of experts when used)."""
        if (task, layer) not in self._grams:
            held = self.heldout(task, layer)
            workspace = self.workspace
            self._grams[task, layer] = routed_grams(held.inputs if workspace.bounded else held.inputs.to(self.device),
                                                    held.topk_index, self.adapter.n_experts,
                                                    workspace=workspace if workspace.bounded else None)
        return self._grams[task, layer]

    def stacks(self, layer: int) -> dict[str, torch.Tensor]:
        """The layer's experts {gate: (E, I, H), up: (E, I, H), down: (E, H, I)} at their stored dtype: read-only
        views of its live parameters where the layer is resident on `device` (no copy anywhere; readers never write
        them), else read meta-safe one expert at a time onto `device` (the CPU under a bounded workspace)."""
        if layer not in self._stacks:
            views = {p: self.adapter.resident_experts(layer, p, self.device) for p in ("gate", "up", "down")}
            if all(view is not None for view in views.values()):
                self._stacks[layer] = views
                return views
            experts = [self.adapter.expert_weights(layer, e) for e in range(self.adapter.n_experts)]
            home = "cpu" if self.workspace.bounded else self.device
            self._stacks[layer] = {p: torch.stack([getattr(w, p).to(home) for w in experts])
                                   for p in ("gate", "up", "down")}
        return self._stacks[layer]

    def route(self, logits: torch.Tensor, layer: int) -> torch.Tensor:
        """Expert indices (T, k) from router logits by the architecture's rule."""
        return self.adapter.route(logits, layer)[0]


def router_delta_bytes(tensors: Mapping[str, tuple[torch.dtype, Sequence[int]]], rank: int | None) -> int:
    """Gate 1 for G6: rank-r factors of every MoE layer's router (E, H) minus the dense routers, at their stored dtype,
    from a checkpoint's {name: (dtype, shape)} headers, in any supported family's layout
    (models.adapters.stored_router_layer). `rank=None` keeps the dense routers: exactly 0."""
    from pytest_ladder.models.adapters import stored_router_layer

    routers = [(dtype, tuple(shape)) for name, (dtype, shape) in tensors.items()
               if stored_router_layer(name) is not None]
    if not routers:
        raise ValueError("router_delta_bytes: no router weights (layers.L.mlp.gate.weight or "
                         "layers.L.block_sparse_moe.gate.weight) in the checkpoint")
    if rank is None:
        return 0
    return sum(lowrank_delta_bytes(shape, rank, dtype) for dtype, shape in routers)
