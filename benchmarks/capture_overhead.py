"""Capture overhead, measured side by side: a plain forward vs the same forward with pytest-ladder's capture hooks
accumulating per-expert float64 Gram matrices and top-k (pytest_ladder.models.capture), on the embedded model.

    python benchmarks/capture_overhead.py [--model embedded] [--device cpu] [--tokens 8192] [--batch 8]
                                          [--repeats 5] [--threads N]

All runs see the same held-out text tokens in the same batches; they alternate (plain, capture, capture with
float32 block products, plain, ...) so machine noise hits all, and the medians are compared. Prints the times and
last `overhead_ratio=<x>` (default capture — float64 products and sums — time / plain time; target <= 1.25 on CPU)
and `float32_products_ratio=<y>` (CaptureSpec(gram_products="float32"): float32 block products, float64 sums).
"""

from __future__ import annotations

import argparse
import statistics
import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.models.capture import CaptureSpec, batches, capture, model_device, pad_batch
from pytest_ladder.models.corpora import load_corpus, token_sequences
from pytest_ladder.models.loading import ModelSpec, load_model


def plain_forward(model: torch.nn.Module, sequences: list[list[int]], batch_size: int, pad: int) -> float:
    device = model_device(model)

    def run() -> None:
        with torch.no_grad():
            for batch in batches(sequences, batch_size):
                ids, mask = pad_batch(batch, pad, device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    return timed(run, device, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda: the GPU figure of the target)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec(source=args.model, device=args.device))
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.prefix_token_id
    sequences = token_sequences(load_corpus("text").heldout, loaded.tokenizer, args.tokens, loaded.max_length,
                                loaded.prefix_token_id)
    specs = {"float64": CaptureSpec(gram=True, topk=True), "float32": CaptureSpec(gram_products="float32")}

    def timed_capture(spec: CaptureSpec, chosen: list[list[int]]) -> float:
        return timed(lambda: capture(loaded.model, loaded.adapter, chosen, spec, batch_size=args.batch,
                                     pad_token_id=pad, progress=False), model_device(loaded.model), 1)[1]

    plain_forward(loaded.model, sequences[:args.batch], args.batch, pad)  # warm up every path
    for spec in specs.values():
        timed_capture(spec, sequences[:args.batch])
    plain, captured, captured32 = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_forward(loaded.model, sequences, args.batch, pad))
        captured.append(timed_capture(specs["float64"], sequences))
        captured32.append(timed_capture(specs["float32"], sequences))
    plain_s, capture_s, capture32_s = (statistics.median(v) for v in (plain, captured, captured32))
    layers, experts, hidden = len(loaded.adapter.moe_layers()), loaded.adapter.n_experts, loaded.adapter.hidden_size
    print(f"model {loaded.identity['name']} ({layers} MoE layers x {experts} experts, hidden {hidden}), "
          f"{args.tokens} tokens in batches of {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"plain forward:                      {plain_s:.3f} s  (all: {', '.join(f'{t:.3f}' for t in plain)})")
    print(f"forward + capture (float64 Grams):  {capture_s:.3f} s  (all: {', '.join(f'{t:.3f}' for t in captured)})")
    print(f"  same, float32 block products:     {capture32_s:.3f} s  "
          f"(all: {', '.join(f'{t:.3f}' for t in captured32)})")
    print(f"overhead_ratio={capture_s / plain_s:.3f} float32_products_ratio={capture32_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
