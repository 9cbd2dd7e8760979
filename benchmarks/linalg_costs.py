"""What the ladder's dense linear algebra costs on a device, one operation at a time, at OLMoE-1B-7B's sizes.

The rungs' slowest steps are float64 factorisations: σ of every expert matrix (G0's drift traps: SVD, or eigh of the
smaller Gram), G1.0′'s gauge projection after every Adam step (SVD, or eigh of MᵀM), the per-token
effective-weight Grams of G3 (a 1024 × 1024 symmetric eigensolver per token, or the
72 × 72 Ritz problems of the subspace iteration) and G10.5's scan fit (one 10240 × 10240 normal-equation matrix:
eigh, or a Cholesky factor per ridge). Each line times one operation (after a warm-up, synchronised) and prints
seconds per call and per matrix, so the choices in measure.spectra / probes.scan rest on measured numbers.

    python benchmarks/linalg_costs.py --device cuda            # OLMoE-1B-7B sizes (about a minute on one H200)
    python benchmarks/linalg_costs.py --device cpu --small     # the same operations at a tenth of the size
"""

from __future__ import annotations

import argparse
import time

import torch

F64 = torch.float64


def timed(fn, device: torch.device, repeat: int = 1) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="sizes divided by about ten (a quick CPU check)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    s = 8 if args.small else 1
    inter, hidden, batch, tokens, d, heads_out = 1024 // s, 2048 // s, 64 // s, 1000 // s, 10240 // s, 2048 // s

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    experts = rand(batch, inter, hidden)
    grams = experts @ experts.mT
    ritz = rand(tokens, 72, 72)
    ritz = ritz @ ritz.mT
    phi = rand(4 * d, d) if args.small else None
    ftf = (phi.mT @ phi) if phi is not None else None
    if ftf is None:
        x = rand(d + 512, d)
        ftf = x.mT @ x
        del x
    rhs = rand(d, heads_out)
    rows = []

    def line(name, seconds, per):
        rows.append((name, seconds, seconds / per))
        print(f"{name:<58} {seconds:9.3f} s   {seconds / per * 1e3:10.2f} ms each", flush=True)

    line(f"svdvals ({batch},{inter},{hidden}) f64, default driver", timed(lambda: torch.linalg.svdvals(experts), device),
         batch)
    if device.type == "cuda":
        for driver in ("gesvd", "gesvdj"):
            line(f"svdvals ({batch},{inter},{hidden}) f64, {driver}",
                 timed(lambda: torch.linalg.svdvals(experts, driver=driver), device), batch)
    line(f"gram + eigvalsh ({batch},{inter},{inter}) f64",
         timed(lambda: torch.linalg.eigvalsh(experts @ experts.mT), device), batch)
    line(f"eigvalsh ({batch},{inter},{inter}) f32", timed(lambda: torch.linalg.eigvalsh(grams.float()), device), batch)
    line(f"eigvalsh ({tokens},72,72) f64", timed(lambda: torch.linalg.eigvalsh(ritz), device), tokens)
    line(f"cholesky_ex ({tokens},72,72) f64", timed(lambda: torch.linalg.cholesky_ex(ritz), device), tokens)
    line(f"eigh ({d},{d}) f64", timed(lambda: torch.linalg.eigh(ftf), device), 1)
    line(f"eigvalsh ({d},{d}) f64", timed(lambda: torch.linalg.eigvalsh(ftf), device), 1)
    line(f"cholesky ({d},{d}) f64 + solve ({d},{heads_out})",
         timed(lambda: torch.cholesky_solve(rhs, torch.linalg.cholesky(ftf)), device), 1)
    line(f"matmul ({d},{d}) @ ({d},{heads_out}) f64", timed(lambda: ftf @ rhs, device, repeat=5), 1)
    from pytest_ladder.measure.gauge import bound_condition

    # G1.0′'s M (inter, inter) float32 as each Adam step leaves it: last step's projection (cond ≤ κ = 4) moved a
    # little. A raw random slice has cond(M) > 1e3, where the Gram path falls back to the SVD after its eigh.
    start = (experts[0, :, :inter] / experts[0, :, :inter].norm()).float()
    step = torch.randn(start.shape, generator=torch.Generator().manual_seed(7)).to(device) * 1e-4
    gauge = bound_condition(start, 4.0, method="svd") + step
    for method in ("svd", "gram"):
        line(f"gauge projection ({inter},{inter}) f32, cond ~4, {method}",
             timed(lambda: bound_condition(gauge, 4.0, method=method), device, repeat=5), 1)
    if device.type == "cuda":
        cpu = grams[:8].cpu()
        line(f"CPU eigvalsh (8,{inter},{inter}) f64 ({torch.get_num_threads()} threads)",
             timed(lambda: torch.linalg.eigvalsh(cpu), torch.device("cpu")), 8)
        cpu_ritz = ritz.cpu()
        line(f"CPU eigvalsh ({tokens},72,72) f64", timed(lambda: torch.linalg.eigvalsh(cpu_ritz), torch.device("cpu")),
             tokens)
    each: dict[str, float] = {}
    for name, _, per in rows:
        each.setdefault(name.split(" (")[0], per)
    gauge_svd, gauge_gram = (per for name, _, per in rows if name.startswith("gauge projection"))
    print(f"device={device} sigma_svd_over_gram_eigh={each['svdvals'] / each['gram + eigvalsh']:.1f}x "
          f"scan_eigh_over_cholesky_solve={each['eigh'] / each['cholesky']:.1f}x "
          f"gauge_svd_over_gram={gauge_svd / gauge_gram:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
