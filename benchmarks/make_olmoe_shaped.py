"""Write an OLMoE-1B-7B-shaped model with random weights (bf16) to a folder, for scale checks without the hub.

    python benchmarks/make_olmoe_shaped.py /tmp/olmoe-1b-7b-random [--layers 16] [--device cuda]

Shape: OlmoeConfig(intermediate_size=1024) — 16 layers, hidden 2048, 64 experts of intermediate size 1024, top-8,
vocab 50304: 6.9B parameters, 13.8 GB in bf16 (transformers' default intermediate size, 2048, is not this model).
The embedded model's tokenizer is saved beside it (its ids all fall inside the vocabulary). Weights are initialised
on `--device` (a GPU makes this seconds) with the model's own init, seeded, and saved with save_pretrained.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM


def olmoe_1b_7b_config(layers: int = 16) -> OlmoeConfig:
    return OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=layers,
                       num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                       max_position_embeddings=4096, pad_token_id=1, eos_token_id=50279, bos_token_id=None,
                       torch_dtype="bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from pytest_ladder.models.embedded import ensure_embedded_model

    embedded = ensure_embedded_model()  # its tokenizer goes beside the weights: found first, so a missing project
    start = time.perf_counter()  # (not on PYTHONPATH) stops this before a folder without a tokenizer is written
    torch.manual_seed(args.seed)
    config = olmoe_1b_7b_config(args.layers)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = OlmoeForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter()
    model.save_pretrained(args.out, max_shard_size="2GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (embedded / name).is_file():
            shutil.copy(embedded / name, args.out / name)
    saved = time.perf_counter()
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    print(f"params={n_params} bytes={size} init_s={built - start:.1f} save_s={saved - built:.1f} out={args.out}")


if __name__ == "__main__":
    main()
