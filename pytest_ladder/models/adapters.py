"""MoE adapters: one small interface over the MoE architectures of transformers 5 (fused experts).

An adapter answers, for one loaded model: which decoder layers are MoE, where the router and experts modules are,
the router weight and the architecture's exact rule from router logits to (top-k experts, weights), and each
expert's gate/up/down weights in one orientation (gate, up: (I, H); down: (H, I)), read and written meta-safe
through pytest_ladder.models.weights. Expert e computes  y = down · (act(gate · x) ⊙ (up · x))  (+ biases for
GPT-OSS, whose activation is its clamped SwiGLU).

Each adapter also names how its checkpoint files store the MoE block (`StoredLayout`: save_pretrained writes
Mixtral's as `block_sparse_moe.experts.E.w1/w3/w2`, the others' as `mlp.experts.E.gate_proj/up_proj/down_proj`, or
fused `mlp.experts.gate_up_proj`), so that readers of the files (models/checkpoint.py, the byte counts of the
probes) find experts and routers of every family without naming one.

Supported: OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral, DeepSeek-V3, GPT-OSS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pytest_ladder.models.weights import read_parameter, write_parameter


class UnsupportedArchitecture(ValueError):
    """The model has no adapter; the message lists the supported architectures."""


@dataclass
class ExpertWeights:
    """One expert's matrices: gate (I, H), up (I, H), down (H, I); biases only where the architecture has them."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class StoredLayout:
    """Where a checkpoint file stores a layer's MoE block: `layers.L.<block>`, its router `<block>.<router>.weight`,
    expert E's matrices `<block>.experts.E.<name>.weight` for gate, up and down (per-expert keys), or the fused
    `<block>.experts.gate_up_proj` (E, 2I, H) and `<block>.experts.down_proj` (E, H, I)."""

    block: str = "mlp"
    router: str = "gate"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"

    def names(self) -> dict[str, str]:
        """{"gate" | "up" | "down": its per-expert key name}."""
        return {"gate": self.gate, "up": self.up, "down": self.down}


class MoEAdapter:
    """Base adapter for decoder models whose MoE blocks are `layers[i].mlp` with `.gate` (router) and `.experts`
    (fused `gate_up_proj` (E, 2I, H), gate rows first, and `down_proj` (E, H, I))."""

    architecture: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    router_attribute: ClassVar[str] = "gate"
    shared_attribute: ClassVar[str | None] = None
    stored: ClassVar[StoredLayout] = StoredLayout()  # the checkpoint files' key names

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self._names = {id(module): name for name, module in model.named_modules()}

    # ----------------------------------------------------------------------------------------------- shape ---
    @property
    def n_experts(self) -> int:
        return int(self.config.num_local_experts)

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def intermediate_size(self) -> int:
        """The routed experts' intermediate size I."""
        return int(self.config.intermediate_size)

    # --------------------------------------------------------------------------------------------- modules ---
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def moe_layers(self) -> list[int]:
        """Indices of the decoder layers whose MLP is a routed-experts block."""
        return [i for i, layer in enumerate(self.decoder_layers()) if hasattr(layer.mlp, "experts")]

    def mlp(self, layer: int) -> nn.Module:
        return self.decoder_layers()[layer].mlp

    def _moe(self, layer: int) -> nn.Module:
        mlp = self.mlp(layer)
        if not hasattr(mlp, "experts"):
            raise IndexError(f"layer {layer} of this {self.architecture} model is dense, not MoE; MoE layers: "
                             f"{self.moe_layers()}")
        return mlp

    def router_module(self, layer: int) -> nn.Module:
        return getattr(self._moe(layer), self.router_attribute)

    def experts_module(self, layer: int) -> nn.Module:
        return self._moe(layer).experts

    def name_of(self, module: nn.Module) -> str:
        """The module's qualified name in the model (parameter names are `<name>.<parameter>`)."""
        return self._names[id(module)]

    def _param(self, module: nn.Module, parameter: str) -> str:
        return f"{self.name_of(module)}.{parameter}"

    # ---------------------------------------------------------------------------------------------- router ---
    def router_weight(self, layer: int) -> torch.Tensor:
        """The router matrix (E, H): a copy of the real values (offload-safe)."""
        return read_parameter(self.model, self._param(self.router_module(layer), "weight")).clone()

    def router_logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Router logits (T, E) of router inputs `hidden` (T, H), computed as the router module does."""
        weight = self.router_weight(layer).to(hidden.device)
        return F.linear(hidden, weight)

    def route(self, logits: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k expert indices (T, k), routing weights (T, k)) from router logits, by this architecture's rule."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------- experts ---
    def _fused_names(self, layer: int) -> tuple[str, str]:
        experts = self.experts_module(layer)
        return self._param(experts, "gate_up_proj"), self._param(experts, "down_proj")

    def expert_weights(self, layer: int, expert: int) -> ExpertWeights:
        """Expert `expert` of `layer`: gate (I, H), up (I, H), down (H, I), copies of the real values (offload-safe;
        later writes to the model do not change them)."""
        gate_up_name, down_name = self._fused_names(layer)
        gate, up = read_parameter(self.model, gate_up_name, expert).clone().chunk(2, dim=0)
        return ExpertWeights(gate=gate, up=up, down=read_parameter(self.model, down_name, expert).clone())

    def resident_experts(self, layer: int, projection: str, device: torch.device | str) -> torch.Tensor | None:
        """All experts' `projection` matrices of `layer` as a read-only view of the live parameters, in the layout of
        models.checkpoint.Checkpoint.experts ((E, I, H) for gate and up, (E, H, I) for down; "gate_up": both stacked,
        [gate_e; up_e] (E, 2I, H), the fused parameter itself), when they are resident on `device` (with its index:
        "cuda:0"); None when they are not (offloaded: a meta placeholder, or another device), and the caller reads
        the checkpoint instead. A view costs no memory beyond the model's own weights."""
        if projection not in ("gate", "up", "down", "gate_up"):
            raise ValueError(f"resident_experts: projection must be gate, up, down or gate_up, got {projection!r}")
        parameter = getattr(self.experts_module(layer), "down_proj" if projection == "down" else "gate_up_proj", None)
        if not isinstance(parameter, torch.Tensor) or parameter.device != torch.device(device):
            return None
        parameter = parameter.detach()
        if projection in ("down", "gate_up"):
            return parameter
        inter = parameter.shape[1] // 2
        return parameter[:, :inter] if projection == "gate" else parameter[:, inter:]

    def set_expert_weights(self, layer: int, expert: int, weights: ExpertWeights) -> None:
        """Write an expert's matrices for good (use weights.patched_parameters with `expert_updates` to restore)."""
        for name, value in self.expert_updates(layer, expert, weights).items():
            write_parameter(self.model, name[0], value, name[1])

    def expert_updates(self, layer: int, expert: int, weights: ExpertWeights) -> dict[tuple[str, int], torch.Tensor]:
        """The parameter updates {(name, expert): value} that install `weights` (for weights.patched_parameters)."""
        gate_up_name, down_name = self._fused_names(layer)
        return {(gate_up_name, expert): torch.cat([weights.gate, weights.up], dim=0), (down_name, expert): weights.down}

    def shared_expert(self, layer: int) -> ExpertWeights | None:
        """The always-on shared expert's matrices, if the architecture has one (its output gate is not included)."""
        if self.shared_attribute is None:
            return None
        shared = getattr(self._moe(layer), self.shared_attribute)
        return ExpertWeights(*(read_parameter(self.model, self._param(module, "weight")).clone()
                               for module in (shared.gate_proj, shared.up_proj, shared.down_proj)))

    def expert_forward_module(self, experts: nn.Module, expert: int, hidden: torch.Tensor) -> torch.Tensor:
        """Expert `expert`'s output on `hidden` (T, H) from the experts module's live parameters, op for op as
        transformers' eager experts loop computes it (used inside a forward, where offloaded weights are in)."""
        gate, up = F.linear(hidden, experts.gate_up_proj[expert]).chunk(2, dim=-1)
        return F.linear(experts.act_fn(gate) * up, experts.down_proj[expert])

    def expert_forward(self, layer: int, expert: int, hidden: torch.Tensor,
                       weights: ExpertWeights | None = None) -> torch.Tensor:
        """y = down · (act(gate · x) ⊙ (up · x)) for rows x of `hidden` (T, H), with `weights` or the model's own."""
        w = self.expert_weights(layer, expert) if weights is None else weights
        w = ExpertWeights(*(None if t is None else t.to(device=hidden.device, dtype=hidden.dtype)
                            for t in (w.gate, w.up, w.down, w.gate_bias, w.up_bias, w.down_bias)))
        act = self.experts_module(layer).act_fn
        return F.linear(act(F.linear(hidden, w.gate)) * F.linear(hidden, w.up), w.down)


class _SoftmaxTopK(MoEAdapter):
    """softmax over all experts in float32, top-k, renormalised iff config.norm_topk_prob, cast to the logits'
    dtype (transformers' Qwen2MoeTopKRouter, shared by OLMoE, Qwen2-MoE and Qwen3-MoE)."""

    def route(self, logits: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        top_value, top_index = torch.topk(probs, self.top_k, dim=-1)
        if self.config.norm_topk_prob:
            top_value = top_value / top_value.sum(dim=-1, keepdim=True)
        return top_index, top_value.to(logits.dtype)


class OlmoeAdapter(_SoftmaxTopK):
    architecture = "OLMoE"
    model_types = ("olmoe",)


class Qwen2MoeAdapter(_SoftmaxTopK):
    architecture = "Qwen2-MoE"
    model_types = ("qwen2_moe",)
    shared_attribute = "shared_expert"

    @property
    def n_experts(self) -> int:
        return int(self.config.num_experts)

    @property
    def intermediate_size(self) -> int:
        return int(self.config.moe_intermediate_size)


class Qwen3MoeAdapter(Qwen2MoeAdapter):
    architecture = "Qwen3-MoE"
    model_types = ("qwen3_moe",)
    shared_attribute = None


class MixtralAdapter(MoEAdapter):
    architecture = "Mixtral"
    model_types = ("mixtral",)
    stored = StoredLayout(block="block_sparse_moe", gate="w1", up="w3", down="w2")

    def route(self, logits: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax in float32, top-k, always renormalised (weights stay float32)."""
        probs = F.softmax(logits.float(), dim=-1)
        top_value, top_index = torch.topk(probs, self.top_k, dim=-1)
        return top_index, top_value / top_value.sum(dim=-1, keepdim=True)


class DeepseekV3Adapter(MoEAdapter):
    architecture = "DeepSeek-V3"
    model_types = ("deepseek_v3",)
    shared_attribute = "shared_experts"

    @property
    def n_experts(self) -> int:
        return int(self.config.n_routed_experts)

    @property
    def intermediate_size(self) -> int:
        return int(self.config.moe_intermediate_size)

    def router_logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.router_weight(layer).to(hidden.device)
        return F.linear(hidden.float(), weight.float())

    def route(self, logits: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """sigmoid scores; choice by scores + e_score_correction_bias within the top `topk_group` of `n_group`
        groups (group score: sum of its top-2); weights are the unbiased scores of the chosen experts,
        renormalised iff norm_topk_prob (+1e-20), times routed_scaling_factor."""
        if layer is None:
            raise ValueError("DeepSeek-V3 routing needs the layer (its e_score_correction_bias is per layer)")
        config = self.config
        n_group, n_experts = int(config.n_group), self.n_experts
        bias = read_parameter(self.model, self._param(self.router_module(layer), "e_score_correction_bias"))
        scores = logits.sigmoid()
        choice = scores + bias.to(scores.device)
        group_scores = choice.view(-1, n_group, n_experts // n_group).topk(2, dim=-1)[0].sum(dim=-1)
        group_index = torch.topk(group_scores, k=int(config.topk_group), dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_index, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, n_group, n_experts // n_group).reshape(-1, n_experts)
        choice = choice.masked_fill(~score_mask.bool(), float("-inf"))
        top_index = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, top_index)
        if config.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return top_index, weights * config.routed_scaling_factor


class GptOssAdapter(MoEAdapter):
    """GPT-OSS: router with bias; experts stored transposed with gate/up interleaved and biases; clamped SwiGLU."""

    architecture = "GPT-OSS"
    model_types = ("gpt_oss",)
    router_attribute = "router"

    def router_logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        router = self.router_module(layer)
        weight = self.router_weight(layer).to(hidden.device)
        bias = read_parameter(self.model, self._param(router, "bias")).to(hidden.device)
        return F.linear(hidden, weight, bias)

    def route(self, logits: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """top-k of the (biased) logits, softmax over the k chosen."""
        top_value, top_index = torch.topk(logits, self.top_k, dim=-1)
        return top_index, F.softmax(top_value, dim=1, dtype=top_value.dtype)

    def resident_experts(self, layer: int, projection: str, device: torch.device | str) -> torch.Tensor | None:
        """None: the fused parameters interleave gate and up columns, transposed; readers take the checkpoint."""
        return None

    def _names3(self, layer: int) -> tuple[str, str, str, str]:
        experts = self.experts_module(layer)
        return tuple(self._param(experts, p) for p in ("gate_up_proj", "gate_up_proj_bias", "down_proj",
                                                        "down_proj_bias"))

    def expert_weights(self, layer: int, expert: int) -> ExpertWeights:
        gate_up, gate_up_bias, down, down_bias = (read_parameter(self.model, n, expert).clone()
                                                  for n in self._names3(layer))
        return ExpertWeights(gate=gate_up[:, ::2].T, up=gate_up[:, 1::2].T, down=down.T,
                             gate_bias=gate_up_bias[::2], up_bias=gate_up_bias[1::2], down_bias=down_bias)

    def expert_updates(self, layer: int, expert: int, weights: ExpertWeights) -> dict[tuple[str, int], torch.Tensor]:
        gate_up_name, gate_up_bias_name, down_name, down_bias_name = self._names3(layer)
        gate_up = torch.stack([weights.gate.T, weights.up.T], dim=-1).flatten(-2)  # (H, 2I), interleaved
        updates = {(gate_up_name, expert): gate_up, (down_name, expert): weights.down.T}
        if weights.gate_bias is not None and weights.up_bias is not None:
            updates[(gate_up_bias_name, expert)] = torch.stack([weights.gate_bias, weights.up_bias], -1).flatten()
        if weights.down_bias is not None:
            updates[(down_bias_name, expert)] = weights.down_bias
        return updates

    def expert_forward_module(self, experts: nn.Module, expert: int, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = hidden @ experts.gate_up_proj[expert] + experts.gate_up_proj_bias[expert]
        return experts._apply_gate(gate_up) @ experts.down_proj[expert] + experts.down_proj_bias[expert]

    def expert_forward(self, layer: int, expert: int, hidden: torch.Tensor,
                       weights: ExpertWeights | None = None) -> torch.Tensor:
        w = self.expert_weights(layer, expert) if weights is None else weights
        experts = self.experts_module(layer)
        cast = {"device": hidden.device, "dtype": hidden.dtype}
        gate = F.linear(hidden, w.gate.to(**cast), None if w.gate_bias is None else w.gate_bias.to(**cast))
        up = F.linear(hidden, w.up.to(**cast), None if w.up_bias is None else w.up_bias.to(**cast))
        gated = experts._apply_gate(torch.stack([gate, up], dim=-1).flatten(-2))
        return F.linear(gated, w.down.to(**cast), None if w.down_bias is None else w.down_bias.to(**cast))


ADAPTERS: tuple[type[MoEAdapter], ...] = (OlmoeAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, MixtralAdapter,
                                          DeepseekV3Adapter, GptOssAdapter)


def stored_layout(model_type: str | None) -> StoredLayout:
    """How checkpoints of `model_type` (config.json's) store their MoE blocks; the common layout when unknown."""
    return next((a.stored for a in ADAPTERS if model_type in a.model_types), StoredLayout())


def _stored_patterns() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    layouts = {a.stored for a in ADAPTERS}
    blocks = "|".join(sorted({re.escape(s.block) for s in layouts}))
    names = {n: "|".join(sorted({re.escape(s.names()[n]) for s in layouts})) for n in ("gate", "up", "down")}
    per_expert = re.compile(rf"^(?:model\.)?layers\.(\d+)\.(?:{blocks})\.experts\.(\d+)\."
                            rf"(?:(?P<gate>{names['gate']})|(?P<up>{names['up']})|(?P<down>{names['down']}))\.weight$")
    fused = re.compile(rf"^(?:model\.)?layers\.(\d+)\.(?:{blocks})\.experts\.(gate_up|down)_proj$")
    routers = "|".join(sorted({re.escape(f"{s.block}.{s.router}") for s in layouts}))
    return per_expert, fused, re.compile(rf"^(?:model\.)?layers\.(\d+)\.(?:{routers})\.weight$")


_PER_EXPERT, _FUSED, _ROUTER = _stored_patterns()


def stored_expert_key(name: str) -> tuple[int, int, str] | tuple[int, None, str] | None:
    """(layer, expert, "gate" | "up" | "down") of a per-expert checkpoint key, (layer, None, "gate_up" | "down") of
    a fused one, in any supported family's layout; None for any other tensor."""
    if match := _PER_EXPERT.match(name):
        return int(match[1]), int(match[2]), next(p for p in ("gate", "up", "down") if match[p])
    if match := _FUSED.match(name):
        return int(match[1]), None, match[2]
    return None


def stored_router_layer(name: str) -> int | None:
    """The layer of a router weight's checkpoint key in any supported family's layout (None for any other)."""
    match = _ROUTER.match(name)
    return int(match[1]) if match else None


def supported_architectures() -> list[str]:
    return [f"{a.architecture} (model_type {', '.join(a.model_types)})" for a in ADAPTERS]


def adapter_for(model: nn.Module) -> MoEAdapter:
    """The adapter for `model`, chosen by config.model_type; UnsupportedArchitecture lists the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(model)
    raise UnsupportedArchitecture(
        f"no MoE adapter for model_type {model_type!r} ({type(model).__name__}); supported: "
        f"{'; '.join(supported_architectures())}. Add a MoEAdapter subclass in pytest_ladder/models/adapters.py"
    )


__all__ = ["ExpertWeights", "MoEAdapter", "StoredLayout", "stored_layout", "stored_expert_key",
           "stored_router_layer", "adapter_for", "supported_architectures", "UnsupportedArchitecture",
           "ADAPTERS"]
