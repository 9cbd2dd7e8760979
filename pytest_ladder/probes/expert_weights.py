"""Expert-weight compression on a loaded MoE model, for any compressor (pytest_ladder.compressors): W -> W′ of every
routed expert's gate, up and down projections, judged by the protocol's gates. R1 (probes.rotorquant) and the generic
expert-weights rung (rungs/test_expert_weights.py) both run on `ExpertWeightStudy`.

Gates: activation error of a layer on a task's held-out routed inputs, pooled over its experts and the three weight
types — gate and up read the routed inputs X_e (Gram G_e), down reads the dense model's intermediate activations
act(gate X_e) ⊙ (up X_e) (Gram M_e) — i.e. sqrt(Σ tr(Δ G Δᵀ) / Σ tr(W G Wᵀ)) over (expert, weight type); task
conditioning, the worst task of that error; route flips and ΔNLL of the model with every MoE layer's experts replaced
(full depth), per task; bytes from the compressor's declared storage against the dense experts at their stored dtype
(`compressor_bytes`).

Bounded GPU workspace: W′ is computed on the device a chunk of experts at a time and kept on the CPU; the deployed
model receives W′ at the stored dtype. Built-in compressors: `Identity` (the trivial pass), `RandomProjection` (the
default τ-floor baseline: the method's bytes spent on a random subspace), `RowQuant` (the default declared-harmful
control: symmetric INT-b with one scale per row).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pytest_ladder.measure.errors import ActivationError, activation_error
from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.quant import fake_quant
from pytest_ladder.compressors import IDENTITY, METHOD, named_compressor, own_or
from pytest_ladder.measure.storage import (
    Artifact,
    DeclaredBytes,
    TensorStorage,
    combine,
    declared_bytes,
    dense_artifact,
)
from pytest_ladder.measure.workspace import Workspace, nbytes

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter

F64 = torch.float64
PROJECTIONS = ("gate", "up", "down")

def expert_stacks(tensors: Mapping[str, tuple[torch.dtype, Sequence[int]]]
                  ) -> dict[str, tuple[torch.dtype, tuple[int, int, int]]]:
    """{"layers.L.<gate|up|down>": (stored dtype, (E, out, in))} from a checkpoint's {name: (dtype, shape)} headers
    (models.checkpoint.Checkpoint.dtype_bytes), per-expert keys or transformers 5's fused stacks, in any supported
    family's layout (models.adapters.stored_expert_key)."""
    from pytest_ladder.models.adapters import stored_expert_key

    per_expert: dict[tuple[int, str], dict[int, tuple[torch.dtype, tuple[int, ...]]]] = {}
    stacks: dict[str, tuple[torch.dtype, tuple[int, int, int]]] = {}
    for name, (dtype, shape) in tensors.items():
        key = stored_expert_key(name)
        if key is None:
            continue
        layer, expert, projection = key
        if expert is not None:
            per_expert.setdefault((layer, projection), {})[expert] = (dtype, tuple(shape))
        else:
            kind = projection
            e, out, inp = (int(s) for s in shape)
            if kind == "gate_up":
                stacks[f"layers.{layer}.gate"] = (dtype, (e, out // 2, inp))
                stacks[f"layers.{layer}.up"] = (dtype, (e, out // 2, inp))
            else:
                stacks[f"layers.{layer}.down"] = (dtype, (e, out, inp))
    for (layer, projection), experts in per_expert.items():
        dtype, shape = experts[min(experts)]
        stacks[f"layers.{layer}.{projection}"] = (dtype, (len(experts), shape[0], shape[1]))
    if not stacks:
        raise ValueError("expert_stacks: no routed-expert tensors found (expected layers.L.mlp.experts.E.<gate|up|"
                         "down>_proj.weight, layers.L.block_sparse_moe.experts.E.<w1|w3|w2>.weight or "
                         "layers.L.mlp.experts.<gate_up|down>_proj); is this an MoE checkpoint?")
    return dict(sorted(stacks.items(), key=lambda item: (int(item[0].split(".")[1]), item[0])))


def layer_stacks(adapter: MoEAdapter, layer: int) -> dict[str, torch.Tensor]:
    """{gate: (E, I, H), up: (E, I, H), down: (E, H, I)} of one MoE layer at their stored dtype (offload-safe)."""
    experts = [adapter.expert_weights(layer, e) for e in range(adapter.n_experts)]
    return {p: torch.stack([getattr(w, p) for w in experts]) for p in PROJECTIONS}


@dataclass(frozen=True)
class LayerGrams:
    """A layer's held-out routed data: G_e = X_eᵀX_e (E, H, H) and M_e of the intermediate activations (E, I, I)."""

    inputs: torch.Tensor
    intermediate: torch.Tensor

    def for_projection(self, projection: str) -> torch.Tensor:
        return self.intermediate if projection == "down" else self.inputs


def layer_grams(inputs: torch.Tensor, topk_index: torch.Tensor, stacks: Mapping[str, torch.Tensor], act: Any,
                *, chunk: int = 4096, workspace: Workspace | None = None) -> LayerGrams:
    """Routed Grams of one layer from the captured MoE inputs (N, H) and top-k indices (N, k): per expert e, X_e the
    rows routed to e, G_e = X_eᵀX_e (probes.routes.routed_grams) and M_e = Hᵀ H with H = act(X_e gateᵀ) ⊙ (X_e upᵀ)
    computed at the weights' dtype as the model does; Grams in float64."""
    from pytest_ladder.probes.routes import routed_grams

    gate, up = stacks["gate"], stacks["up"]
    n_experts, inter, _ = gate.shape
    device = inputs.device if workspace is None else workspace.device
    inputs, topk_index = inputs.to(device), topk_index.to(device)
    g_mid = torch.zeros(n_experts, inter, inter, dtype=F64, device=device)
    for expert in range(n_experts):
        rows = inputs[(topk_index == expert).any(dim=-1)]
        for start in range(0, rows.shape[0], chunk):
            x = rows[start:start + chunk].to(gate.dtype)
            mid = (act(x @ gate[expert].to(device).mT) * (x @ up[expert].to(device).mT)).to(F64)
            g_mid[expert] += mid.mT @ mid
    if workspace is not None:
        g_mid = workspace.store(g_mid)
    return LayerGrams(routed_grams(inputs, topk_index, n_experts, workspace=workspace)[0], g_mid)


@dataclass(frozen=True)
class LayerError:
    """Gate 2 on one layer and task: pooled relative error and the error per weight type."""

    pooled: float
    per_projection: dict[str, float]


def layer_error(stacks: Mapping[str, torch.Tensor], approx: Mapping[str, torch.Tensor], grams: LayerGrams, *,
                workspace: Workspace | None = None) -> LayerError:
    """sqrt(Σ tr(Δ G Δᵀ) / Σ tr(W G Wᵀ)) over experts and weight types (each with its own Gram), and per type."""
    return _pooled({p: activation_error(stacks[p], approx[p], grams.for_projection(p), workspace=workspace)
                    for p in PROJECTIONS})


def _pooled(errors: Mapping[str, ActivationError]) -> LayerError:
    sq_error = sq_norm = 0.0
    per_projection = {}
    for projection in PROJECTIONS:
        error = errors[projection]
        per_projection[projection] = error.pooled
        sq_error += float(error.sq_error.clamp_min(0).sum())
        sq_norm += float(error.sq_norm.sum())
    if not sq_norm > 0:
        raise ValueError("layer_error: no held-out tokens were routed to this layer's experts; capture more points")
    return LayerError((sq_error / sq_norm) ** 0.5, per_projection)


def layer_error_of_pieces(stacks: Mapping[str, torch.Tensor],
                          pieces: Iterable[tuple[slice, Mapping[str, torch.Tensor]]], grams: LayerGrams,
                          device: torch.device) -> LayerError:
    """`layer_error` from W′ given a chunk of experts at a time ((span, {weight type: W′ on `device`})): each chunk
    is scored on `device` against its experts' W and Grams, then dropped."""
    sq_error: dict[str, list[torch.Tensor]] = {p: [] for p in PROJECTIONS}
    sq_norm: dict[str, list[torch.Tensor]] = {p: [] for p in PROJECTIONS}
    for span, chunk in pieces:
        for p in PROJECTIONS:
            found = activation_error(stacks[p][span].to(device), chunk[p],
                                     grams.for_projection(p)[span].to(device))
            sq_error[p].append(found.sq_error.cpu())
            sq_norm[p].append(found.sq_norm.cpu())
        del chunk
    return _pooled({p: ActivationError(sq_error=torch.cat(sq_error[p]), sq_norm=torch.cat(sq_norm[p]))
                    for p in PROJECTIONS})


def deploy_updates(adapter: MoEAdapter, approx: Mapping[int, Mapping[str, torch.Tensor]]
                   ) -> dict[tuple[str, int], torch.Tensor]:
    """Parameter updates installing the rebuilt experts {layer: {weight type: (E, out, in)}} at the stored dtype (for
    models.weights.patched_parameters); the uncompressed stacks write every weight back bit for bit."""
    from pytest_ladder.models.adapters import ExpertWeights

    updates: dict[tuple[str, int], torch.Tensor] = {}
    for layer, stacks in approx.items():
        dense = adapter.expert_weights(layer, 0)  # the stored dtypes (one read per layer: offloaded, one from disk)
        for expert in range(adapter.n_experts):
            weights = ExpertWeights(*(stacks[p][expert].to(getattr(dense, p).dtype) for p in PROJECTIONS))
            updates.update(adapter.expert_updates(layer, expert, weights))
    return updates



# --------------------------------------------------------------------------------------- built-in compressors ---


class Identity:
    """W′ = W, storing the dense experts as they are: the trivial pass (every gate exactly 0)."""

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor], experts: range | None = None
                 ) -> dict[str, torch.Tensor]:
        return {p: w.to(F64) for p, w in stacks.items()}

    def storage(self, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        return dense_stacks_artifact(stacks)


@dataclass(frozen=True)
class RandomProjection:
    """W′ = (W Q) Qᵀ with Q (in, r) orthonormal columns spanning a Haar-random subspace, one per (seed, layer, weight
    type), r = max(1, floor(fraction · in)): the factor W Q (out, r) at the stored dtype takes `fraction` of the dense
    bytes (Q comes from the seed, stored as nothing). The default τ-floor baseline: the method's bytes spent on a
    random choice of subspace."""

    fraction: float
    seed: int

    def rank(self, in_features: int) -> int:
        return max(1, min(in_features, math.floor(self.fraction * in_features)))

    def basis(self, layer: int, projection: str, in_features: int, device: Any) -> torch.Tensor:
        seed = self.seed * 1_000_003 + 3 * layer + PROJECTIONS.index(projection)
        return random_orthonormal_columns(in_features, self.rank(in_features), seed, device=device)

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor], experts: range | None = None
                 ) -> dict[str, torch.Tensor]:
        out = {}
        for projection, w in stacks.items():
            q = self.basis(layer, projection, w.shape[-1], w.device)
            out[projection] = (w.to(F64) @ q) @ q.mT
        return out

    def storage(self, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        return Artifact(tuple(TensorStorage(f"{name}.wq", (e, out, self.rank(inp)), dtype=dtype, kind="factor")
                              for name, (dtype, (e, out, inp)) in stacks.items()))


@dataclass(frozen=True)
class RowQuant:
    """Symmetric INT-b with one scale per output row of every expert matrix (no rotation): at b = 2 the default
    declared-harmful control (three levels per row cannot hold a trained expert)."""

    bits: int = 2
    scale_dtype: torch.dtype = torch.float16

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor], experts: range | None = None
                 ) -> dict[str, torch.Tensor]:
        from pytest_ladder.probes.quant_weights import row_spec

        return {p: fake_quant(w.to(F64), row_spec(self.bits, w.shape[-1], scale_dtype=self.scale_dtype))
                for p, w in stacks.items()}

    def storage(self, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
        from pytest_ladder.probes.quant_weights import row_spec

        return combine(row_spec(self.bits, shape[-1], scale_dtype=self.scale_dtype).artifact(name, tuple(shape))
                       for name, (_, shape) in stacks.items())


def dense_stacks_artifact(stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Artifact:
    """The dense experts at their stored dtype: {"layers.L.<gate|up|down>": (dtype, (E, out, in))} -> Artifact."""
    return combine(dense_artifact(name, shape, dtype) for name, (dtype, shape) in stacks.items())


CompressorBytes = DeclaredBytes  # gate 1 of an expert-weights compressor


def compressor_bytes(compressor: Any, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> DeclaredBytes:
    """global_delta_bytes of the compressor's declared storage of every expert stack against the dense stacks."""
    return declared_bytes(compressor, dense_stacks_artifact(stacks), stacks)


def random_control(compressor: Any, seed: int, fraction: float) -> Any:
    """The τ-floor baseline of `compressor` for `seed`: its own `random_control(seed)` when it has one, else a
    RandomProjection taking the same `fraction` of the dense bytes."""
    return own_or(compressor, "random_control", RandomProjection(fraction, seed), seed)


def harmful_control(compressor: Any) -> Any:
    """The declared-harmful control of `compressor`: its own `harmful_control()` when it has one, else RowQuant(2)."""
    return own_or(compressor, "harmful_control", RowQuant(2))


# ------------------------------------------------------------------------------------------------ the study ---


class ExpertWeightStudy:
    """Expert-weight compressors on one loaded model over the shared routing data (probes.routes.RoutingStudy), each
    quantity once.

    Compressors are named by keys: IDENTITY (W′ = W) and whatever `compressors` maps ({METHOD: the method, ("random",
    seed): a τ baseline, ...}); each follows pytest_ladder.compressors.ExpertWeightCompressor. Held-out data per task:
    the routing study's held-out tokens (routes, Grams) and the first documents reaching as many tokens (ΔNLL).
    """

    def __init__(self, routing: Any, *, compressors: Mapping[tuple, Any] | None = None) -> None:
        from pytest_ladder.models.capture import model_device

        self.routing = routing
        self.compressors = dict(compressors or {})
        self.device = model_device(routing.loaded.model)  # where weights, Grams and round trips are computed
        self._stacks: dict[int, dict[str, torch.Tensor]] = {}
        self._views: set[int] = set()  # layers whose stacks are views of the live parameters (see `stacks`)
        self._grams: dict[tuple[int, str], LayerGrams] = {}
        self._errors: dict[tuple, LayerError] = {}
        self._nll: dict[tuple, Any] = {}
        self._routes: dict[tuple, list[torch.Tensor]] = {}

    @property
    def adapter(self) -> Any:
        return self.routing.adapter

    @property
    def workspace(self) -> Workspace | None:
        """The routing study's GPU workspace when bounded: stacks, Grams and W' then wait on the CPU and are
        computed in chunks of experts on the device."""
        workspace = self.routing.workspace
        return workspace if workspace.bounded else None

    def compressor(self, key: tuple) -> Any:
        """The compressor named `key` (IDENTITY: W′ = W)."""
        return named_compressor(self.compressors, key, Identity(), type(self).__name__)

    def stacks(self, layer: int, *, keep: bool = True) -> dict[str, torch.Tensor]:
        """The layer's expert stacks on the study's device, or under a bounded workspace on the CPU, unless the layer
        is resident on the workspace's device: then read-only views of its live parameters (no copy to the CPU and
        back; every consumer reads them, and compressors get copies: `pieces`, `compress`). Kept for later calls
        unless `keep` is False."""
        if layer in self._stacks:
            return self._stacks[layer]
        workspace = self.workspace
        views = None if workspace is None else {
            p: self.adapter.resident_experts(layer, p, workspace.device) for p in PROJECTIONS}
        if views is not None and all(v is not None for v in views.values()):
            stacks = views
            self._views.add(layer)
        else:
            home = "cpu" if workspace is not None else self.device
            stacks = {p: w.to(home) for p, w in layer_stacks(self.adapter, layer).items()}
        if keep:
            self._stacks[layer] = stacks
        return stacks

    def _compress(self, layer: int, key: tuple, stacks: Mapping[str, torch.Tensor], experts: range
                  ) -> dict[str, torch.Tensor]:
        found = self.compressor(key).compress(layer, stacks, experts)
        return {p: found[p].to(F64) for p in stacks}

    def pieces(self, layer: int, key: tuple, stacks: Mapping[str, torch.Tensor]
               ) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """W′ of the layer's experts under a bounded workspace, a chunk of experts at a time on the workspace's
        device: (experts span, {weight type: W′ float64}), as many experts as `piece_bytes` fits."""
        workspace = self.workspace
        n_experts = next(iter(stacks.values())).shape[0]
        for span in workspace.spans(n_experts, self.piece_bytes(stacks)):
            yield span, self._compress(layer, key, {p: w[span].to(workspace.device, copy=True)
                                                    for p, w in stacks.items()}, range(n_experts)[span])

    @staticmethod
    def piece_bytes(stacks: Mapping[str, torch.Tensor]) -> int:
        """What one expert of `pieces` holds on the device: float64 W, working copies and W′ (6 per matrix) and the
        activation error's products."""
        item = 6 * sum(nbytes(tuple(w.shape[1:])) for w in stacks.values())
        return item + max(8 * (5 * w.shape[-2] * w.shape[-1] + 2 * w.shape[-1] ** 2) for w in stacks.values())

    def _chunked(self, key: tuple) -> bool:
        """Whether `key`'s W′ is made a chunk of experts at a time (a bounded workspace and a per-expert compressor;
        one that sets `per_expert = False` gets the whole layer where the stacks wait)."""
        return self.workspace is not None and getattr(self.compressor(key), "per_expert", True) is not False

    def compress(self, layer: int, key: tuple, *, keep: bool = True, stored_dtype: bool = False,
                 on_device: bool = False) -> dict[str, torch.Tensor]:
        """W' of one layer's experts under compressor `key` (float64; with `stored_dtype` converted where computed to
        the stored dtype, as deployed); `keep` as in `stacks`. Under a bounded workspace a per-expert compressor runs
        on the device a chunk of experts at a time (`pieces`), its result kept on the CPU, or gathered on the
        device with `on_device` (a deploy's one layer at the stored dtype: 0.8 GB on OLMoE-1B-7B)."""
        stacks = self.stacks(layer, keep=keep)

        def cast(p: str, w: torch.Tensor) -> torch.Tensor:
            return w.to(stacks[p].dtype) if stored_dtype else w

        if not self._chunked(key):
            n_experts = next(iter(stacks.values())).shape[0]
            if layer in self._views:  # a copy where the stacks wait without views (the CPU), never the live weights
                stacks = {p: w.to("cpu", copy=True) for p, w in stacks.items()}
            return {p: cast(p, w) for p, w in self._compress(layer, key, stacks, range(n_experts)).items()}
        parts: dict[str, list[torch.Tensor]] = {p: [] for p in stacks}
        for _, chunk in self.pieces(layer, key, stacks):
            for p, w in chunk.items():
                parts[p].append(cast(p, w) if on_device else cast(p, w).cpu())
        return {p: torch.cat(v) for p, v in parts.items()}

    def grams(self, layer: int, task: str) -> LayerGrams:
        if (layer, task) not in self._grams:
            held = self.routing.heldout(task, layer)
            workspace = self.workspace
            if workspace is None:
                self._grams[(layer, task)] = layer_grams(held.inputs.to(self.device),
                                                         held.topk_index.to(self.device), self.stacks(layer),
                                                         self.adapter.experts_module(layer).act_fn)
            else:
                self._grams[(layer, task)] = layer_grams(held.inputs, held.topk_index, self.stacks(layer),
                                                         self.adapter.experts_module(layer).act_fn,
                                                         workspace=workspace)
        return self._grams[(layer, task)]

    def error(self, layer: int, task: str, key: tuple = METHOD) -> LayerError:
        """Gate 2 on (layer, task) for compressor `key`. Made a chunk at a time, W′ is scored where it is made and
        never gathered (per expert the values `layer_error` gives the gathered W′)."""
        if (layer, task, key) not in self._errors:
            stacks, grams = self.stacks(layer), self.grams(layer, task)
            if self._chunked(key):
                self._errors[(layer, task, key)] = layer_error_of_pieces(stacks, self.pieces(layer, key, stacks),
                                                                         grams, self.workspace.device)
            else:
                self._errors[(layer, task, key)] = layer_error(stacks, self.compress(layer, key), grams,
                                                               workspace=self.workspace)
        return self._errors[(layer, task, key)]

    def _deployed(self, task: str, key: tuple | None) -> tuple[Any, list[torch.Tensor]]:
        """(rolling NLL, top-k routes per MoE layer) of `task` with every layer's experts replaced (None: dense)."""
        if (task, key) not in self._nll:
            from pytest_ladder.models.capture import CaptureSpec
            from pytest_ladder.models.nll import rolling_nll
            from pytest_ladder.models.weights import patched_layers
            from pytest_ladder.probes.expert_outputs import heldout_texts

            routing, loaded = self.routing, self.routing.loaded
            texts = heldout_texts(routing.corpora[task].heldout, loaded.tokenizer, routing.n_points)
            layers = () if key is None else self.adapter.moe_layers()
            # a layer at a time, at the stored dtype: only one layer's W′ exists at once, and it moves at its size
            with patched_layers(loaded.model, (
                    lambda layer=layer: deploy_updates(self.adapter, {layer: self.compress(
                        layer, key, keep=False, stored_dtype=True, on_device=True)}) for layer in layers)):
                nll = rolling_nll(loaded.model, loaded.tokenizer, texts, batch_size=routing.batch_size,
                                  desc=f"nll {task}")
                captured = (routing.heldout(task) if key is None
                            else routing.capture(task, "heldout", CaptureSpec(gram=False, topk=True)))
            self._nll[(task, key)] = nll
            self._routes[(task, key)] = [captured[layer].topk_index for layer in self.adapter.moe_layers()]
        return self._nll[(task, key)], self._routes[(task, key)]

    def deploy(self, task: str, key: tuple = METHOD) -> tuple[float, float]:
        """(route flip rate, ΔNLL fraction) of `task` at full depth with compressor `key` against the dense model."""
        from pytest_ladder.measure.loss import delta_nll_fraction
        from pytest_ladder.measure.routing import route_flip_rate

        dense_nll, dense_routes = self._deployed(task, None)
        nll, routes = self._deployed(task, key)
        flips = route_flip_rate(dense_routes, routes)
        return flips, delta_nll_fraction(dense_nll.nats, nll.nats, tokens_dense=dense_nll.tokens,
                                         tokens_comp=nll.tokens)

    def per_task(self, tasks: Sequence[str], key: tuple = METHOD) -> tuple[dict[str, float], dict[str, float]]:
        """({task: route flip rate}, {task: ΔNLL}) at full depth with compressor `key`: gates 3 and 5 per task."""
        deployed = {task: self.deploy(task, key) for task in tasks}
        return {t: d[0] for t, d in deployed.items()}, {t: d[1] for t, d in deployed.items()}

    def task_conditioning(self, layers: Sequence[int], tasks: Sequence[str]) -> tuple[float, int, dict]:
        """Gate 4: (the worst task's activation error on the worst layer, that layer, {layer: {task: error}})."""
        layers = sorted(set(layers))
        errors = {layer: {task: self.error(layer, task).pooled for task in tasks} for layer in layers}
        worst = max(layers, key=lambda layer: max(errors[layer].values()))
        return max(errors[worst].values()), worst, errors

    def trivial_pass(self, layer: int, task: str, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Any:
        """The uncompressed pipeline (W' = W) through every gate: activation error on (layer, task), flips and ΔNLL
        of `task` at full depth, byte delta of the checkpoint's expert `stacks` (measure.traps.trivial_pass_trap)."""
        from pytest_ladder.measure.traps import trivial_pass_trap

        flips, delta_nll = self.deploy(task, IDENTITY)
        return trivial_pass_trap(activation_error=self.error(layer, task, IDENTITY).pooled, route_flip_rate=flips,
                                 delta_nll=delta_nll, delta_bytes=compressor_bytes(Identity(), stacks).delta)

    def tau(self, layer: int, task: str, keys: Sequence[tuple]) -> dict:
        """The τ floor on (layer, task): the best (lowest) activation error of the baselines `keys`, and every value."""
        values = [self.error(layer, task, key).pooled for key in keys]
        return {"tau": min(values), "values": values}
