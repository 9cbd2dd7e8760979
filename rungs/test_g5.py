"""G5 — linear-representation-implied compression, at its proxy: after deflating the top principal directions of a
layer's residual stream, how many directions carry 90% of what is left (as a share of the width)?

Per layer × task on held-out tokens (the residual stream entering the layer). Heavy lifting:
pytest_ladder.probes.deflation.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers, resolve_size

ladder = rung("g5")


@pytest.fixture
def residual(rung_cache, ladder_model, ladder_routing, ladder_layers, prereg, request):
    """residual(cell) -> (the residual stream's held-out Gram at the cell's layer, directions to deflate)."""
    from pytest_ladder.probes import deflation

    if "layers" not in rung_cache:
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        rung_cache["deflate"] = resolve_size(prereg.params["deflate_fraction"], ladder_model.adapter.hidden_size)
        record_cell(request.config, "g5", {k: rung_cache[k] for k in ("deflate", "layers")})

    def grams(cell):
        task = cell.params["task"]
        if task not in rung_cache:
            sequences = ladder_routing.sequences(task, "heldout", prereg.data_points)
            layers = sorted(set(rung_cache["layers"].values()))
            rung_cache[task] = deflation.residual_grams(ladder_model, sequences, layers)
        return rung_cache[task][rung_cache["layers"][cell.id]], rung_cache["deflate"]

    return grams


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, residual, prereg):
    from pytest_ladder.probes.deflation import full_width_residual

    trap.check(full_width_residual(*residual(prereg.hardest_cell)))


@ladder.gate("directions_fraction")
def test_directions_fraction(cell, gate, residual, prereg):
    from pytest_ladder.probes.deflation import deflated_directions

    gram, deflate = residual(cell)
    found = deflated_directions(gram, deflate, prereg.params["energy_fraction"])
    gate.check(found.width_fraction, directions=found.directions, width=found.width, deflated=deflate,
               kept_energy=found.kept_energy, effective_rank_after=found.effective_rank_after,
               series={"spectrum": found.spectrum.tolist()})


@ladder.trap("random_basis")
def test_random_basis(trap, residual, prereg, ladder_seeds):
    from pytest_ladder.probes.deflation import deflated_directions, random_directions_energy

    gram, deflate = residual(prereg.hardest_cell)
    found = deflated_directions(gram, deflate, prereg.params["energy_fraction"])
    best = max(random_directions_energy(gram, deflate, found.directions, seed) for seed in ladder_seeds)
    trap.check(best, method=found.kept_energy)
