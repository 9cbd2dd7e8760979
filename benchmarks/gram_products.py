"""Where a capture's time goes at OLMoE-1B-7B's sizes: one MoE layer's per-expert Grams over one pass, part by part.

`benchmarks/capture_overhead.py` times a forward with and without capture; this splits the capture's own work for one
layer's pass (16,384 points routed top-8 to 64 experts, hidden 2048, bf16 as the capture sees them), each part
synchronised and timed alone, with the float rate of the products:

- the gather: sort the routes by expert, index_select the routed rows, convert them to float64 (exact);
- `models.capture.add_expert_grams` (gather + per-expert products summed into the (E, H, H) total by the product
  itself) with the whole products (1 column block), with the upper half in 2, 4 and 8 column blocks of `addmm_`, and
  (on a GPU) with the upper triangle by cuBLAS DSYRK, one launch per expert (models.cublas; the capture's default
  there), each also timed for the host alone (the time to queue its launches); the capture mirrors the lower half
  once at the end, its cost is timed too;
- the same products in float32 and TF32 (exact inputs here: bf16 values fit TF32; sums are float32, not float64).

    python benchmarks/gram_products.py [--device cuda] [--tokens 16384] [--hidden 2048] [--experts 64] [--top 8]

Prints a line per part and last `blocks1_s=<whole products> best_blocks=<b> best_s=<its time> dgemm_tflops=<rate>
syrk_s=<DSYRK time> syrk_over_best_blocks=<ratio>` (the last two on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from timing import sync, timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.models.capture import add_expert_grams, column_spans, mirror_lower, points_by_expert
from pytest_ladder.models.cublas import available as cublas_available

F64 = torch.float64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n, h, e, k = args.tokens, args.hidden, args.experts, args.top
    x = torch.randn(n, h, generator=g).to(torch.bfloat16).to(device)  # the router input, bf16 as the model's
    index = torch.argsort(torch.rand(n, e, generator=g), dim=1)[:, :k].to(device)  # k distinct experts per point
    counts = torch.bincount(index.reshape(-1), minlength=e).tolist()
    total = torch.zeros(e, h, h, dtype=F64, device=device)
    flops = 2.0 * n * k * h * h
    results: dict[str, float] = {}

    def line(name: str, seconds: float, work: float) -> None:
        results[name] = seconds
        rate = f"  {work / seconds / 1e12:6.1f} TFLOP/s" if work else ""
        print(f"{name:<62} {seconds * 1e3:9.2f} ms{rate}", flush=True)

    def gather() -> torch.Tensor:
        return x.index_select(0, points_by_expert(index, device)).to(F64)

    print(f"{args.device}: {n} points top-{k} of {e} experts, hidden {h}; rows per expert {min(counts)}..{max(counts)}"
          f" (mean {n * k / e:.0f}); routed rows {n * k * h * 8 / 2**30:.2f} GiB in float64")
    line("gather: sort, index_select, to float64", timed(gather, device, args.repeats)[1], 0.0)
    def host(run) -> float:  # the host's time to queue the work (the device may still be running it)
        sync(device)
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        sync(device)
        return seconds

    for blocks in (1, 2, 4, 8):
        spans = column_spans(h, blocks)
        share = (blocks + 1) / (2 * blocks)
        run = functools.partial(add_expert_grams, total, x, index, counts, spans, F64, syrk=False)
        line(f"add_expert_grams float64, {blocks} column block(s)", timed(run, device, args.repeats)[1],
             flops * share)
        line("  host time to queue it", host(run), 0.0)
    spans = column_spans(h, 4)
    if device.type == "cuda" and cublas_available():
        run = functools.partial(add_expert_grams, total, x, index, counts, spans, F64, syrk=True)
        line("add_expert_grams float64, upper triangle by cuBLAS DSYRK", timed(run, device, args.repeats)[1],
             flops / 2)
        line("  host time to queue it", host(run), 0.0)
    line("  mirror the lower half (4 blocks), once per capture",
         timed(lambda: mirror_lower(total, spans), device, args.repeats)[1], 0.0)
    single = torch.zeros(e, h, h, dtype=torch.float32, device=device)
    line("add_expert_grams float32 products, 4 column blocks",
         timed(lambda: add_expert_grams(single, x, index, counts, spans, torch.float32), device, args.repeats)[1],
         flops * 5 / 8)
    if device.type == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            line("add_expert_grams TF32 products (float32 sums), 4 column blocks",
                 timed(lambda: add_expert_grams(single, x, index, counts, spans, torch.float32), device,
                       args.repeats)[1], flops * 5 / 8)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    by_blocks = {b: results[f"add_expert_grams float64, {b} column block(s)"] for b in (1, 2, 4, 8)}
    best = min(by_blocks, key=by_blocks.get)
    rate = flops * (best + 1) / (2 * best) / by_blocks[best] / 1e12
    syrk = results.get("add_expert_grams float64, upper triangle by cuBLAS DSYRK")
    tail = f" syrk_s={syrk:.4f} syrk_over_best_blocks={syrk / by_blocks[best]:.3f}" if syrk else ""
    print(f"blocks1_s={by_blocks[1]:.4f} best_blocks={best} best_s={by_blocks[best]:.4f} dgemm_tflops={rate:.1f}{tail}")


if __name__ == "__main__":
    main()
