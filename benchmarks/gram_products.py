"""Where a capture's time goes at OLMoE-1B-7B's sizes: one MoE layer's per-expert Grams, part by part.

`benchmarks/capture_overhead.py` times a forward with and without capture; this splits the capture's own work for one
layer and one batch (16,384 points routed top-8 to 64 experts, hidden 2048, as the capture sees them), each part
synchronised and timed alone, with the float rate of the products:

- the whole `_Recorder._expert_grams` call (gather the routed rows, zero-padded stack, float64 batched product, sum);
- its gather alone (`_gather_routed`: sort, index_select, the padded stack);
- the batched product X_eᵀX_e of the padded stack in float64: a new product then `+=` (as the capture does), and
  `baddbmm_` into the total; float32; TF32 (exact inputs here: bf16 values fit TF32);
- the same product on the upper half only, in 2 and 4 column blocks (strided slices of the stack, and contiguous
  copies of them), to see whether the symmetric half pays.

    python benchmarks/gram_products.py [--device cuda] [--tokens 16384] [--hidden 2048] [--experts 64] [--top 8]

Prints a line per part and last `expert_grams_s=<whole call> product_f64_s=<product alone> dgemm_tflops=<rate>`.
"""

from __future__ import annotations

import argparse

import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.models.capture import CaptureSpec, LayerCapture, _gather_routed, _Recorder

F64 = torch.float64


class _Adapter:
    """What _Recorder reads of an adapter: the expert count."""

    def __init__(self, n_experts: int) -> None:
        self.n_experts = n_experts


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
    counts = torch.bincount(index.reshape(-1), minlength=e)
    widest = int(counts.max())
    x64 = x.to(F64)
    recorder = _Recorder(_Adapter(e), CaptureSpec(), [0])

    def whole() -> None:
        recorder._expert_grams(LayerCapture(0), x64, index, counts)

    def gather() -> torch.Tensor:
        return _gather_routed(x64, index, counts, e)[1]

    stack = gather()
    stack32 = stack.float()
    total = torch.zeros(e, h, h, dtype=F64, device=device)
    flops = 2.0 * e * widest * h * h
    rows: list[tuple[str, float, float]] = []

    def line(name: str, seconds: float, work: float) -> None:
        rate = work / seconds / 1e12 if work else 0.0
        rows.append((name, seconds, rate))
        print(f"{name:<62} {seconds * 1e3:9.2f} ms" + (f"  {rate:6.1f} TFLOP/s" if work else ""), flush=True)

    def added() -> None:
        nonlocal total
        total += torch.bmm(stack.transpose(1, 2), stack)

    def upper(blocks: int, contiguous: bool) -> float:
        edges = [round(i * h / blocks) for i in range(blocks + 1)]
        spans = [slice(a, b) for a, b in zip(edges, edges[1:])]
        pieces = [stack[..., s].contiguous() if contiguous else stack[..., s] for s in spans]

        def run() -> None:
            for i, a in enumerate(pieces):
                for j in range(i, blocks):
                    total[:, spans[i], spans[j]] += torch.bmm(a.transpose(1, 2), pieces[j])

        return timed(run, device, args.repeats)[1]

    print(f"{args.device}: {n} points top-{k} of {e} experts, hidden {h}; widest expert {widest} rows "
          f"(mean {n * k / e:.0f}), padded stack {stack.numel() * 8 / 2**30:.2f} GiB float64")
    line("whole _expert_grams call (float64)", timed(whole, device, args.repeats)[1], flops)
    line("  gather: sort, index_select, padded stack", timed(gather, device, args.repeats)[1], 0.0)
    line("  product float64: bmm, then += into the total", timed(added, device, args.repeats)[1], flops)
    line("  product float64: baddbmm_ into the total",
         timed(lambda: total.baddbmm_(stack.transpose(1, 2), stack), device, args.repeats)[1], flops)
    line("  product float32: bmm", timed(lambda: torch.bmm(stack32.transpose(1, 2), stack32), device,
                                          args.repeats)[1], flops)
    if device.type == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            line("  product TF32 (float32 sums): bmm", timed(lambda: torch.bmm(stack32.transpose(1, 2), stack32),
                                                             device, args.repeats)[1], flops)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    for blocks in (2, 4):
        share = (blocks + 1) / (2 * blocks)
        line(f"  upper half float64, {blocks} column blocks, strided slices", upper(blocks, False), flops * share)
        line(f"  upper half float64, {blocks} column blocks, contiguous pieces", upper(blocks, True), flops * share)
    whole_s, product_s, rate = rows[0][1], rows[2][1], rows[2][2]
    print(f"expert_grams_s={whole_s:.4f} product_f64_s={product_s:.4f} dgemm_tflops={rate:.1f}")


if __name__ == "__main__":
    main()
