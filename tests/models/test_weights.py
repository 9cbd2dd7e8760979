"""Meta-safe weights: bit-exact reads in memory, CPU-offloaded and disk-offloaded; patches restore bit for bit and
never write the offload files or the checkpoint; the per-expert output loop equals the fused forward."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload

from pytest_ladder.models.adapters import ExpertWeights, adapter_for
from pytest_ladder.models.weights import (WeightAccessError, locate, patched_parameters, read_parameter, routed_rows,
                                          transformed_expert_outputs, write_parameter)


def folder_hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*"))
            if p.is_file()}


@pytest.fixture
def memory(tiny_folder, load_tiny):
    return load_tiny(tiny_folder)


@pytest.fixture
def disk(tiny_folder, tmp_path, load_tiny):
    return load_tiny(tiny_folder, tmp_path / "offload"), tmp_path / "offload"


@pytest.fixture
def cpu_offloaded(tiny_folder, load_tiny):
    """accelerate's CPU offload: every parameter a meta placeholder, values in a CPU state dict."""
    return cpu_offload(load_tiny(tiny_folder), execution_device=torch.device("cpu"))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[0, 5, 17, 99, 3, 250, 42, 7, 7, 300, 11]])


def test_disk_offload_reads_every_weight_bit_exact_and_logits_match(memory, disk):
    offloaded, _ = disk
    names = [n for n, _ in memory.named_parameters()]
    placeholders = [n for n, p in offloaded.named_parameters() if p.device.type == "meta"]
    assert placeholders and all(".layers.1." in n or ".layers.3." in n for n in placeholders)
    for name in names:
        assert torch.equal(read_parameter(offloaded, name), read_parameter(memory, name)), name
    assert {locate(offloaded, n).storage for n in placeholders} == {"offload:disk"}
    assert torch.equal(logits(offloaded, IDS), logits(memory, IDS))
    assert all(p.device.type == "meta" for n, p in offloaded.named_parameters() if n in placeholders)


def test_cpu_offload_reads_bit_exact(memory, cpu_offloaded):
    for name, param in memory.named_parameters():
        assert torch.equal(read_parameter(cpu_offloaded, name), param.detach()), name
        assert locate(cpu_offloaded, name).storage == "offload:cpu"
    assert torch.equal(logits(cpu_offloaded, IDS), logits(memory, IDS))


def test_indexed_read_of_a_disk_offloaded_fused_expert(memory, disk):
    offloaded, _ = disk
    name = "model.layers.3.mlp.experts.gate_up_proj"
    assert torch.equal(read_parameter(offloaded, name, 5), memory.model.layers[3].mlp.experts.gate_up_proj[5])


@pytest.mark.parametrize("placement", ["memory", "disk", "cpu_offloaded"])
def test_patch_and_restore_is_bit_exact_and_never_writes_files(placement, request, tiny_folder):
    loaded = request.getfixturevalue(placement)
    model, offload = loaded if placement == "disk" else (loaded, None)
    adapter = adapter_for(model)
    before_files = folder_hashes(tiny_folder, *([offload] if offload else []))
    before = {n: read_parameter(model, n).clone() for n, _ in model.named_parameters()}
    dense = logits(model, IDS)
    layer = 3
    original = adapter.expert_weights(layer, 2)
    compressed = ExpertWeights(gate=torch.zeros_like(original.gate), up=original.up * 0.5, down=original.down.round())
    updates = {**adapter.expert_updates(layer, 2, compressed),
               "model.layers.3.mlp.gate.weight": torch.ones_like(before["model.layers.3.mlp.gate.weight"])}
    with patched_parameters(model, updates):
        inside = adapter.expert_weights(layer, 2)
        assert torch.equal(inside.gate, compressed.gate) and torch.equal(inside.up, compressed.up)
        assert torch.equal(inside.down, compressed.down)
        fused = before["model.layers.3.mlp.experts.gate_up_proj"]
        assert torch.equal(read_parameter(model, "model.layers.3.mlp.experts.gate_up_proj", 1), fused[1])
        assert torch.equal(adapter.router_weight(layer), torch.ones_like(adapter.router_weight(layer)))
        assert not torch.equal(logits(model, IDS), dense)
    for name, value in before.items():
        assert torch.equal(read_parameter(model, name), value), name
    assert torch.equal(logits(model, IDS), dense)
    assert folder_hashes(tiny_folder, *([offload] if offload else [])) == before_files
    if placement != "memory":
        assert all(p.device.type == "meta" for n, p in model.named_parameters() if ".layers.3." in n)


@pytest.mark.parametrize("placement", ["memory", "disk"])
def test_patched_layers_makes_each_layers_updates_after_the_previous_are_installed(placement, request):
    """A layer's updates are made only once the previous layer's are in (so one layer's new values exist at a time);
    inside, every layer is patched; on exit every parameter is back bit for bit, also after an exception."""
    from pytest_ladder.models.weights import patched_layers

    loaded = request.getfixturevalue(placement)
    model = loaded[0] if placement == "disk" else loaded
    adapter = adapter_for(model)
    before = {n: read_parameter(model, n).clone() for n, _ in model.named_parameters()}
    seen = []

    def layer_updates(layer):
        def make():
            seen.append([bool(torch.count_nonzero(adapter.expert_weights(k, 0).gate) == 0) for k in (1, 2)])
            w = adapter.expert_weights(layer, 0)
            return adapter.expert_updates(layer, 0, ExpertWeights(torch.zeros_like(w.gate), w.up, w.down))
        return make

    with pytest.raises(RuntimeError, match="boom"):
        with patched_layers(model, (layer_updates(layer) for layer in (1, 2))):
            assert seen == [[False, False], [True, False]]
            assert all(torch.count_nonzero(adapter.expert_weights(k, 0).gate) == 0 for k in (1, 2))
            raise RuntimeError("boom")
    for name, value in before.items():
        assert torch.equal(read_parameter(model, name), value), name


def test_patch_restores_after_an_exception(disk):
    model, _ = disk
    name = "model.layers.1.self_attn.q_proj.weight"
    original = read_parameter(model, name).clone()
    with pytest.raises(RuntimeError, match="boom"):
        with patched_parameters(model, {name: torch.zeros_like(original)}):
            assert torch.count_nonzero(read_parameter(model, name)) == 0
            raise RuntimeError("boom")
    assert torch.equal(read_parameter(model, name), original)


def test_write_parameter_on_disk_offload_changes_values_not_files(disk, tiny_folder, memory):
    model, offload = disk
    before_files = folder_hashes(tiny_folder, offload)
    adapter = adapter_for(model)
    weights = adapter.expert_weights(1, 4)
    new = ExpertWeights(gate=weights.gate + 1, up=weights.up, down=weights.down - 1)
    adapter.set_expert_weights(1, 4, new)
    got = adapter.expert_weights(1, 4)
    assert torch.equal(got.gate, new.gate) and torch.equal(got.down, new.down) and torch.equal(got.up, weights.up)
    memory_adapter = adapter_for(memory)
    memory_adapter.set_expert_weights(1, 4, new)
    assert torch.equal(logits(model, IDS), logits(memory, IDS))
    assert folder_hashes(tiny_folder, offload) == before_files


def test_shape_mismatch_and_unknown_names_are_clear(memory):
    with pytest.raises(WeightAccessError, match=r"model.layers.0.mlp.gate.weight: new value has shape \(3,\)"):
        write_parameter(memory, "model.layers.0.mlp.gate.weight", torch.zeros(3))
    with pytest.raises(WeightAccessError, match="has no parameter or buffer 'nope'"):
        read_parameter(memory, "model.layers.0.mlp.nope")


def test_routed_rows_are_the_eager_loops_rows_in_its_order():
    """Per expert, the (slot, token) rows transformers' eager loop takes with torch.where over the one-hot mask, in the
    same order; unrouted experts and the padding index (n_experts) are skipped."""
    generator = torch.Generator().manual_seed(2)
    n_experts, top_k = 9, 3
    index = torch.stack([torch.randperm(n_experts + 1, generator=generator)[:top_k] for _ in range(40)])
    index[index == 4] = 5  # expert 4 routed nothing (a token may then hold 5 twice: the mask counts both)
    mask = torch.nn.functional.one_hot(index, num_classes=n_experts + 1).permute(2, 1, 0)
    expected = [(e, *torch.where(mask[e])) for e in range(n_experts) if mask[e].any()]
    found = list(routed_rows(index, n_experts))
    assert [e for e, _, _ in found] == [e for e, _, _ in expected] and 4 not in [e for e, _, _ in found]
    for (_, pos, tok), (_, pos_ref, tok_ref) in zip(found, expected):
        assert torch.equal(pos, pos_ref) and torch.equal(tok, tok_ref)


def test_expert_output_loop_equals_the_fused_forward(tiny_folder, disk, load_tiny):
    eager = load_tiny(tiny_folder, experts_implementation="eager")
    grouped = load_tiny(tiny_folder)
    reference = logits(eager, IDS)
    for model, exact in ((eager, True), (grouped, False), (disk[0], False)):
        before = logits(model, IDS)
        calls = []
        with transformed_expert_outputs(adapter_for(model), lambda layer, e, y: calls.append((layer, e)) or y):
            patched = logits(model, IDS)
        if exact:  # the loop is transformers' eager experts loop, op for op
            assert torch.equal(patched, reference)
        else:  # grouped_mm sums in another order
            torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)
        assert {layer for layer, _ in calls} == {0, 1, 2, 3}
        assert torch.equal(logits(model, IDS), before)  # the fused forward is back


def test_zeroed_expert_outputs_equal_zeroed_down_projections(tiny_folder, load_tiny):
    """Transforming every routed output to 0 must equal a model whose experts' down_proj is 0 (exactly)."""
    model = load_tiny(tiny_folder, experts_implementation="eager")
    adapter = adapter_for(model)
    zero_down = {f"model.layers.{i}.mlp.experts.down_proj": torch.zeros_like(read_parameter(
        model, f"model.layers.{i}.mlp.experts.down_proj")) for i in adapter.moe_layers()}
    with patched_parameters(model, zero_down):
        expected = logits(model, IDS)
    for weighted in (False, True):
        with transformed_expert_outputs(adapter, lambda layer, e, y: torch.zeros_like(y), weighted=weighted):
            assert torch.equal(logits(model, IDS), expected)


def test_weighted_transform_sees_the_weighted_output(tiny_folder, load_tiny):
    """Doubling before or after the routing weight is the same linear change: both equal doubling down_proj."""
    model = load_tiny(tiny_folder, experts_implementation="eager")
    adapter = adapter_for(model)
    double_down = {f"model.layers.{i}.mlp.experts.down_proj": 2 * read_parameter(
        model, f"model.layers.{i}.mlp.experts.down_proj") for i in adapter.moe_layers()}
    with patched_parameters(model, double_down):
        expected = logits(model, IDS)
    for weighted in (False, True):
        with transformed_expert_outputs(adapter, lambda layer, e, y: 2 * y, weighted=weighted):
            torch.testing.assert_close(logits(model, IDS), expected, rtol=1e-6, atol=1e-6)
