"""Spectrum of every expert of an OLMoE-shaped stack: batched SVD vs float64 Gram eigendecomposition, side by side.

Both paths are `pytest_ladder.measure.spectra.singular_values` (method "svd" and "gram"), run on the same random
expert weights (bf16, std 0.02 like a fresh OLMoE init), layer by layer in chunks of experts. Prints both times, their
ratio, the largest relative difference of the singular values (elementwise and relative to σ_max), and the effective
ranks both spectra give.

    python benchmarks/spectrum_svd_vs_eigh.py                 # reduced stack: 2 layers x 8 experts of (256, 512)
    python benchmarks/spectrum_svd_vs_eigh.py --full          # OLMoE-1B-7B: 16 layers x 64 experts of (1024, 2048)
    python benchmarks/spectrum_svd_vs_eigh.py --full --device cuda
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)
from tqdm.auto import tqdm

from pytest_ladder.measure.spectra import effective_rank, singular_values

FULL = {"layers": 16, "experts": 64, "out": 1024, "inp": 2048}
REDUCED = {"layers": 2, "experts": 8, "out": 256, "inp": 512}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="OLMoE-1B-7B size: 16 x 64 experts of (1024, 2048)")
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--experts", type=int, help="override the number of experts per layer")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("OUT", "IN"), help="override the expert weight shape")
    parser.add_argument("--chunk", type=int, default=8, help="experts per batched call (memory bound), default 8")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--repeat", type=int, default=3, help="time each call this often, keep the fastest (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    size = dict(FULL if args.full else REDUCED)
    if args.layers:
        size["layers"] = args.layers
    if args.experts:
        size["experts"] = args.experts
    if args.shape:
        size["out"], size["inp"] = args.shape
    device = torch.device(args.device)
    layers, experts, out_features, in_features = size["layers"], size["experts"], size["out"], size["inp"]
    print(
        f"stack: {layers} layers x {experts} experts of ({out_features}, {in_features}) bf16, device {device}, "
        f"chunk {args.chunk}, fastest of {args.repeat}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    warm = torch.randn(2, out_features, in_features, device=device)
    singular_values(warm), singular_values(warm, method="gram")  # first-call overheads out of the timings

    generator = torch.Generator().manual_seed(args.seed)
    t_svd = t_gram = 0.0
    worst_elementwise = worst_vs_max = 0.0
    reff_svd, reff_gram = [], []
    batches = [(layer, start) for layer in range(layers) for start in range(0, experts, args.chunk)]
    for layer, start in tqdm(batches, desc="expert chunks"):
        count = min(args.chunk, experts - start)
        weights = (0.02 * torch.randn(count, out_features, in_features, generator=generator)).to(torch.bfloat16)
        weights = weights.to(device)
        by_svd, seconds = timed(partial(singular_values, weights, method="svd"), device, args.repeat)
        t_svd += seconds
        by_gram, seconds = timed(partial(singular_values, weights, method="gram"), device, args.repeat)
        t_gram += seconds
        difference = (by_svd - by_gram).abs()
        worst_elementwise = max(worst_elementwise, float((difference / by_svd.clamp_min(1e-300)).max()))
        worst_vs_max = max(worst_vs_max, float((difference / by_svd[..., :1]).max()))
        reff_svd.append(effective_rank(by_svd).cpu())
        reff_gram.append(effective_rank(by_gram).cpu())

    reff_svd_all, reff_gram_all = torch.cat(reff_svd), torch.cat(reff_gram)
    n = layers * experts
    print(f"{'method':<22}{'total s':>10}{'ms/expert':>12}{'r_eff min':>12}{'r_eff mean':>12}")
    print(f"{'batched SVD (fp64)':<22}{t_svd:>10.3f}{1e3 * t_svd / n:>12.2f}"
          f"{float(reff_svd_all.min()):>12.2f}{float(reff_svd_all.mean()):>12.2f}")
    print(f"{'Gram eigh (fp64)':<22}{t_gram:>10.3f}{1e3 * t_gram / n:>12.2f}"
          f"{float(reff_gram_all.min()):>12.2f}{float(reff_gram_all.mean()):>12.2f}")
    print(f"ratio svd/eigh = {t_svd / t_gram:.2f}x")
    print(f"max relative difference of singular values: elementwise {worst_elementwise:.3e}, "
          f"vs sigma_max {worst_vs_max:.3e}; max |r_eff difference| "
          f"{float((reff_svd_all - reff_gram_all).abs().max()):.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
