"""Capture overhead, measured side by side: a plain forward vs the same forward with pytest-ladder's capture hooks
accumulating per-expert float64 Gram matrices and top-k (pytest_ladder.models.capture), on the embedded model.

    python benchmarks/capture_overhead.py [--model embedded] [--device cpu] [--tokens 8192] [--batch 8]
                                          [--repeats 5] [--threads N] [--blocks 1,4] [--profile]

All runs see the same held-out text tokens in the same batches; they alternate (plain, capture with the device's
defaults, the same with its Gram passes in line during a plain forward, with each of --blocks column blocks of
`addmm_` for the symmetric upper half (1: whole products) and --pass-mib pass sizes in line, float32 block products,
plain, ...) so machine noise hits all, and the medians are compared. The defaults on a GPU: the upper triangle by
cuBLAS DSYRK, each layer's pass on a side stream while the layers after it run (the capture goes layer by layer).
Prints the times and last `overhead_ratio=<x>` (default capture — float64 products and sums — time / plain time;
target <= 1.25 on CPU, <= 1.5 on a GPU), `in_line_ratio=<y>`, `blocks<b>_pass<m>_ratio=<z>` per --blocks and
--pass-mib value and `float32_products_ratio=<w>` (CaptureSpec(gram_products="float32"): float32 products, float64
sums). --profile prints torch.profiler's table of one default capture (the kernels and host calls that take its
time).
"""

from __future__ import annotations

import argparse
import statistics
import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.models.capture import CaptureSpec, batches, capture, gram_blocks, model_device, pad_batch
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
    parser.add_argument("--blocks", type=lambda text: [int(b) for b in text.split(",")], default=[1],
                        help="column block counts of the float64 upper-half products to time too (1: whole)")
    parser.add_argument("--pass-mib", type=lambda text: [int(m) for m in text.split(",")], default=[64],
                        help="routed inputs a layer keeps before a Gram pass, MiB (CaptureSpec.gram_pass_bytes)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one capture")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec(source=args.model, device=args.device))
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.prefix_token_id
    sequences = token_sequences(load_corpus("text").heldout, loaded.tokenizer, args.tokens, loaded.max_length,
                                loaded.prefix_token_id)
    specs = {"default": CaptureSpec(gram=True, topk=True),
             "in_line": CaptureSpec(gram=True, topk=True, gram_overlap=False)}
    for blocks in args.blocks:
        for mib in args.pass_mib:
            specs[f"blocks{blocks}_pass{mib}"] = CaptureSpec(gram=True, topk=True, gram_blocks=blocks,
                                                             gram_pass_bytes=mib * 2**20, gram_syrk=False,
                                                             gram_overlap=False)
    specs["float32"] = CaptureSpec(gram_products="float32")
    device = model_device(loaded.model)

    def timed_capture(spec: CaptureSpec, chosen: list[list[int]]) -> float:
        return timed(lambda: capture(loaded.model, loaded.adapter, chosen, spec, batch_size=args.batch,
                                     pad_token_id=pad, progress=False), device, 1)[1]

    plain_forward(loaded.model, sequences[:args.batch], args.batch, pad)  # warm up every path
    for spec in specs.values():
        timed_capture(spec, sequences[:args.batch])
    plain: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(args.repeats):
        plain.append(plain_forward(loaded.model, sequences, args.batch, pad))
        for name, spec in specs.items():
            times[name].append(timed_capture(spec, sequences))
    plain_s = statistics.median(plain)
    median = {name: statistics.median(values) for name, values in times.items()}
    layers, experts, hidden = len(loaded.adapter.moe_layers()), loaded.adapter.n_experts, loaded.adapter.hidden_size
    print(f"model {loaded.identity['name']} ({layers} MoE layers x {experts} experts, hidden {hidden}), "
          f"{args.tokens} tokens in {len(sequences)} sequences, batches of {args.batch}, {torch.get_num_threads()} "
          f"threads, {device}, median of {args.repeats}; default column blocks {gram_blocks(specs['default'], device)}")
    print(f"{'plain forward:':<44}{plain_s:.3f} s  (all: {', '.join(f'{t:.3f}' for t in plain)})")
    labels = {"default": "forward + capture (float64 Grams):", "float32": "  same, float32 block products:",
              "in_line": "  same, passes in line, plain forward:"}
    for name, values in times.items():
        blocks, mib = name[6:].split("_pass") if name.startswith("blocks") else ("", "")
        label = labels.get(name, f"  same, {blocks} column block(s), {mib} MiB passes:")
        print(f"{label:<44}{median[name]:.3f} s  (all: {', '.join(f'{t:.3f}' for t in values)})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            timed_capture(specs["default"], sequences)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    ratios = " ".join(f"{name}_ratio={median[name] / plain_s:.3f}" for name in specs
                      if name.startswith("blocks") or name == "in_line")
    print(f"overhead_ratio={median['default'] / plain_s:.3f} {ratios} "
          f"float32_products_ratio={median['float32'] / plain_s:.3f}")

if __name__ == "__main__":
    main()
