"""Offload behind a real GPU, at full OLMoE scale: exact weight reads, captures equal to an in-memory run, preflight.

    python benchmarks/offload_at_scale.py MODEL_FOLDER [--max-memory cuda:0=8GiB,cpu=100GiB] [--offload-dir DIR]

Loads the model twice through pytest-ladder's loader — once whole on the GPU, once with `--max-memory` forcing
accelerate to offload layers to CPU/disk — and prints, side by side: load times, the offloaded layers, whether every
expert weight of an offloaded layer read through the meta-safe reader equals the safetensors file bit for bit, whether
a capture (Grams, top-k sets) on the same tokens is equal, the preflight result, and the time of one 4×2048 forward
in memory vs offloaded (their ratio last).
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_ladder.models.capture import CaptureSpec, capture
from pytest_ladder.models.checkpoint import Checkpoint
from pytest_ladder.models.loading import ModelSpec, load_model, parse_max_memory
from pytest_ladder.models.preflight import offloaded_layers, preflight
from pytest_ladder.models.weights import read_parameter


def timed_forward(model: torch.nn.Module, ids: torch.Tensor, repeat: int = 3) -> float:
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--max-memory", default="cuda:0=8GiB,cpu=100GiB")
    parser.add_argument("--offload-dir", default="/tmp/ladder-offload")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="auto", help="load dtype; 'auto' keeps the stored dtype (exact reads)")
    args = parser.parse_args()
    rows = []

    start = time.perf_counter()
    whole = load_model(ModelSpec(source=args.model, device="cuda:0", dtype=args.dtype))
    rows.append(("load in GPU memory (s)", f"{time.perf_counter() - start:.1f}"))
    generator = torch.Generator().manual_seed(0)
    vocab = min(whole.model.config.vocab_size, len(whole.tokenizer))
    ids = torch.randint(2, vocab, (args.batch, args.tokens), generator=generator)
    ids[:, 0] = whole.prefix_token_id
    sequences = [row.tolist() for row in ids[:, :512]]
    spec = CaptureSpec(gram=True, topk=True)
    in_memory_forward = timed_forward(whole.model, ids.to("cuda:0"))
    reference = capture(whole.model, whole.adapter, sequences, spec, batch_size=4, progress=False)
    del whole
    torch.cuda.empty_cache()

    start = time.perf_counter()
    offloaded = load_model(ModelSpec(source=args.model, device="cuda:0", dtype=args.dtype,
                                     max_memory=parse_max_memory(args.max_memory), offload_dir=args.offload_dir))
    rows.append((f"load with --ladder-max-memory {args.max_memory} (s)", f"{time.perf_counter() - start:.1f}"))
    layers = offloaded_layers(offloaded)
    rows.append(("offloaded MoE layers", str(layers)))
    rows.append(("placement", str(offloaded.identity.get("device_map"))))

    report = preflight(offloaded)
    rows.append(("preflight", str(report.as_dict())))

    checkpoint = Checkpoint(offloaded.path)
    layer = layers[-1]
    experts = offloaded.adapter.experts_module(layer)
    prefix = next(name for name, module in offloaded.model.named_modules() if module is experts)
    gate_up = read_parameter(offloaded.model, f"{prefix}.gate_up_proj").cpu()
    down = read_parameter(offloaded.model, f"{prefix}.down_proj").cpu()
    inter = down.shape[-1]
    exact = all(
        torch.equal(gate_up[e, :inter], checkpoint.expert(layer, e).gate)
        and torch.equal(gate_up[e, inter:], checkpoint.expert(layer, e).up)
        and torch.equal(down[e], checkpoint.expert(layer, e).down)
        for e in range(checkpoint.n_experts)
    )
    rows.append((f"layer {layer}: all {checkpoint.n_experts} experts read bit-exact vs safetensors", str(exact)))

    again = capture(offloaded.model, offloaded.adapter, sequences, spec, batch_size=4, progress=False)
    grams_equal = all(torch.equal(reference[i].expert_gram, again[i].expert_gram) for i in reference.layers)
    sets_equal = all(torch.equal(reference[i].topk_index.sort(-1).values, again[i].topk_index.sort(-1).values)
                     for i in reference.layers)
    max_gram = max(float((reference[i].expert_gram - again[i].expert_gram).abs().max()) for i in reference.layers)
    rows.append(("capture: expert Grams equal (offloaded vs in memory)", f"{grams_equal} (max |Δ| {max_gram:.3g})"))
    rows.append(("capture: top-k sets equal", str(sets_equal)))

    offloaded_forward = timed_forward(offloaded.model, ids.to("cuda:0"))
    rows.append((f"forward {args.batch}x{args.tokens} in GPU memory (s)", f"{in_memory_forward:.3f}"))
    rows.append((f"forward {args.batch}x{args.tokens} offloaded (s)", f"{offloaded_forward:.3f}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"offload_slowdown={offloaded_forward / in_memory_forward:.2f} weights_exact={exact} "
          f"captures_equal={grams_equal and sets_equal}")


if __name__ == "__main__":
    main()
