"""G3's per-token effective-weight statistics: the full-SVD path against the Gram paths, side by side.

A random OLMoE-shaped layer stack (per layer gate, up (E, I, H) and down (E, H, I), bf16, std 0.02 with input
columns scaled by (1 + j)^(−decay) so the spectra decay like trained weights' do: the default 0.5 gives energy_q
about 0.5 at q = 1/32 of min(out, in), near the seeds' 58–80%; decay 0 is a flat Gaussian spectrum, the slowest case
for the subspace iteration) and random top-k routes with softmax weights. Per projection:

- old: `effective_weight_spectra` (a float64 SVD of every W_t), then energy_q and r_eff read off the spectra;
- new: `effective_weight_energy` (block subspace iteration on the Gram, ‖W_t‖² from expert inner products) and
  `effective_weight_effective_ranks` (the Gram's eigenvalues), timed apart, since only energy_q decides G3.

Prints both times per token and the largest |Δ| of energy_q and r_eff; the last line is
`speedup=<old s/token ÷ new s/token> max_abs_diff=<largest |Δ| of either>`.

    python benchmarks/g3_spectra.py --small                 # CPU, about a minute: 16 experts of (256, 512)
    python benchmarks/g3_spectra.py --device cuda           # OLMoE-1B-7B: 64 experts of (1024, 2048), top-8
    python benchmarks/g3_spectra.py --device cuda --reference-tokens 100   # time the SVD on the first 100 only
"""

from __future__ import annotations

import argparse
import math

import torch
from timing import timed  # benchmarks/timing.py (scripts run from benchmarks/ on sys.path)

from pytest_ladder.measure.routing import (
    effective_weight_effective_ranks,
    effective_weight_energy,
    effective_weight_spectra,
)
from pytest_ladder.measure.spectra import effective_rank, energy_at_rank

OLMOE = {"experts": 64, "intermediate": 1024, "hidden": 2048, "top_k": 8, "tokens": 1000}
SMALL = {"experts": 16, "intermediate": 256, "hidden": 512, "top_k": 4, "tokens": 200}


def random_layer(experts: int, intermediate: int, hidden: int, decay: float, generator: torch.Generator,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """gate, up (E, I, H) and down (E, H, I) in bf16, input columns scaled by (1 + j)^(−decay)."""
    def stack(out_features: int, in_features: int) -> torch.Tensor:
        scale = torch.arange(1, in_features + 1, dtype=torch.float32) ** -decay
        scale = scale / scale.square().mean().sqrt()
        w = torch.randn(experts, out_features, in_features, generator=generator) * 0.02 * scale
        return w.to(device=device, dtype=torch.bfloat16)

    return {"gate": stack(intermediate, hidden), "up": stack(intermediate, hidden), "down": stack(hidden, intermediate)}


def random_routes(tokens: int, experts: int, top_k: int, generator: torch.Generator, device: torch.device):
    """Top-k indices (T, k) and their softmax weights renormalised over the k (OLMoE's rule)."""
    logits = torch.randn(tokens, experts, generator=generator) * 2
    weights, index = logits.softmax(-1).topk(top_k, dim=-1)
    return index.to(device), (weights / weights.sum(-1, keepdim=True)).to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="16 experts of (256, 512), top-4, 200 tokens (CPU)")
    parser.add_argument("--layers", type=int, default=1, help="layers in the stack (default 1)")
    parser.add_argument("--experts", type=int)
    parser.add_argument("--shape", type=int, nargs=2, metavar=("INTERMEDIATE", "HIDDEN"))
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--tokens", type=int, help="held-out tokens T")
    parser.add_argument("--q-fraction", type=float, default=1 / 32, help="q as a share of min(out, in) (G3: 1/32)")
    parser.add_argument("--decay", type=float, default=0.5,
                        help="column-scale exponent of the random experts (default 0.5: energy_q near G3's seeds)")
    parser.add_argument("--reference-tokens", type=int, help="run the SVD path on the first N tokens only")
    parser.add_argument("--max-bytes", type=int, help="working set of the Gram paths (default: the library's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--repeat", type=int, default=1, help="time each call this often, keep the fastest")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    size = dict(SMALL if args.small else OLMOE)
    for key, value in (("experts", args.experts), ("top_k", args.top_k), ("tokens", args.tokens)):
        if value:
            size[key] = value
    if args.shape:
        size["intermediate"], size["hidden"] = args.shape
    device = torch.device(args.device)
    reference = min(args.reference_tokens or size["tokens"], size["tokens"])
    print(f"stack: {args.layers} layer(s) x {size['experts']} experts of ({size['intermediate']}, {size['hidden']}) "
          f"bf16, top-{size['top_k']}, T={size['tokens']} (SVD on {reference}), decay {args.decay}, device {device}, "
          f"fastest of {args.repeat}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    generator = torch.Generator().manual_seed(args.seed)
    warm = random_layer(2, 8, 16, args.decay, generator, device)["up"]
    warm_index, warm_gates = random_routes(4, 2, 1, generator, device)
    effective_weight_spectra(warm, warm_index, warm_gates)
    effective_weight_energy(warm, warm_index, warm_gates, 1)
    effective_weight_effective_ranks(warm, warm_index, warm_gates)  # first-call overheads out of the timings

    old_s = new_energy_s = new_reff_s = 0.0
    old_tokens = new_tokens = 0
    worst_energy = worst_reff = 0.0
    print(f"{'layer':>5} {'proj':>5} {'q':>4} {'old s/tok':>10} {'energy s/tok':>12} {'r_eff s/tok':>11} "
          f"{'|Δ energy|':>10} {'|Δ r_eff|':>10} {'energy':>8} {'r_eff':>7}")
    for layer in range(args.layers):
        stacks = random_layer(size["experts"], size["intermediate"], size["hidden"], args.decay, generator, device)
        index, gates = random_routes(size["tokens"], size["experts"], size["top_k"], generator, device)
        for projection, w in stacks.items():
            q = max(1, math.ceil(args.q_fraction * min(w.shape[-2:]) - 1e-9))  # as the rung resolves q
            budget = args.max_bytes
            spectra, t_old = timed(lambda: effective_weight_spectra(w, index[:reference], gates[:reference]),
                                    device, args.repeat)
            energy, t_energy = timed(lambda: effective_weight_energy(w, index, gates, q, max_bytes=budget),
                                      device, args.repeat)
            reff, t_reff = timed(lambda: effective_weight_effective_ranks(w, index, gates, max_bytes=budget),
                                  device, args.repeat)
            d_energy = float((energy[:reference] - energy_at_rank(spectra, q)).abs().max())
            d_reff = float((reff[:reference] - effective_rank(spectra)).abs().max())
            worst_energy, worst_reff = max(worst_energy, d_energy), max(worst_reff, d_reff)
            old_s, new_energy_s, new_reff_s = old_s + t_old, new_energy_s + t_energy, new_reff_s + t_reff
            old_tokens, new_tokens = old_tokens + reference, new_tokens + size["tokens"]
            print(f"{layer:>5} {projection:>5} {q:>4} {t_old / reference:>10.2e} {t_energy / size['tokens']:>12.2e} "
                  f"{t_reff / size['tokens']:>11.2e} {d_energy:>10.1e} {d_reff:>10.1e} "
                  f"{float(energy.mean()):>8.4f} {float(reff.mean()):>7.2f}")

    old_per = old_s / old_tokens
    energy_per, reff_per = new_energy_s / new_tokens, new_reff_s / new_tokens
    print(f"old (SVD): {old_per:.3e} s/token; new: energy_q {energy_per:.3e} s/token "
          f"({old_per / energy_per:.1f}x), r_eff {reff_per:.3e} s/token ({old_per / reff_per:.1f}x)")
    print(f"speedup={old_per / (energy_per + reff_per):.2f} max_abs_diff={max(worst_energy, worst_reff):.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
