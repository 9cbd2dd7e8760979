"""G3 — per-route aggregation: the effective weight a token sees, Σ_k g_k W_{e_k}, is low-rank.

Per layer, on held-out text: the energy every token's effective weight keeps at rank q (Eckart–Young), averaged over
tokens, for gate, up and down; the layer's value is its worst projection. Heavy lifting: pytest_ladder.probes.routes.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell, run_context
from pytest_ladder.rung_fixtures import resolve_layer, resolve_size

ladder = rung("g3")


@pytest.fixture
def energy(rung_cache, ladder_routing, ladder_layers, prereg, request):
    """energy(cell) -> {projection: RouteEnergy (its weights, routes, gates, rank q and per-token energy)} of the
    cell's layer, once."""
    from pytest_ladder.probes import routes

    def compute(cell):
        if cell.id not in rung_cache:
            layer = resolve_layer(cell.params["layer"], ladder_layers)
            held, stacks = ladder_routing.heldout(cell.params["task"], layer), ladder_routing.stacks(layer)
            index, gates = held.topk_index.to(ladder_routing.device), held.topk_weight.to(ladder_routing.device)
            found = {}
            for p in prereg.params["projections"]:
                q = resolve_size(prereg.params["q_fraction"], min(stacks[p].shape[-2:]))
                found[p] = routes.route_energy(stacks[p], index, gates, q, max_bytes=workspace(ladder_routing))
            rung_cache[cell.id] = found
            g3 = run_context(request.config).get("cells", {}).get("g3", {})
            q = {p: v.rank for p, v in found.items()}
            record_cell(request.config, "g3", {**g3, cell.id: {"layer": layer, "q": q}})
        return rung_cache[cell.id]

    return compute


def workspace(study):
    """The run's GPU working-set budget beyond the weights (ModelSpec.gpu_workspace; None: the library default)."""
    return getattr(study.loaded.spec, "gpu_workspace", None)


def worst(found):
    return min(found, key=lambda p: float(found[p].energy.mean()))


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, energy, prereg, ladder_routing):
    from pytest_ladder.measure.errors import frobenius_relative_error
    from pytest_ladder.measure.routing import effective_weights
    from pytest_ladder.probes.routes import full_rank_residual

    found = energy(prereg.hardest_cell)
    hardest = found[worst(found)]
    w, index, gates = hardest.weights, hardest.index, hardest.gates
    off, deviation = full_rank_residual(w, index, gates, max_bytes=workspace(ladder_routing))
    head = slice(0, 64)  # W' = W rebuilt through the same effective-weight code, on the first 64 tokens, where the
    w = w.to(ladder_routing.workspace.home)  # workspace keeps results: 2 × 64 formed weights are 2 GiB on OLMoE-1B-7B
    rebuilt = float(frobenius_relative_error(effective_weights(w, index[head], gates[head]),
                                             effective_weights(w.clone(), index[head], gates[head])).max())
    trap.check(max(off, rebuilt), full_rank_residual=off, full_rank_deviation=deviation, rebuilt_error=rebuilt)


@ladder.gate("energy_at_q")
def test_energy_at_q(cell, gate, energy):
    found = energy(cell)
    p = worst(found)
    gate.check(float(found[p].energy.mean()), projection=p, q=found[p].rank,
               per_projection={k: v.summary() for k, v in found.items()},
               series={f"energy_{k}": sorted(v.energy.tolist())[::max(1, v.energy.numel() // 64)]
                       for k, v in found.items()})


@ladder.trap("random_basis")
def test_random_basis(trap, energy, prereg, ladder_seeds):
    from pytest_ladder.probes.routes import random_subspace_energy

    found = energy(prereg.hardest_cell)
    method = found[worst(found)]
    best = max(float(random_subspace_energy(method.weights, method.index, method.gates, method.rank, seed).mean())
               for seed in ladder_seeds)
    trap.check(best, method=float(method.energy.mean()))
