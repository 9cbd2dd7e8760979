"""Router compressors on one loaded model: the heavy lifting of the generic router rung (rungs/test_router.py).

A router compressor (pytest_ladder.compressors.RouterCompressor) turns each MoE layer's router W_r (E, H) into W_r′
and declares the bytes the compressed routers store. The study judges it the way G6 judges its rank-r router:

- bytes: the declared storage of every MoE layer's router minus the dense routers at their stored dtype;
- route_flip_rate per (layer, task) cell: the share of held-out tokens whose top-k set changes when the layer's router
  inputs (the dense model's, captured once by the routing study) are routed by W_r′ instead of W_r with the
  architecture's own rule, against the τ floor of random controls storing the same bytes;
- delta_nll at full depth: every MoE layer's router replaced (at the stored dtype) in the running model, the held-out
  NLL of each task against the dense model's.

Built-in compressors: `IdentityRouter` (W_r′ = W_r, the trivial pass), `RandomProjectionRouter` (W_r Q Qᵀ with Q a
Haar-random rank-r input subspace whose factor W_r Q takes the method's bytes: the default τ baseline) and
`RandomRankOneRouter` (every logit read off one random input direction: the default declared-harmful control).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.compressors import IDENTITY, METHOD, named_compressor, own_or
from pytest_ladder.measure.storage import (
    Artifact,
    DeclaredBytes,
    TensorStorage,
    combine,
    declared_bytes,
    dense_artifact,
)
from pytest_ladder.measure.workspace import to_f64

F64 = torch.float64



def router_stacks(tensors: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> dict[str, tuple[torch.dtype, tuple]]:
    """{"layers.L.router": (stored dtype, (E, H))} of every MoE layer's router, from a checkpoint's {name: (dtype,
    shape)} headers in any supported family's layout (models.adapters.stored_router_layer)."""
    from pytest_ladder.models.adapters import stored_router_layer

    found = {}
    for name, (dtype, shape) in tensors.items():
        layer = stored_router_layer(name)
        if layer is not None:
            found[f"layers.{layer}.router"] = (dtype, tuple(shape))
    if not found:
        raise ValueError("router_stacks: no router weights (layers.L.mlp.gate.weight or "
                         "layers.L.block_sparse_moe.gate.weight) in the checkpoint")
    return dict(sorted(found.items(), key=lambda item: int(item[0].split(".")[1])))


def dense_routers_artifact(routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
    return combine(dense_artifact(name, shape, dtype) for name, (dtype, shape) in routers.items())


# --------------------------------------------------------------------------------------- built-in compressors ---


class IdentityRouter:
    """W_r′ = W_r, storing the dense routers as they are: the trivial pass (every gate exactly 0)."""

    def compress(self, layer: int, router: torch.Tensor) -> torch.Tensor:
        return router.to(F64)

    def storage(self, routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        return dense_routers_artifact(routers)


@dataclass(frozen=True)
class RandomProjectionRouter:
    """W_r′ = (W_r Q) Qᵀ with Q (H, r) spanning a Haar-random input subspace, one per (seed, layer), r = max(1,
    floor(fraction · H)): the factor W_r Q (E, r) at the stored dtype takes `fraction` of the dense router bytes (Q
    comes from the seed, stored as nothing). The default τ-floor baseline."""

    fraction: float
    seed: int

    def rank(self, hidden: int) -> int:
        return max(1, min(hidden, math.floor(self.fraction * hidden)))

    def compress(self, layer: int, router: torch.Tensor) -> torch.Tensor:
        q = random_orthonormal_columns(router.shape[-1], self.rank(router.shape[-1]), self.seed * 1_000_003 + layer,
                                       device=router.device)
        return (router.to(F64) @ q) @ q.mT

    def storage(self, routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        return Artifact(tuple(TensorStorage(f"{name}.wq", (experts, self.rank(hidden)), dtype=dtype, kind="factor")
                              for name, (dtype, (experts, hidden)) in routers.items()))


@dataclass(frozen=True)
class RandomRankOneRouter:
    """W_r′ = (W_r q) qᵀ for one random unit input direction q per layer: every expert's logit is a multiple of one
    number per token, so the routes follow the ordering of one column, not the router. The default declared-harmful
    control (it must fail the route-flip gate on the hardest cell)."""

    seed: int = 0

    def compress(self, layer: int, router: torch.Tensor) -> torch.Tensor:
        q = random_orthonormal_columns(router.shape[-1], 1, self.seed * 1_000_003 + layer, device=router.device)
        return (router.to(F64) @ q) @ q.mT

    def storage(self, routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        return Artifact(tuple(TensorStorage(f"{name}.wq", (experts, 1), dtype=dtype, kind="factor")
                              for name, (dtype, (experts, _)) in routers.items()))


def router_bytes(compressor: Any, routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> DeclaredBytes:
    """Gate 1 of a router compressor: its declared bytes minus the dense routers' (< 0 saves)."""
    return declared_bytes(compressor, dense_routers_artifact(routers), routers)


def random_control(compressor: Any, seed: int, fraction: float) -> Any:
    """The τ baseline of `compressor` for `seed`: its own `random_control(seed)`, else a RandomProjectionRouter
    taking the same `fraction` of the dense router bytes."""
    return own_or(compressor, "random_control", RandomProjectionRouter(fraction, seed), seed)


def harmful_control(compressor: Any) -> Any:
    """The declared-harmful control: the compressor's own `harmful_control()`, else RandomRankOneRouter()."""
    return own_or(compressor, "harmful_control", RandomRankOneRouter())


# ------------------------------------------------------------------------------------------------ the study ---


class RouterStudy:
    """Router compressors on one loaded model over the shared routing data (probes.routes.RoutingStudy), each
    quantity once. Compressors are named by keys: IDENTITY and whatever `compressors` maps ({METHOD: the method,
    HARMFUL: its harmful control, ("random", seed): a τ baseline})."""

    def __init__(self, routing: Any, *, compressors: Mapping[tuple, Any] | None = None) -> None:
        self.routing = routing
        self.compressors = dict(compressors or {})
        self._weights: dict[int, torch.Tensor] = {}
        self._compressed: dict[tuple, torch.Tensor] = {}
        self._flips: dict[tuple, float] = {}
        self._nll: dict[tuple, Any] = {}
        self._routes: dict[tuple, list[torch.Tensor]] = {}

    @property
    def adapter(self) -> Any:
        return self.routing.adapter

    def compressor(self, key: tuple) -> Any:
        return named_compressor(self.compressors, key, IdentityRouter(), type(self).__name__)

    def weight(self, layer: int) -> torch.Tensor:
        """The layer's router (E, H) as stored, on the routing study's device."""
        if layer not in self._weights:
            self._weights[layer] = self.adapter.router_weight(layer).to(self.routing.device)
        return self._weights[layer]

    def compressed(self, layer: int, key: tuple) -> torch.Tensor:
        """W_r′ of `layer` under compressor `key`, float64."""
        if (layer, key) not in self._compressed:
            weight = self.weight(layer)
            found = self.compressor(key).compress(layer, weight)
            if tuple(found.shape) != tuple(weight.shape):
                raise ValueError(f"{type(self.compressor(key)).__name__}.compress(layer={layer}) returned shape "
                                 f"{tuple(found.shape)}; the router is {tuple(weight.shape)}: return the same shape")
            self._compressed[(layer, key)] = to_f64(found, weight.device)
        return self._compressed[(layer, key)]

    def flip_rate(self, layer: int, task: str, key: tuple = METHOD) -> float:
        """Share of `task`'s held-out tokens whose top-k set at `layer` changes under W_r′ (the dense model's router
        inputs, routed by the architecture's rule in float64)."""
        if (layer, task, key) not in self._flips:
            from pytest_ladder.probes.routes import router_flip_rate

            hidden = self.routing.heldout(task, layer).inputs.to(self.routing.device)
            self._flips[(layer, task, key)] = router_flip_rate(
                hidden, self.weight(layer), self.compressed(layer, key),
                lambda logits: self.routing.route(logits, layer))
        return self._flips[(layer, task, key)]

    def tau(self, layer: int, task: str, keys: Sequence[tuple]) -> dict:
        """The τ floor on (layer, task): the lowest flip rate of the baselines `keys`, and every value."""
        values = [self.flip_rate(layer, task, key) for key in keys]
        return {"tau": min(values), "values": values}

    def _deployed(self, task: str, key: tuple | None) -> tuple[Any, list[torch.Tensor]]:
        """(rolling NLL, top-k routes per MoE layer) of `task` with every router replaced (None: dense)."""
        if (task, key) not in self._nll:
            from pytest_ladder.models.capture import CaptureSpec
            from pytest_ladder.models.nll import rolling_nll
            from pytest_ladder.models.weights import patched_parameters
            from pytest_ladder.probes.expert_outputs import heldout_texts

            routing, loaded, adapter = self.routing, self.routing.loaded, self.adapter
            texts = heldout_texts(routing.corpora[task].heldout, loaded.tokenizer, routing.n_points)
            updates = {} if key is None else {
                adapter._param(adapter.router_module(layer), "weight"):
                    self.compressed(layer, key).to(self.weight(layer).dtype)
                for layer in adapter.moe_layers()}
            with patched_parameters(loaded.model, updates):
                nll = rolling_nll(loaded.model, loaded.tokenizer, texts, batch_size=routing.batch_size,
                                  desc=f"nll {task}")
                captured = (routing.heldout(task) if key is None
                            else routing.capture(task, "heldout", CaptureSpec(gram=False, topk=True)))
            self._nll[(task, key)] = nll
            self._routes[(task, key)] = [captured[layer].topk_index for layer in adapter.moe_layers()]
        return self._nll[(task, key)], self._routes[(task, key)]

    def deploy(self, task: str, key: tuple = METHOD) -> tuple[float, float]:
        """(route flip rate over every MoE layer, ΔNLL fraction) of `task` at full depth with every router replaced
        by compressor `key`, against the dense model."""
        from pytest_ladder.measure.loss import delta_nll_fraction
        from pytest_ladder.measure.routing import route_flip_rate

        dense_nll, dense_routes = self._deployed(task, None)
        nll, routes = self._deployed(task, key)
        return route_flip_rate(dense_routes, routes), delta_nll_fraction(
            dense_nll.nats, nll.nats, tokens_dense=dense_nll.tokens, tokens_comp=nll.tokens)

    def trivial_pass(self, layer: int, task: str, routers: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Any:
        """The uncompressed pipeline (W_r′ = W_r) through every gate: the cell's flip rate, flips and ΔNLL of `task`
        at full depth, and the byte delta of the dense routers (measure.traps.trivial_pass_trap)."""
        from pytest_ladder.measure.traps import TrapOutcome

        flips, delta_nll = self.deploy(task, IDENTITY)
        refs = {"route_flip_rate": float(self.flip_rate(layer, task, IDENTITY)), "deployed_route_flip_rate": float(flips),
                "delta_nll": float(delta_nll), "delta_bytes": float(router_bytes(IdentityRouter(), routers).delta)}
        return TrapOutcome(name="trivial_pass", expected="flip rates, ΔNLL and byte delta all exactly 0",
                           observed=max(abs(v) for v in refs.values()), refs=refs,
                           fired_as_declared=all(v == 0.0 for v in refs.values()))
