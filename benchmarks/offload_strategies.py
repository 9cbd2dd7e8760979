"""Offload strategies side by side on one GPU: what many batches through an offloaded model cost.

    python benchmarks/offload_strategies.py --model /tmp/olmoe7b [--max-memory cuda:0=8GiB,cpu=100GiB]
                                            [--batches 8] [--batch 4] [--tokens 2048] [--device cuda]

The ladder passes many batches through the model (captures, deploy NLL, τ baselines). Each strategy runs the same
`--batches` batches of random token ids with logits, after one warm-up batch, and reports wall time, GPU peaks
(`torch.cuda.max_memory_allocated` / `max_memory_reserved`) and the largest |Δ| of the last 16 positions' logits
against the model in GPU memory:

- in memory: the whole model on the GPU (the reference);
- accelerate's hooks: pytest-ladder's loader with `--max-memory` (accelerate's `device_map`: layers past the cap on
  the CPU, moved to the GPU by their hooks for every batch), plain forwards;
- layer by layer: the same loaded model through `models.sequential.forward_batches(sequential=True)` (every batch
  through layer l before layer l+1, each offloaded layer moved once), what the ladder runs offloaded; on a GPU first
  from pageable copies of the offloaded values (as accelerate leaves them), then page-locked again as the loader
  keeps them (`models.weights.pin_offloaded`, its time printed);
- diffusers' group offloading: the model loaded on the CPU, `apply_group_offloading(model.model, onload_device=cuda,
  offload_type="block_level", num_blocks_per_group=1, use_stream=True)` (each decoder layer prefetched on a side
  stream from pinned memory while the previous one computes), the LM head on the GPU; plain forwards. Skipped with
  a line saying so when diffusers is not importable.

Prints a table and last `hooks_ratio=<x> sequential_ratio=<y> pageable_sequential_ratio=<p>
group_offload_ratio=<z>` (each strategy's wall / in memory; nan where a strategy did not run). `--device cpu` (no
GPU: peaks read 0, the cap offloads to disk, default `cpu=10MiB`) checks the script end to end, e.g. `--model
embedded --tokens 64 --batches 2`.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import torch
from timing import sync  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.models.loading import ModelSpec, load_model, parse_max_memory
from pytest_ladder.models.sequential import forward_batches
from pytest_ladder.models.weights import offload_maps, pin_offloaded


def run_plain(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    tails = []
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            tails.append(logits[:, -16:].float().cpu())
    return tails


def run_sequential(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    tails = []
    with torch.no_grad():
        for _, logits in forward_batches(model, batches, logits=True, sequential=True, progress=False):
            tails.append(logits[:, -16:].float().cpu())
    return tails


def measure(name: str, run, model: torch.nn.Module, batches: list, reference: list | None,
            device: torch.device) -> dict:
    gpu = device.type == "cuda"
    run(model, batches[:1])  # warm-up: kernels, cuBLAS handles, first moves
    sync(device)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    tails = run(model, batches)
    sync(device)
    wall = time.perf_counter() - start
    delta = (max(float((a - b).abs().max()) for a, b in zip(tails, reference)) if reference is not None else 0.0)
    row = {"strategy": name, "wall_s": wall, "max_abs_delta": delta, "tails": tails,
           "allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0,
           "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if gpu else 0.0}
    print(f"{name}: {wall:.2f} s, peak {row['allocated_gib']:.2f} / {row['reserved_gib']:.2f} GiB, "
          f"max |Δ logits| {delta:.3g}", flush=True)
    return row


def pageable(model: torch.nn.Module) -> int:
    """Replace the page-locked CPU values behind the model's offloading hooks (what the loader pins) by pageable
    copies, as accelerate leaves them; returns their bytes."""
    total = 0
    for overrides in offload_maps(model):
        for key, value in list(overrides.items()):
            if value.is_pinned():
                overrides[key] = torch.empty_like(value, pin_memory=False).copy_(value)
                total += value.numel() * value.element_size()
    return total


def free_gpu() -> None:
    """Give the GPU back what the dropped model held (call after dropping every reference to it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-memory", default=None, help="default cuda:0=8GiB,cpu=100GiB (cpu=10MiB on the CPU)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--offload-dir", default=None, help="where the cap's disk offload goes (default: a temp dir)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.max_memory is None:
        args.max_memory = "cuda:0=8GiB,cpu=100GiB" if device.type == "cuda" else "cpu=10MiB"
    offload_dir = args.offload_dir or tempfile.mkdtemp(prefix="offload-strategies-")
    rows = []

    start = time.perf_counter()
    loaded = load_model(ModelSpec(source=args.model, device=args.device))
    print(f"loaded in GPU memory in {time.perf_counter() - start:.1f} s", flush=True)
    vocab = min(loaded.model.config.vocab_size, len(loaded.tokenizer))
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(2, vocab, (args.batch, args.tokens), generator=generator)
        ids[:, 0] = loaded.prefix_token_id
        batches.append((ids.to(device), torch.ones_like(ids).to(device)))
    rows.append(measure("in memory", run_plain, loaded.model, batches, None, device))
    reference = rows[0]["tails"]
    loaded = None
    free_gpu()

    start = time.perf_counter()
    capped = load_model(ModelSpec(source=args.model, device=args.device, max_memory=parse_max_memory(args.max_memory),
                                  offload_dir=offload_dir))
    print(f"loaded with --max-memory {args.max_memory} in {time.perf_counter() - start:.1f} s", flush=True)
    rows.append(measure("accelerate hooks", run_plain, capped.model, batches, reference, device))
    if device.type == "cuda":  # the same passes from pageable copies of the offloaded values, then pinned again
        pinned = pageable(capped.model)
        rows.append(measure("layer by layer, pageable", run_sequential, capped.model, batches, reference, device))
        start = time.perf_counter()
        pin_offloaded(capped.model)
        print(f"page-locked {pinned / 1024**3:.2f} GiB of offloaded values in {time.perf_counter() - start:.1f} s",
              flush=True)
    rows.append(measure("layer by layer", run_sequential, capped.model, batches, reference, device))
    capped = None
    free_gpu()

    try:
        from diffusers.hooks import apply_group_offloading
    except ImportError as error:
        print(f"diffusers group offloading: skipped (diffusers not importable: {error})")
    else:
        start = time.perf_counter()
        on_cpu = load_model(ModelSpec(source=args.model, device="cpu")).model
        apply_group_offloading(on_cpu.model, onload_device=device, offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1, use_stream=device.type == "cuda")
        on_cpu.lm_head.to(device)
        print(f"loaded on the CPU and grouped for offloading in {time.perf_counter() - start:.1f} s", flush=True)
        rows.append(measure("diffusers group offloading", run_plain, on_cpu, batches, reference, device))
        on_cpu = None
        free_gpu()

    base = rows[0]["wall_s"]
    print(f"\n{args.batches} batches of {args.batch}x{args.tokens} tokens, logits; offload cap {args.max_memory}")
    print(f"{'strategy':<28}{'wall s':>8}{'x in memory':>13}{'alloc GiB':>11}{'reserved GiB':>14}{'max |Δ|':>10}")
    for row in rows:
        print(f"{row['strategy']:<28}{row['wall_s']:>8.2f}{row['wall_s'] / base:>13.2f}{row['allocated_gib']:>11.2f}"
              f"{row['reserved_gib']:>14.2f}{row['max_abs_delta']:>10.3g}")
    ratio = {row["strategy"]: row["wall_s"] / base for row in rows}
    print(f"hooks_ratio={ratio['accelerate hooks']:.2f} sequential_ratio={ratio['layer by layer']:.2f} "
          f"pageable_sequential_ratio={ratio.get('layer by layer, pageable', float('nan')):.2f} "
          f"group_offload_ratio={ratio.get('diffusers group offloading', float('nan')):.2f}")


if __name__ == "__main__":
    main()
