"""Where G10.5's and G10-scan's time goes on one layer, measured part by part (CUDA synchronised) in one run:

    python benchmarks/attention_parts.py --model /tmp/olmoe7b [--device cuda] [--layer 3] [--task text]
                                         [--workspace 4GiB] [--top-k 8] [--seeds 10]

The calibration sequences are the ones AttentionStudy uses (4 tokens per scan feature of the task's calibration
split, one document per forward). Prints, side by side: a plain (sdpa) forward per sequence up to the layer; the same
with eager attention; the eager forward with the capture hooks but no reduction; the capture with the sparse
reduction (top-k, offsets, one random-key set per seed); the same folded into the normal equations (G10.5's
calibration); the fits (fit_hybrid_layer on the held-out capture); and the capture without the sparse part (G10-scan's
calibration). Last line: `forward_share=<plain forward / G10.5 calibration>`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.measure.workspace import Workspace
from pytest_ladder.models.corpora import load_corpus, token_sequences
from pytest_ladder.models.loading import ModelSpec, load_model
from pytest_ladder.models.sequential import stopping_after
from pytest_ladder.options import size as parse_size
from pytest_ladder.probes.attention import Calibration, fit_hybrid_layer
from pytest_ladder.probes.attention_capture import SparseSpec, attention_capture, eager_attention

DECAYS = (0.5, 0.8, 0.95, 0.984)
RIDGES = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)


def measured(label: str, fn: Callable[[], Any], device: torch.device, results: dict) -> Any:
    """fn's result; its wall time (GPU synchronised, benchmarks/timing.py) and peak allocated memory printed."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    value, results[label] = timed(fn, device, 1)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(f"{label:<44} {results[label]:8.2f} s  peak {peak:6.2f} GiB", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--task", default="text")
    parser.add_argument("--workspace", default="4GiB")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--heldout-points", type=int, default=1000)
    args = parser.parse_args()
    limit = parse_size(args.workspace)
    loaded = load_model(ModelSpec(source=args.model, device=args.device, gpu_workspace=limit))
    model, adapter = loaded.model, loaded.adapter
    workspace = Workspace.on(args.device, limit)
    corpus = load_corpus(args.task)
    n_features = int(model.config.hidden_size) * (1 + len(DECAYS))
    sequences = token_sequences(corpus.split("calibration"), loaded.tokenizer, 4 * n_features, loaded.max_length,
                                loaded.prefix_token_id)
    heldout = token_sequences(corpus.split("heldout"), loaded.tokenizer, args.heldout_points, loaded.max_length,
                              loaded.prefix_token_id)
    lengths = sorted(len(s) for s in sequences)
    print(f"model {loaded.identity['name']} on {args.device}, layer {args.layer}, {len(sequences)} calibration "
          f"sequences ({sum(lengths)} tokens, lengths {lengths[0]}..{lengths[-1]}, "
          f"median {lengths[len(lengths) // 2]}), workspace {args.workspace}", flush=True)
    layer, device = args.layer, torch.device(args.device)
    sparse = SparseSpec(args.top_k, tuple(range(args.seeds)))
    results: dict[str, float] = {}

    def forwards(eager: bool) -> None:
        context = eager_attention(model) if eager else torch.no_grad()
        with torch.no_grad(), context, stopping_after(model, layer) as forward:
            for sequence in sequences:
                forward(input_ids=torch.as_tensor([sequence], device=device), use_cache=False)

    forwards(False)  # warm up
    measured("plain forward per sequence (sdpa)", lambda: forwards(False), device, results)
    measured("eager forward per sequence", lambda: forwards(True), device, results)
    measured("capture, no sparse part (G10-scan)", lambda: attention_capture(
        model, adapter, sequences, [layer], on_record=lambda k, r: None, workspace=workspace, progress=False),
        device, results)
    measured("capture + sparse part, not folded", lambda: attention_capture(
        model, adapter, sequences, [layer], sparse=sparse, on_record=lambda k, r: None, workspace=workspace,
        progress=False), device, results)
    scan = Calibration(DECAYS, workspace=workspace, share=0.25)
    measured("G10-scan calibration (capture + fold)", lambda: (attention_capture(
        model, adapter, sequences, [layer], on_record=lambda k, r: scan.add(r), workspace=workspace,
        progress=False), scan.flush()), device, results)
    calibration = Calibration(DECAYS, workspace=workspace, share=0.25)
    measured("G10.5 calibration (capture + sparse + fold)", lambda: (attention_capture(
        model, adapter, sequences, [layer], sparse=sparse, on_record=lambda k, r: calibration.add(r),
        workspace=workspace, progress=False), calibration.flush()), device, results)
    held = measured("G10.5 held-out capture", lambda: attention_capture(
        model, adapter, heldout, [layer], sparse=sparse, workspace=workspace, progress=False), device, results)
    measured("G10.5 fits (fit_hybrid_layer)", lambda: fit_hybrid_layer(calibration, held[layer], RIDGES), device,
             results)
    share = results["plain forward per sequence (sdpa)"] / results["G10.5 calibration (capture + sparse + fold)"]
    print(f"forward_share={share:.3f}")


if __name__ == "__main__":
    main()
