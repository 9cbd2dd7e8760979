"""G0: a free orthogonal regauge exposes compressible structure. Weights only, no forward pass (probes.spectral).

Killed analytically when, on some layer, even the layer's most compressible matrix leaves more than the locked
share of its energy outside the budget rank: singular values are invariant under orthogonal maps (Eckart–Young).
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size

ladder = rung("g0")


def read(weights, layer):
    return [weights.experts(layer, p) for p in ("gate", "up", "down")]


@pytest.fixture
def held(rung_cache, ladder_weights):
    """held.matrices(layer): one layer's float64 matrices at a time (OLMoE-1B-7B: ~6 GB; the previous layer's go
    before the next's load); held.spectra(layer): each layer's spectra, kept for the rung. Both go when it ends."""
    from pytest_ladder.probes import spectral


    class Held:
        def matrices(self, layer):
            found = rung_cache.setdefault("matrices", {})
            if layer not in found:
                found.clear()
                found[layer] = spectral.layer_matrices(*read(ladder_weights, layer))
            return found[layer]

        def spectra(self, layer):
            found = rung_cache.setdefault("spectra", {})
            if layer not in found:
                found[layer] = spectral.layer_spectra(*read(ladder_weights, layer))
            return found[layer]

    return Held()


@pytest.fixture
def layer(cell, prereg, ladder_weights, held, request):
    """The cell's layer on this model, with each matrix kind's budget rank (recorded in the decision's context)."""
    index = resolve_layer(cell.params["layer"], ladder_weights.n_layers)
    fraction = prereg.params["rank_fraction"]
    ranks = {k: resolve_size(fraction, s.shape[-1]) for k, s in held.spectra(index).items()}
    record_cell(request.config, f"g0 {cell.id}", {"layer": index, "ranks": ranks})
    return index, ranks


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights, held):
    from pytest_ladder.probes import spectral

    index = resolve_layer(prereg.hardest_cell.params["layer"], ladder_weights.n_layers)
    mats, svs = held.matrices(index), held.spectra(index)
    error = spectral.regauge_error(mats, {k: spectral.identity_regauge(w) for k, w in mats.items()}).value
    floor = spectral.regauge_floor(svs, {k: s.shape[-1] for k, s in svs.items()}).residual
    drift = max(spectral.singular_value_drift(w, spectral.identity_regauge(w)) for w in mats.values())
    trap.check(max(error, floor, drift), error=error, floor_residual=floor, sigma_drift=drift)


@ladder.prefilter("residual_at_budget")
def test_residual_at_budget(cell, gate, held, layer):
    from pytest_ladder.probes import spectral

    floor = spectral.regauge_floor(held.spectra(layer[0]), layer[1])
    series = {"layer_spectrum": [float(s) for s in held.spectra(layer[0])["layer"][0, :64]]}
    gate.check(floor.residual, at=floor.residual_at, per_kind=floor.per_kind, series=series)


@ladder.prefilter("effective_rank")
def test_effective_rank(cell, gate, held, layer):
    from pytest_ladder.probes import spectral

    floor = spectral.regauge_floor(held.spectra(layer[0]), layer[1])
    gate.check(floor.effective_rank_ratio, at=floor.effective_rank_at, per_kind=floor.per_kind)


@ladder.gate("regauge_error")
def test_regauge_error(cell, gate, held, ladder_seeds, layer):
    from pytest_ladder.measure.tau import tau_floor
    from pytest_ladder.probes import spectral

    mats, ranks = held.matrices(layer[0]), layer[1]
    best = spectral.regauge_error(mats, {k: spectral.best_regauge(w, ranks[k]) for k, w in mats.items()})
    tau = tau_floor(lambda seed: {k: spectral.random_regauge(w, ranks[k], seed) for k, w in mats.items()},
                    lambda regauges: spectral.regauge_error(mats, regauges).value, ladder_seeds)
    gate.check(best.value, tau=tau, at=best.at, per_kind=best.per_kind)


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_weights, ladder_seeds, held):
    from pytest_ladder.measure.orthogonal import random_orthogonal
    from pytest_ladder.probes import spectral

    mats = held.matrices(resolve_layer(prereg.hardest_cell.params["layer"], ladder_weights.n_layers))
    drift = max(spectral.singular_value_drift(w, random_orthogonal(min(w.shape[-2:]), ladder_seeds[0]))
                for w in mats.values())
    trap.check(drift)
