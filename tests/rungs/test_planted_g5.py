"""G5 at the probe level (probes.deflation with the sealed prereg's deflation count and energy share, for a 128-wide
residual stream), judged by the sealed directions_fraction gate, on Grams with known eigenvalues:

- PASS: after deflating the top direction, 3 directions carry 90% of what is left (eigenvalues 100; 4, 3, 2; then
  0.001 × 124): d / H = 3 / 128.
- KILL: a flat spectrum after deflation (eigenvalues 100; 1 × 127): 90% of the rest needs ceil(0.9 · 127) = 115
  directions, d / H = 115 / 128 > 0.25.
"""

from __future__ import annotations

import json

import torch

from planted import ROOT, gate_spec
from pytest_ladder.probes import deflation
from pytest_ladder.rung_fixtures import resolve_size

H = 128
PARAMS = json.loads((ROOT / "prereg" / "g5" / "tau.json").read_text())["params"]


def gram_with(eigenvalues: list[float]) -> torch.Tensor:
    basis = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    return basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.mT


def directions(eigenvalues: list[float]):
    deflate = resolve_size(PARAMS["deflate_fraction"], H)
    assert deflate == 1
    return deflation.deflated_directions(gram_with(eigenvalues), deflate, PARAMS["energy_fraction"])


def test_few_directions_after_deflation_pass():
    found = directions([100.0, 4.0, 3.0, 2.0] + [0.001] * (H - 4))
    assert (found.directions, found.width_fraction) == (3, 3 / H)
    assert gate_spec("g5", "directions_fraction").passes(found.width_fraction)


def test_a_flat_spectrum_after_deflation_is_killed_at_directions_fraction():
    found = directions([100.0] + [1.0] * (H - 1))
    assert (found.directions, found.width_fraction) == (115, 115 / H)
    assert not gate_spec("g5", "directions_fraction").passes(found.width_fraction)
