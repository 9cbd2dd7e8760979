"""R1, RotorQuant: every routed expert's weights rotated by a randomized Hadamard transform (SRHT) and quantized to
INT2 (or INT1), judged by all five gates. An impact rung: it opens with the GB it takes off the experts line of the
budget table (probes.budget).

Scheme (the same quantizer as R2, probes.quant_weights): per MoE layer and weight type (gate, up, down) one SRHT R
of the matrices' input width; each expert matrix W (out, in) is stored as INT-b codes of W R with one scale per
output row (symmetric; INT1 = sign · mean |·| per row) and rebuilt as W' = q(W R) Rᵀ (measure.gauge.round_trip,
right side). R's Rademacher signs come from `srht_seed` + 3·layer + the weight type's index.

Gates (the protocol's five): bytes of the quantized experts (codes, scales, sign vectors) minus the dense experts at
their stored dtype (budget table line `experts`); activation error of a layer on a task's held-out routed inputs,
pooled over its experts and the three weight types — gate and up read the routed inputs X_e (Gram G_e), down reads
the dense model's intermediate activations act(gate X_e) ⊙ (up X_e) (Gram M_e) — i.e.
sqrt(Σ tr(Δ G Δᵀ) / Σ tr(W G Wᵀ)) over (expert, weight type); task conditioning, the worst task of that error;
route flips and ΔNLL of the model with every MoE layer's experts replaced (full depth), per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pytest_ladder.measure.errors import activation_error
from pytest_ladder.measure.gauge import round_trip
from pytest_ladder.measure.hadamard import SRHT, srht
from pytest_ladder.measure.quant import QuantSpec, calibrate, fake_quant, random_scales, scale_factors
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.workspace import Workspace, nbytes
from pytest_ladder.probes.quant_weights import expert_bytes_delta, row_spec

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


def bytes_delta(stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]], bits: int | None, *,
                scale_dtype: torch.dtype = torch.float16) -> int:
    """Gate 1: bytes of every expert stack quantized as RotorQuant stores it minus the dense stacks (< 0 saves);
    `bits=None` is the uncompressed pipeline (the dense stacks kept as they are): exactly 0."""
    if bits is None:
        return 0
    return expert_bytes_delta(stacks, bits, scale_dtype=scale_dtype)[0]


@dataclass(frozen=True)
class RotorQuant:
    """The compressor: `bits` per weight (2 or 1), per-row scales at `scale_dtype`, SRHT signs from `srht_seed`."""

    bits: int
    srht_seed: int = 0
    scale_dtype: torch.dtype = torch.float16

    def spec(self, in_features: int) -> QuantSpec:
        return row_spec(self.bits, in_features, scale_dtype=self.scale_dtype)

    def rotation(self, layer: int, projection: str, n: int) -> SRHT:
        return srht(n, self.srht_seed + 3 * layer + PROJECTIONS.index(projection))

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W' = q(W R) Rᵀ for every expert matrix of one layer ({weight type: (E, out, in)}), float64."""
        out = {}
        for projection, w in stacks.items():
            n = w.shape[-1]
            out[projection] = round_trip(w.to(F64), self.rotation(layer, projection, n), self.spec(n), side="right")
        return out

    def compress_random_scales(self, layer: int, stacks: Mapping[str, torch.Tensor], seed: int,
                               *, low: float = 0.1, high: float = 10.0,
                               workspace: Workspace | None = None) -> dict[str, torch.Tensor]:
        """The random-scales trap: the same rotation and codes range, every row scale times a log-uniform factor.

        The factors of a weight type are drawn for its whole stack at once (weight types in order, one generator);
        under a bounded `workspace` the round trips run on its device a chunk of experts at a time, each chunk with
        its part of the factors (the same values as one pass), the results kept on the CPU."""
        generator = cpu_generator(seed)
        out = {}
        for projection, w in stacks.items():
            n = w.shape[-1]
            rotation, spec = self.rotation(layer, projection, n), self.spec(n)
            device = w.device if workspace is None else workspace.device
            one = calibrate(rotation.apply(w[:1].to(device=device, dtype=F64), dim=-1), spec).scale.shape
            factors = scale_factors((w.shape[0], *one[1:]), generator, low=low, high=high)
            spans = ([slice(0, w.shape[0])] if workspace is None
                     else workspace.spans(w.shape[0], 6 * nbytes(tuple(w.shape[1:]))))
            parts = []
            for span in spans:
                rotated = rotation.apply(w[span].to(device=device, dtype=F64), dim=-1)
                params = random_scales(calibrate(rotated, spec), generator, factors=factors[span])
                part = rotation.inverse(fake_quant(rotated, spec, params), dim=-1)
                parts.append(part if workspace is None else part.cpu())
            out[projection] = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out


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
    sq_error = sq_norm = 0.0
    per_projection = {}
    for projection in PROJECTIONS:
        error = activation_error(stacks[projection], approx[projection], grams.for_projection(projection),
                                 workspace=workspace)
        per_projection[projection] = error.pooled
        sq_error += float(error.sq_error.clamp_min(0).sum())
        sq_norm += float(error.sq_norm.sum())
    if not sq_norm > 0:
        raise ValueError("layer_error: no held-out tokens were routed to this layer's experts; capture more points")
    return LayerError((sq_error / sq_norm) ** 0.5, per_projection)


def deploy_updates(adapter: MoEAdapter, approx: Mapping[int, Mapping[str, torch.Tensor]]
                   ) -> dict[tuple[str, int], torch.Tensor]:
    """Parameter updates installing the rebuilt experts {layer: {weight type: (E, out, in)}} at the stored dtype (for
    models.weights.patched_parameters); the uncompressed stacks write every weight back bit for bit."""
    from pytest_ladder.models.adapters import ExpertWeights

    updates: dict[tuple[str, int], torch.Tensor] = {}
    for layer, stacks in approx.items():
        for expert in range(adapter.n_experts):
            dense = adapter.expert_weights(layer, expert)
            weights = ExpertWeights(*(stacks[p][expert].to(getattr(dense, p).dtype) for p in PROJECTIONS))
            updates.update(adapter.expert_updates(layer, expert, weights))
    return updates


# ------------------------------------------------------------------------------------------------ the study ---

IDENTITY = ("identity",)  # the uncompressed pipeline: W' = W
METHOD = ("method",)


class RotorQuantStudy:
    """R1 on one loaded model over the shared routing data (probes.routes.RoutingStudy), each quantity once.

    Compressors are named by keys: METHOD (RotorQuant at its bits), IDENTITY (W' = W), ("bits", b) (another bit
    width), ("random_scales", seed, low, high). Held-out data per task: the routing study's held-out tokens (routes,
    Grams) and the first documents reaching as many tokens (ΔNLL).
    """

    def __init__(self, routing: Any, *, quantizer: RotorQuant) -> None:
        from pytest_ladder.models.capture import model_device

        self.routing, self.quantizer = routing, quantizer
        self.device = model_device(routing.loaded.model)  # where weights, Grams and round trips are computed
        self._stacks: dict[int, dict[str, torch.Tensor]] = {}
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

    def stacks(self, layer: int, *, keep: bool = True) -> dict[str, torch.Tensor]:
        """The layer's expert stacks on the study's device, or on the CPU under a bounded workspace (kept for later
        calls unless `keep` is False)."""
        if layer in self._stacks:
            return self._stacks[layer]
        home = "cpu" if self.workspace is not None else self.device
        stacks = {p: w.to(home) for p, w in layer_stacks(self.adapter, layer).items()}
        if keep:
            self._stacks[layer] = stacks
        return stacks

    def _compress(self, layer: int, key: tuple, stacks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if key == IDENTITY:
            return {p: w.to(F64) for p, w in stacks.items()}
        if key == METHOD:
            return self.quantizer.compress(layer, stacks)
        if key[0] == "bits":
            return RotorQuant(key[1], self.quantizer.srht_seed, self.quantizer.scale_dtype).compress(layer, stacks)
        raise KeyError(f"RotorQuantStudy: unknown compressor {key!r}")

    def compress(self, layer: int, key: tuple, *, keep: bool = True, stored_dtype: bool = False
                 ) -> dict[str, torch.Tensor]:
        """W' of one layer's experts under compressor `key` (float64; with `stored_dtype` converted where computed to
        the stored dtype, as deployed); `keep` as in `stacks`. Under a bounded workspace the compressor runs on the
        device a chunk of experts at a time (each expert's rows are quantized on their own), its result kept on the
        CPU."""
        stacks = self.stacks(layer, keep=keep)
        workspace = self.workspace

        def cast(p: str, w: torch.Tensor) -> torch.Tensor:
            return w.to(stacks[p].dtype) if stored_dtype else w

        if key[0] == "random_scales":
            _, seed, low, high = key
            found = self.quantizer.compress_random_scales(layer, stacks, seed, low=low, high=high, workspace=workspace)
            return {p: cast(p, w) for p, w in found.items()}
        if workspace is None:
            return {p: cast(p, w) for p, w in self._compress(layer, key, stacks).items()}
        item = 6 * sum(nbytes(tuple(w.shape[1:])) for w in stacks.values())  # float64 W, rotated, codes, W'
        parts: dict[str, list[torch.Tensor]] = {p: [] for p in stacks}
        for span in workspace.spans(self.adapter.n_experts, item):
            chunk = self._compress(layer, key, {p: w[span].to(workspace.device) for p, w in stacks.items()})
            for p, w in chunk.items():
                parts[p].append(cast(p, w).cpu())
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
        """Gate 2 on (layer, task) for compressor `key`."""
        if (layer, task, key) not in self._errors:
            self._errors[(layer, task, key)] = layer_error(self.stacks(layer), self.compress(layer, key),
                                                           self.grams(layer, task), workspace=self.workspace)
        return self._errors[(layer, task, key)]

    def _deployed(self, task: str, key: tuple | None) -> tuple[Any, list[torch.Tensor]]:
        """(rolling NLL, top-k routes per MoE layer) of `task` with every layer's experts replaced (None: dense)."""
        if (task, key) not in self._nll:
            from pytest_ladder.models.capture import CaptureSpec
            from pytest_ladder.models.nll import rolling_nll
            from pytest_ladder.models.weights import patched_parameters
            from pytest_ladder.probes.expert_outputs import heldout_texts

            routing, loaded = self.routing, self.routing.loaded
            texts = heldout_texts(routing.corpora[task].heldout, loaded.tokenizer, routing.n_points)
            updates: dict = {}
            if key is not None:
                for layer in self.adapter.moe_layers():  # at the stored dtype: W' moves at its deployed size
                    updates.update(deploy_updates(self.adapter, {layer: self.compress(layer, key, keep=False,
                                                                                      stored_dtype=True)}))
            with patched_parameters(loaded.model, updates):
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

    def trivial_pass(self, layer: int, task: str, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Any:
        """The uncompressed pipeline (W' = W) through every gate: activation error on (layer, task), flips and ΔNLL
        of `task` at full depth, byte delta of the checkpoint's expert `stacks` (measure.traps.trivial_pass_trap)."""
        from pytest_ladder.measure.traps import trivial_pass_trap

        flips, delta_nll = self.deploy(task, IDENTITY)
        return trivial_pass_trap(activation_error=self.error(layer, task, IDENTITY).pooled, route_flip_rate=flips,
                                 delta_nll=delta_nll, delta_bytes=bytes_delta(stacks, None))
