"""G3's Gram paths (energy_q by block subspace iteration, r_eff from a symmetric eigensolver, the trivial pass) against
the full SVD of every token's effective weight, on the embedded model's held-out routes of every G3 cell layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ladder.measure.routing import effective_weight_spectra
from pytest_ladder.measure.spectra import effective_rank, energy_at_rank
from pytest_ladder.probes import routes
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size

PREREG = Path(__file__).resolve().parents[2] / "prereg" / "g3" / "tau.json"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def g3_cells():
    """{layer: (study, held-out capture)} of the G3 prereg's cells on the embedded model, at the prereg's N."""
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.loading import ModelSpec, load_model
    from pytest_ladder.prereg import load_prereg

    prereg = load_prereg(PREREG)
    study = routes.RoutingStudy(load_model(ModelSpec()), load_corpora(prereg.tasks), n_points=prereg.data_points)
    layers = {resolve_layer(c.params["layer"], study.n_layers): c.params["task"] for c in prereg.cells}
    return prereg, study, {layer: study.heldout(task, layer) for layer, task in layers.items()}


def test_gram_paths_match_the_svd_per_token_on_every_cell_layer(g3_cells):
    prereg, study, held = g3_cells
    worst_energy = worst_reff = 0.0
    for layer, capture in held.items():
        stacks = study.stacks(layer)
        for projection in prereg.params["projections"]:
            w = stacks[projection]
            q = resolve_size(prereg.params["q_fraction"], min(w.shape[-2:]))
            found = routes.route_energy(w, capture.topk_index, capture.topk_weight, q)
            spectra = effective_weight_spectra(w, capture.topk_index, capture.topk_weight)
            assert found.energy.shape == (capture.topk_index.shape[0],)
            assert found.effective_rank.shape == (routes.R_EFF_TOKENS,) and found.summary()["r_eff_tokens"] == 128
            worst_energy = max(worst_energy, float((found.energy - energy_at_rank(spectra, q)).abs().max()))
            sample = spectra[:routes.R_EFF_TOKENS]
            worst_reff = max(worst_reff, float((found.effective_rank - effective_rank(sample)).abs().max()))
    assert worst_energy <= 1e-6
    assert worst_reff <= 1e-6


def test_trivial_pass_is_exactly_zero_and_has_teeth(g3_cells, monkeypatch):
    prereg, study, held = g3_cells
    layer = resolve_layer(prereg.hardest_cell.params["layer"], study.n_layers)
    w, capture = study.stacks(layer)["up"], held[layer]
    off, deviation = routes.full_rank_residual(w, capture.topk_index, capture.topk_weight)
    assert off == 0.0
    assert deviation <= routes.FULL_RANK_ROUNDING
    # a pipeline whose ‖W_t‖² is off by one part in 10⁹ (a wrong expert inner product, say) fails on every token
    from pytest_ladder.measure import routing

    norms = routing.effective_weight_sq_norms
    monkeypatch.setattr(routing, "effective_weight_sq_norms", lambda *a, **k: norms(*a, **k) * (1 + 1e-9))
    assert routes.full_rank_residual(w, capture.topk_index, capture.topk_weight)[0] == 1.0


def test_energy_ignores_the_chunking(g3_cells):
    prereg, study, held = g3_cells
    layer = resolve_layer(prereg.hardest_cell.params["layer"], study.n_layers)
    w, capture = study.stacks(layer)["down"], held[layer]
    index, gates = capture.topk_index[:48], capture.topk_weight[:48]
    one = routes.route_energy(w, index, gates, 4, max_bytes=1)  # one token at a time
    all_at_once = routes.route_energy(w, index, gates, 4, max_bytes=1 << 40)
    assert float((one.energy - all_at_once.energy).abs().max()) <= 1e-12
