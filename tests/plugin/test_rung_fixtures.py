"""Cells resolved against the model, and checkpoint reads equal to the loaded model's weights bit for bit."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.models.checkpoint import Checkpoint
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size


@pytest.mark.parametrize(("spec", "n", "layer"), [
    ("3/16", 16, 3), ("3/16", 8, 1), ("3/16", 4, 0), ("15/16", 8, 7), ("0/16", 8, 0), ("1/2", 8, 4), (5, 8, 5),
])
def test_resolve_layer(spec, n, layer):
    assert resolve_layer(spec, n) == layer


@pytest.mark.parametrize("spec", ["16/16", "-1/16", "x", 9, True])
def test_resolve_layer_refuses(spec):
    with pytest.raises((ValueError, TypeError)):
        resolve_layer(spec, 8)


def test_resolve_size():
    assert resolve_size(16 / 2048, 2048) == 16
    assert resolve_size(16 / 2048, 128) == 1
    assert resolve_size(100 / 2016, 120) == 6
    with pytest.raises(ValueError):
        resolve_size(0.0, 10)


@pytest.fixture(scope="module")
def tiny_olmoe(tmp_path_factory):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                         eos_token_id=1, pad_token_id=0, bos_token_id=None)
    model = OlmoeForCausalLM(config)
    folder = tmp_path_factory.mktemp("olmoe")
    model.save_pretrained(folder)
    return model, folder


def test_checkpoint_reads_every_expert_bit_exact(tiny_olmoe):
    model, folder = tiny_olmoe
    checkpoint = Checkpoint(folder)
    assert (checkpoint.n_layers, checkpoint.n_experts, checkpoint.top_k) == (2, 4, 2)
    for layer in range(2):
        experts = model.model.layers[layer].mlp.experts
        inter = experts.down_proj.shape[-1]
        assert torch.equal(checkpoint.router(layer), model.model.layers[layer].mlp.gate.weight)
        assert torch.equal(checkpoint.experts(layer, "gate"), experts.gate_up_proj[:, :inter])
        assert torch.equal(checkpoint.experts(layer, "up"), experts.gate_up_proj[:, inter:])
        assert torch.equal(checkpoint.experts(layer, "down"), experts.down_proj)


def test_checkpoint_reads_fused_expert_stacks(tmp_path, tiny_olmoe):
    """A checkpoint storing the fused stacks (experts.gate_up_proj (E, 2I, H), experts.down_proj (E, H, I)) reads the
    same experts as the per-expert one, each projection alone or expert by expert."""
    from safetensors.torch import save_file

    model, folder = tiny_olmoe
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, tmp_path / "model.safetensors")
    fused, per_expert = Checkpoint(tmp_path), Checkpoint(folder)
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused.names
    assert "model.layers.0.mlp.experts.gate_up_proj" not in per_expert.names
    for layer in range(2):
        for projection in ("gate", "up", "down"):
            stacked = fused.experts(layer, projection)
            assert torch.equal(stacked, per_expert.experts(layer, projection))
            assert torch.equal(stacked, torch.stack([fused.expert(layer, e)[projection] for e in range(4)]))
    with pytest.raises(ValueError, match="projection must be gate, up or down"):
        fused.experts(0, "gate_up")


def test_checkpoint_names_missing_pieces(tmp_path, tiny_olmoe):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Checkpoint(tmp_path)
    with pytest.raises(IndexError, match="layer 5"):
        Checkpoint(tiny_olmoe[1]).expert(5, 0)
