"""Tiny real models for the model-layer tests: built from transformers configs in the test session, saved with
save_pretrained (+ a small BPE tokenizer trained on real corpus text), reloaded in memory or offloaded to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_OLMOE = dict(vocab_size=320, hidden_size=32, intermediate_size=16, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, max_position_embeddings=64,
                  bos_token_id=0, eos_token_id=0, pad_token_id=1)
# layers 1 and 3 on disk, the rest in memory
DISK_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
            "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every model test runs torch on one thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def texts() -> dict[str, list[str]]:
    """A few real documents per task (calibration split) for tokenizers and inputs."""
    from pytest_ladder.models.corpora import load_corpora

    corpora = load_corpora()
    return {task: corpus.texts("calibration")[:40] for task, corpus in corpora.items()}


@pytest.fixture(scope="session")
def tiny_tokenizer(texts):
    from pytest_ladder.models.embedded import train_tokenizer

    return train_tokenizer([t for docs in texts.values() for t in docs], TINY_OLMOE["vocab_size"], 64)


def build_tiny_olmoe(seed: int = 0, **overrides):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(seed)
    model = OlmoeForCausalLM(OlmoeConfig(**{**TINY_OLMOE, **overrides})).eval()
    with torch.no_grad():  # larger router weights than the init so routing is decisive, not near-uniform
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random OLMoE saved with save_pretrained, with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-olmoe")
    build_tiny_olmoe().save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _load_tiny(folder: Path, offload: Path | None = None, **options):
    from transformers import AutoModelForCausalLM

    if offload is not None:
        options.update(device_map=DISK_MAP, offload_folder=str(offload))
    return AutoModelForCausalLM.from_pretrained(folder, **options).eval()


@pytest.fixture(scope="session")
def load_tiny():
    """load_tiny(folder, offload=None, **from_pretrained options): the tiny model in memory, or with DISK_MAP."""
    return _load_tiny


@pytest.fixture(scope="session")
def build_olmoe():
    """build_olmoe(seed=0, **config overrides): a fresh tiny random OLMoE (routers scaled up)."""
    return build_tiny_olmoe


@pytest.fixture(scope="session")
def sequences(texts, tiny_tokenizer) -> list[list[int]]:
    """Token sequences (prefix + up to 40 document tokens) of unequal lengths from all three tasks."""
    out = []
    for docs in texts.values():
        for text in docs[:4]:
            ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append([0, *ids[:12 + 7 * len(out) % 29]])
    return out
