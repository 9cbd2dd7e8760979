"""The embedded Qwen3-MoE and Mixtral models: the OLMoE recipe's key untouched by the family field; each family's
build deterministic on a reduced recipe; the real builds (one each per CI run, cached) learned, route by task and
load by name; their adapters read the routing and experts exactly, and the uncompressed pipeline gives exactly 0
on every gate of the trivial-pass traps."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from pytest_ladder.models.embedded import (EMBEDDED_MODELS, QWEN_RECIPE, RECIPE, Recipe,
                                           build_embedded_model, embedded_model_dir, ensure_embedded_model, main,
                                           model_key, read_report, recipe_named)
from pytest_ladder.models.loading import ModelSpec, is_embedded, load_model

SMALL = Recipe(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_experts=4,
               num_experts_per_tok=2, intermediate_size=16, seq_len=32, steps=3, rows_per_task=1, warmup=1,
               eval_documents=2, eval_tokens=64, threads=1)
OLMOE_KEY = "955f20b1f3ef1d1d"  # the OLMoE model's key before the family field existed: its cache stays valid
FAMILIES = {"embedded-qwen": ("Qwen3-MoE", "qwen3_moe", 4, True), "embedded-mixtral": ("Mixtral", "mixtral", 2, None)}


def test_the_olmoe_key_and_names_are_unchanged():
    assert model_key() == OLMOE_KEY and model_key(RECIPE) == OLMOE_KEY
    assert embedded_model_dir().name == f"olmoe-tiny-{OLMOE_KEY}"
    assert "family" not in RECIPE.record() and QWEN_RECIPE.record()["family"] == "qwen3_moe"
    assert list(EMBEDDED_MODELS) == ["embedded", "embedded-qwen", "embedded-mixtral"]
    assert recipe_named("embedded") is RECIPE and all(is_embedded(name) for name in EMBEDDED_MODELS)
    assert not is_embedded("embedded-llama")
    with pytest.raises(ValueError, match="no embedded model 'embedded-llama'; the embedded models are embedded, "
                                         "embedded-qwen, embedded-mixtral"):
        recipe_named("embedded-llama")
    with pytest.raises(ValueError, match="Recipe.family 'llama' is not one of olmoe, qwen3_moe, mixtral"):
        replace(RECIPE, family="llama")
    folders = {embedded_model_dir(recipe).name.rsplit("-", 1)[0] for recipe in EMBEDDED_MODELS.values()}
    assert folders == {"olmoe-tiny", "qwen3-moe-tiny", "mixtral-tiny"}


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_each_family_builds_deterministically(tmp_path, family):
    recipe = replace(SMALL, family=family)
    first = build_embedded_model(tmp_path / "a", recipe, seed=3, log=lambda line: None)
    second = build_embedded_model(tmp_path / "b", recipe, seed=3, log=lambda line: None)
    build_embedded_model(tmp_path / "c", recipe, seed=4, log=lambda line: None)
    build_embedded_model(tmp_path / "olmoe", SMALL, seed=3, log=lambda line: None)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert digest(tmp_path / "a") != digest(tmp_path / "olmoe")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "olmoe" / "tokenizer.json").read_bytes()
    assert first.heldout_nll == second.heldout_nll and first.expert_usage == second.expert_usage
    assert first.key == model_key(recipe, 3) != model_key(SMALL, 3)
    assert first.recipe["family"] == family


@pytest.fixture(scope="session", params=list(FAMILIES))
def family_model(request):
    """(name, folder) of a real embedded family model, built once (or found in the cache)."""
    return request.param, ensure_embedded_model(recipe=recipe_named(request.param))


def test_each_family_learned_and_routes_by_task(family_model):
    name, folder = family_model
    recipe = recipe_named(name)
    report = read_report(folder)
    assert report.key == model_key(recipe) and report.recipe["family"] == recipe.family
    assert recipe.num_hidden_layers >= 8 and recipe.num_experts == 16
    assert report.peak_rss_bytes < 1.5 * 2**30
    for task in recipe.tasks:  # held-out NLL clearly below a unigram model fit on the calibration split
        nll = report.heldout_nll[task]
        assert nll["nats_per_token"] < nll["unigram_nats_per_token"] - 0.5, (name, task)
        assert nll["documents"] == recipe.eval_documents
    js = report.expert_usage_js_bits
    assert set(js) == {"code|math", "code|text", "math|text"}
    assert all(len(v) == recipe.num_hidden_layers for v in js.values())
    assert sum(js["code|text"]) / len(js["code|text"]) > 0.05  # code and text use different experts
    for task in recipe.tasks:
        usage = torch.tensor(report.expert_usage[task])
        assert usage.shape == (recipe.num_hidden_layers, recipe.num_experts)
        torch.testing.assert_close(usage.sum(dim=1), torch.ones(recipe.num_hidden_layers, dtype=usage.dtype))


@pytest.fixture(scope="session")
def loaded(family_model):
    name, folder = family_model
    model = load_model(ModelSpec(source=name))
    assert model.path == folder
    return name, model


def test_each_family_loads_by_name(loaded, capsys):
    name, model = loaded
    architecture, model_type, top_k, norm = FAMILIES[name]
    identity = model.identity
    assert (identity["name"], identity["source"], identity["architecture"]) == (name, name, architecture)
    assert identity["config"]["model_type"] == model_type and identity["config"]["norm_topk_prob"] == norm
    assert (identity["config"]["num_experts"], identity["config"]["num_experts_per_tok"]) == (16, top_k)
    assert identity["config"]["moe_layers"] == list(range(8))
    assert model.max_length == RECIPE.seq_len and model.prefix_token_id == 0 and model.tokenizer.pad_token_id == 1
    assert main(["path", name]) == 0 and capsys.readouterr().out.strip() == str(model.path)
    assert main(["build", name]) == 0  # cached: reports the earlier build, trains nothing
    out = capsys.readouterr().out
    assert "cached" in out and f"embedded {architecture} {model_key(recipe_named(name))}" in out
    with pytest.raises(SystemExit) as refused:
        main(["build", "embedded-llama"])
    assert refused.value.code == 2 and "invalid choice: 'embedded-llama'" in capsys.readouterr().err


def own_routing(model, adapter, ids):
    """{layer: (router input, top-k index, top-k weights)} as the model computes them in a forward."""
    seen, handles = {}, []
    for layer in adapter.moe_layers():
        handles.append(adapter.router_module(layer).register_forward_pre_hook(
            lambda m, args, layer=layer: seen.setdefault(layer, {}).update(x=args[0].reshape(-1, args[0].shape[-1]))))
        handles.append(adapter.experts_module(layer).register_forward_pre_hook(
            lambda m, args, layer=layer: seen[layer].update(index=args[1], weight=args[2])))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for handle in handles:
        handle.remove()
    return seen, logits


def test_the_adapter_reads_and_patches_routers_and_experts_exactly(loaded):
    from pytest_ladder.models.weights import patched_parameters

    name, model = loaded
    adapter = model.adapter
    ids = model.tokenizer(["def add(a, b):\n    return a + b\n", "The river rose after the rain."],
                          return_tensors="pt", padding=True).input_ids
    seen, logits = own_routing(model.model, adapter, ids)
    for layer, found in seen.items():
        index, weight = adapter.route(adapter.router_logits(layer, found["x"]), layer)
        assert torch.equal(index, found["index"]) and torch.equal(weight, found["weight"]), (name, layer)
        if FAMILIES[name][3] is not False:  # renormalised top-k: the weights sum to 1
            torch.testing.assert_close(weight.sum(-1), torch.ones(weight.shape[0]))
    updates = {}
    for layer in adapter.moe_layers():  # every expert written back with its own weights: the identity patch
        for expert in range(adapter.n_experts):
            updates |= adapter.expert_updates(layer, expert, adapter.expert_weights(layer, expert))
    with patched_parameters(model.model, updates):
        _, patched = own_routing(model.model, adapter, ids)
    assert torch.equal(patched, logits)
    x = torch.randn(5, adapter.hidden_size, generator=torch.Generator().manual_seed(2))
    for expert in (0, 15):
        torch.testing.assert_close(adapter.expert_forward(3, expert, x),
                                   adapter.expert_forward_module(adapter.experts_module(3), expert, x),
                                   rtol=0, atol=0)


def test_the_uncompressed_pipeline_is_exactly_zero_on_every_gate(loaded):
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.probes.lowrank import LowRankStudy, input_stacks
    from pytest_ladder.probes.rotorquant import RotorQuant, RotorQuantStudy, expert_stacks
    from pytest_ladder.probes.routes import RoutingStudy

    name, model = loaded
    routing = RoutingStudy(model, load_corpora(), n_points=128)
    dtypes = Checkpoint(model.path).dtype_bytes()
    lowrank = LowRankStudy(routing, 8, ("code", "math", "text"), calibration_points=128)
    outcome = lowrank.trivial_pass(3, "text", input_stacks(dtypes))
    assert outcome.fired_as_declared and outcome.observed == 0.0, (name, outcome.refs)
    assert outcome.refs == {"activation_error": 0.0, "route_flip_rate": 0.0, "delta_nll": 0.0, "delta_bytes": 0.0}
    quant = RotorQuantStudy(routing, quantizer=RotorQuant(2)).trivial_pass(5, "code", expert_stacks(dtypes))
    assert quant.refs == {"activation_error": 0.0, "route_flip_rate": 0.0, "delta_nll": 0.0, "delta_bytes": 0.0}


def test_the_checkpoint_files_are_read_in_each_familys_layout(loaded):
    """Mixtral's files store `block_sparse_moe.experts.E.w1/w3/w2`, Qwen3-MoE's `mlp.experts.E.gate_proj/...`: the
    file readers find the same experts and routers as the loaded model, through the adapter's StoredLayout, and the
    adapter's resident views of the loaded experts equal the files' stacks."""
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.probes.lowrank import input_stacks
    from pytest_ladder.probes.rotorquant import expert_stacks
    from pytest_ladder.probes.routes import router_delta_bytes

    name, model = loaded
    adapter, weights = model.adapter, Checkpoint(model.path)
    assert weights.layout == type(adapter).stored
    for layer in (0, 7):
        assert torch.equal(weights.router(layer), adapter.router_weight(layer))
        stored = weights.expert(layer, 9)
        read = adapter.expert_weights(layer, 9)
        assert all(torch.equal(stored[p], getattr(read, p)) for p in ("gate", "up", "down"))
        device = adapter.experts_module(layer).down_proj.device
        for projection in ("gate", "up", "down"):
            assert torch.equal(weights.experts(layer, projection)[9], getattr(read, projection))
            # G2's resident views of the loaded model: the files' stacks exactly
            assert torch.equal(adapter.resident_experts(layer, projection, device), weights.experts(layer, projection))
    assert weights.expert_dtype == torch.float32
    inter, hidden = adapter.intermediate_size, adapter.hidden_size
    stacks = expert_stacks(weights.dtype_bytes())
    assert len(stacks) == 3 * 8 and stacks["layers.7.down"] == (torch.float32, (16, hidden, inter))
    assert input_stacks(weights.dtype_bytes())["layers.0"] == (torch.float32, (16, 2 * inter, hidden))
    dtypes = weights.dtype_bytes()
    assert router_delta_bytes(dtypes, None) == 0
    assert router_delta_bytes(dtypes, 4) == 8 * 4 * ((16 + hidden) * 4 - 16 * hidden)  # rank-4 factors, float32
