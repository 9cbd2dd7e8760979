"""Each MoE adapter on a tiny random model of its architecture, saved and reloaded: MoE layers, route() equals the
model's own routing, expert weights equal the checkpoint's per-expert tensors, writes round-trip."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from pytest_ladder.models.adapters import ADAPTERS, ExpertWeights, UnsupportedArchitecture, adapter_for

COMMON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def configs() -> dict:
    from transformers import (DeepseekV3Config, GptOssConfig, MixtralConfig, OlmoeConfig, Qwen2MoeConfig,
                              Qwen3MoeConfig)

    return {
        "olmoe": OlmoeConfig(intermediate_size=16, num_experts=8, num_experts_per_tok=2, **COMMON),
        "qwen2_moe": Qwen2MoeConfig(intermediate_size=24, moe_intermediate_size=16, shared_expert_intermediate_size=20,
                                    num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1], norm_topk_prob=True,
                                    **COMMON),
        "qwen3_moe": Qwen3MoeConfig(intermediate_size=24, moe_intermediate_size=16, num_experts=8,
                                    num_experts_per_tok=3, head_dim=8, norm_topk_prob=False, **COMMON),
        "mixtral": MixtralConfig(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, **COMMON),
        "deepseek_v3": DeepseekV3Config(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, intermediate_size=24,
            moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            first_k_dense_replace=1, n_shared_experts=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=2.5, **{**COMMON, "num_key_value_heads": 4}),
        "gpt_oss": GptOssConfig(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
                                sliding_window=16, **COMMON),
    }


MOE_LAYERS = {"olmoe": [0, 1, 2], "qwen2_moe": [0, 2], "qwen3_moe": [0, 1, 2], "mixtral": [0, 1, 2],
              "deepseek_v3": [1, 2], "gpt_oss": [0, 1, 2]}
# checkpoint keys of expert e in layer l, per architecture: (gate, up, down) -> how the file stores them
PER_EXPERT = {
    "olmoe": "model.layers.{l}.mlp.experts.{e}.{w}_proj.weight",
    "qwen2_moe": "model.layers.{l}.mlp.experts.{e}.{w}_proj.weight",
    "qwen3_moe": "model.layers.{l}.mlp.experts.{e}.{w}_proj.weight",
    "deepseek_v3": "model.layers.{l}.mlp.experts.{e}.{w}_proj.weight",
    "mixtral": "model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight",
}
MIXTRAL_NAMES = {"gate": "w1", "up": "w3", "down": "w2"}


@pytest.fixture(scope="module", params=list(MOE_LAYERS))
def arch(request, tmp_path_factory):
    """(name, reloaded model, checkpoint file) of one architecture, with routers scaled up (decisive routing)."""
    from transformers import AutoModelForCausalLM

    name = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs()[name])
    adapter = adapter_for(model)
    with torch.no_grad():
        for layer in adapter.moe_layers():
            router = adapter.router_module(layer)
            router.weight.normal_(0.0, 1.0)
            if name == "deepseek_v3":
                router.e_score_correction_bias.normal_(0.0, 0.5)
            if name == "gpt_oss":
                router.bias.normal_(0.0, 0.5)
                experts = adapter.experts_module(layer)
                for p in (experts.gate_up_proj, experts.gate_up_proj_bias, experts.down_proj, experts.down_proj_bias):
                    p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    return name, reloaded, folder / "model.safetensors"


def own_routing(model, adapter):
    """{layer: (router input, top-k index, top-k weights)} as the model computes them in a forward."""
    seen = {}
    handles = []
    for layer in adapter.moe_layers():
        handles.append(adapter.router_module(layer).register_forward_pre_hook(
            lambda m, args, layer=layer: seen.setdefault(layer, {}).update(x=args[0].reshape(-1, args[0].shape[-1]))))
        handles.append(adapter.experts_module(layer).register_forward_pre_hook(
            lambda m, args, layer=layer: seen[layer].update(index=args[1], weight=args[2])))
    with torch.no_grad():
        model(input_ids=torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(1)))
    for handle in handles:
        handle.remove()
    return seen


def test_moe_layers_and_shape(arch):
    name, model, _ = arch
    adapter = adapter_for(model)
    assert adapter.moe_layers() == MOE_LAYERS[name]
    assert adapter.n_experts == 8 and adapter.hidden_size == 32 and adapter.intermediate_size == 16
    assert adapter.top_k == (3 if name == "qwen3_moe" else 2)
    assert adapter.router_weight(adapter.moe_layers()[0]).shape == (8, 32)


def test_route_equals_the_models_own_routing(arch):
    name, model, _ = arch
    adapter = adapter_for(model)
    for layer, seen in own_routing(model, adapter).items():
        index, weight = adapter.route(adapter.router_logits(layer, seen["x"]), layer)
        assert torch.equal(index, seen["index"]), (name, layer)
        assert torch.equal(weight, seen["weight"]), (name, layer)


def test_expert_weights_equal_the_checkpoint(arch):
    name, model, checkpoint = arch
    adapter = adapter_for(model)
    with safe_open(str(checkpoint), framework="pt") as handle:
        for layer in adapter.moe_layers():
            for expert in (0, 5):
                got = adapter.expert_weights(layer, expert)
                if name == "gpt_oss":  # stored fused: gate_up (E, H, 2I) interleaved, down (E, I, H), biases
                    gate_up = handle.get_tensor(f"model.layers.{layer}.mlp.experts.gate_up_proj")[expert]
                    bias = handle.get_tensor(f"model.layers.{layer}.mlp.experts.gate_up_proj_bias")[expert]
                    down = handle.get_tensor(f"model.layers.{layer}.mlp.experts.down_proj")[expert]
                    expected = ExpertWeights(gate_up[:, 0::2].T, gate_up[:, 1::2].T, down.T, bias[0::2], bias[1::2],
                                             handle.get_tensor(f"model.layers.{layer}.mlp.experts.down_proj_bias")[
                                                 expert])
                else:
                    def key(w):
                        w = MIXTRAL_NAMES[w] if name == "mixtral" else w
                        return PER_EXPERT[name].format(l=layer, e=expert, w=w)

                    expected = ExpertWeights(*(handle.get_tensor(key(w)) for w in ("gate", "up", "down")))
                for field in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
                    a, b = getattr(got, field), getattr(expected, field)
                    assert (a is None and b is None) or torch.equal(a, b), (name, layer, expert, field)
                assert got.gate.shape == (16, 32) and got.down.shape == (32, 16)


def test_shared_expert(arch):
    name, model, checkpoint = arch
    adapter = adapter_for(model)
    layer = adapter.moe_layers()[-1]
    shared = adapter.shared_expert(layer)
    if name not in ("qwen2_moe", "deepseek_v3"):
        assert shared is None
        return
    attribute = "shared_expert" if name == "qwen2_moe" else "shared_experts"
    with safe_open(str(checkpoint), framework="pt") as handle:
        for w in ("gate", "up", "down"):
            stored = handle.get_tensor(f"model.layers.{layer}.mlp.{attribute}.{w}_proj.weight")
            assert torch.equal(getattr(shared, w), stored)


def test_set_expert_weights_round_trip_and_forward(arch):
    name, model, _ = arch
    adapter = adapter_for(model)
    layer = adapter.moe_layers()[-1]
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    before = adapter.expert_forward(layer, 3, x)
    torch.testing.assert_close(before, adapter.expert_forward_module(adapter.experts_module(layer), 3, x))
    original = adapter.expert_weights(layer, 3)
    changed = ExpertWeights(*(None if t is None else t * 2 for t in (
        original.gate, original.up, original.down, original.gate_bias, original.up_bias, original.down_bias)))
    adapter.set_expert_weights(layer, 3, changed)
    got = adapter.expert_weights(layer, 3)
    assert torch.equal(got.gate, changed.gate) and torch.equal(got.up, changed.up)
    assert torch.equal(got.down, changed.down)
    assert not torch.equal(adapter.expert_forward(layer, 3, x), before)
    torch.testing.assert_close(adapter.expert_forward(layer, 3, x),
                               adapter.expert_forward_module(adapter.experts_module(layer), 3, x))
    adapter.set_expert_weights(layer, 3, original)
    assert torch.equal(adapter.expert_forward(layer, 3, x), before)


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UnsupportedArchitecture) as error:
        adapter_for(model)
    message = str(error.value)
    assert "model_type 'llama'" in message
    for adapter in ADAPTERS:
        assert adapter.architecture in message
    assert [a.architecture for a in ADAPTERS] == ["OLMoE", "Qwen2-MoE", "Qwen3-MoE", "Mixtral", "DeepSeek-V3",
                                                  "GPT-OSS"]


def test_dense_layer_is_refused():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(configs()["qwen2_moe"])  # mlp_only_layers=[1]
    with pytest.raises(IndexError, match=r"layer 1 of this Qwen2-MoE model is dense, not MoE; MoE layers: \[0, 2\]"):
        adapter_for(model).experts_module(1)
