"""Write a Qwen3-30B-A3B-shaped model with random weights (bf16) to a folder, for scale checks on a second family.

    python benchmarks/make_qwen3_moe_shaped.py /tmp/qwen3-moe-random [--layers N] [--device cuda]
    python benchmarks/make_qwen3_moe_shaped.py /tmp/qwen3-moe-tiny --layers 1 --scale 16 --device cpu   # a CPU check

Shape: Qwen3-30B-A3B's layers (hidden 2048, 32 query heads and 4 key/value heads of 128, per-head q/k norm, 128
experts of intermediate size 768, softmax top-8 renormalised, every layer MoE, vocab 151936, untied embeddings), but
only the first N of its 48 layers: one layer holds 623.1M parameters (1.25 GB in bf16), the embeddings and head
622.3M (1.24 GB). The default N is the most layers whose checkpoint fits the GPU machine's disk twice over (the
checkpoint, and an accelerate offload folder that may hold every offloaded weight once more) after a reserve for
the system, the environment and the run's outputs: --disk-gib 64, --reserve-gib 16 give 19 layers, 24.9 GB.
`--scale S` divides the widths (hidden, head size, expert and dense intermediate) by S, for a quick check on a CPU.

The tokenizer is the embedded models' (models/embedded.py train_tokenizer on the calibration documents: the same
bytes every embedded family saves; its ids all fall inside the vocabulary). Weights are initialised on `--device`
(a GPU makes this seconds) with the model's own init, seeded, and saved with save_pretrained. The output folder's
disk must have room for the checkpoint (checked first).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

FULL_LAYERS = 48
GB = 10**9
GIB = 2**30


def qwen3_30b_a3b_config(layers: int, scale: int = 1) -> Qwen3MoeConfig:
    """Qwen3-30B-A3B's config with `layers` layers and widths divided by `scale`; token ids of the embedded tokenizer
    (<|endoftext|> 0 begins and ends, <|padding|> 1 pads)."""
    return Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048 // scale, intermediate_size=6144 // scale,
        moe_intermediate_size=768 // scale, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128 // scale, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
        use_sliding_window=False, router_aux_loss_coef=0.001, bos_token_id=0, eos_token_id=0, pad_token_id=1,
        dtype="bfloat16")


def parameter_counts(config: Qwen3MoeConfig) -> tuple[int, int]:
    """(parameters of one decoder layer, parameters outside the layers: embeddings, head, final norm)."""
    hidden, heads, kv_heads, head_dim = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                         config.head_dim)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 2 * head_dim
    experts = config.num_experts * 3 * hidden * config.moe_intermediate_size + config.num_experts * hidden
    layer = attention + experts + 2 * hidden
    return layer, 2 * config.vocab_size * hidden + hidden


def layers_that_fit(disk_bytes: int, reserve_bytes: int, copies: int = 2, scale: int = 1) -> int:
    """The most layers (at most 48) whose bf16 checkpoint, `copies` times over, fits `disk_bytes - reserve_bytes`."""
    layer, rest = parameter_counts(qwen3_30b_a3b_config(1, scale))
    room = (disk_bytes - reserve_bytes) // copies
    return max(0, min(FULL_LAYERS, (room - 2 * rest) // (2 * layer)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers (default: what fits --disk-gib twice after --reserve-gib)")
    parser.add_argument("--disk-gib", type=float, default=64.0, help="the disk the model is for (default 64)")
    parser.add_argument("--reserve-gib", type=float, default=16.0,
                        help="kept free of model bytes on that disk: system, environment, outputs (default 16)")
    parser.add_argument("--scale", type=int, default=1, help="divide the widths by this (a CPU check), default 1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scale < 1 or 2048 % args.scale or 768 % args.scale or 128 % args.scale:
        parser.error(f"--scale {args.scale}: must divide 2048, 768 and 128 (e.g. 1, 2, 4, 8, 16, 32, 64, 128)")
    layers = args.layers if args.layers is not None else layers_that_fit(
        int(args.disk_gib * GIB), int(args.reserve_gib * GIB), scale=args.scale)
    if not 1 <= layers <= FULL_LAYERS:
        parser.error(f"--layers {layers}: Qwen3-30B-A3B has 1..{FULL_LAYERS} layers (with the default, raise "
                     "--disk-gib or lower --reserve-gib)")
    config = qwen3_30b_a3b_config(layers, args.scale)
    layer, rest = parameter_counts(config)
    expected = 2 * (layers * layer + rest)
    args.out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.out).free
    if expected > free:
        print(f"make_qwen3_moe_shaped: {layers} layers need {expected / GB:.1f} GB, {args.out}'s disk has "
              f"{free / GB:.1f} GB free; pass fewer --layers", file=sys.stderr)
        return 2
    print(f"Qwen3-30B-A3B-shaped: {layers} of {FULL_LAYERS} layers, scale 1/{args.scale}: "
          f"{layers * layer + rest} parameters, {expected / GB:.2f} GB in bf16 -> {args.out}")

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = Qwen3MoeForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != layers * layer + rest:
        raise AssertionError(f"parameter count {n_params} != the computed {layers * layer + rest}")
    built = time.perf_counter()
    model.save_pretrained(args.out, max_shard_size="2GB")
    del model

    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.embedded import RECIPE, train_tokenizer

    corpora = load_corpora(RECIPE.tasks)
    texts = [text for task in RECIPE.tasks for text in corpora[task].texts("calibration")]
    train_tokenizer(texts, RECIPE.vocab_size, RECIPE.seq_len).save_pretrained(args.out)
    saved = time.perf_counter()
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    print(f"params={n_params} bytes={size} init_s={built - start:.1f} save_s={saved - built:.1f} out={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
