"""G2: Tucker across layer × expert × hidden compresses the experts. Weights only, no forward pass (probes.spectral).

Killed analytically when no rank tuple within the parameter budget can keep enough energy of every mode unfolding
(Eckart–Young per mode), else by the truncated HOSVD at the budget's ranks against random factors.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell

ladder = rung("g2")


@pytest.fixture(scope="module")
def weight_work():
    """What every claim bound to this module computes alike, kept while the module runs: the expert tensor of a weight
    type, its floor per budget fraction, the HOSVD and τ per rank tuple and seeds. Each is a function of the model
    and those keys alone, so g2_hosvd (g2's budget and seeds) reads g2's passes over the 4.3 GB tensor instead of
    making them again."""
    cache: dict = {}
    yield cache
    cache.clear()


@pytest.fixture
def g2(weight_work, ladder_weights, ladder_workspace, prereg, ladder_seeds, request):
    """The rung's tensors and fits per weight type, kept in weight_work (the float64 expert tensor of OLMoE-1B-7B is
    17 GB: its layers are views of the session model's weights where those are resident on the compute device, else
    read from the checkpoint and kept on the CPU as read; the float64 work runs in pieces that fit the GPU workspace;
    one weight type at a time, and nothing left once the module ends)."""
    from pytest_ladder.measure.tau import tau_floor
    from pytest_ladder.probes import spectral
    from pytest_ladder.prepare import prepared
    from pytest_ladder.rung_fixtures import resident_experts

    fraction, seeds = prereg.params["budget_fraction"], tuple(ladder_seeds)

    class G2:
        def tensor(self, projection):
            found = weight_work.setdefault("tensor", {})
            if projection not in found:
                found.clear()
                read = ladder_weights.on(ladder_workspace.home)
                resident = resident_experts(prepared(request.config).model, ladder_workspace.device,
                                            ladder_weights)
                layers = [resident(layer, projection) for layer in range(ladder_weights.n_layers)]
                found[projection] = spectral.expert_tensor(
                    [read.experts(layer, projection) if w is None else w for layer, w in enumerate(layers)],
                    projection, ladder_workspace)
                weight_work.setdefault("shape", {})[projection] = list(found[projection].shape)
            return found[projection]

        def shape(self, projection):
            """The tensor's shape, without reading the tensor again once it has been read."""
            return weight_work.get("shape", {}).get(projection) or list(self.tensor(projection).shape)

        def curves(self, projection):
            """The mode energy curves of the postmortem's plots, kept so a second claim need not read the tensor."""
            found = weight_work.setdefault("curves", {})
            if projection not in found:
                found[projection] = spectral.mode_energy_curves(self.tensor(projection))
            return found[projection]

        def floor(self, projection):
            found = weight_work.setdefault("floor", {})
            if (projection, fraction) not in found:
                t = self.tensor(projection)
                found[projection, fraction] = spectral.tucker_floor(t, int(fraction * t.numel()))
            return found[projection, fraction]

        def hosvd_and_tau(self, projection):
            found = weight_work.setdefault("hosvd", {})
            ranks = self.floor(projection).ranks
            if (projection, ranks, seeds) not in found:
                t = self.tensor(projection)
                # the HOSVD and every seed's random factors projected in one pass over the tensor
                hosvd, *baselines = spectral.projection_residuals(t, [spectral.hosvd_factors(t, ranks)] + [
                    spectral.random_factors(t.shape, ranks, seed, device=t.device) for seed in seeds])
                by_seed = dict(zip(seeds, baselines))
                found[projection, ranks, seeds] = (hosvd, tau_floor(lambda seed: seed, by_seed.__getitem__, seeds))
            return found[projection, ranks, seeds]

    return G2()


@pytest.fixture
def weight(cell, g2, request):
    """The cell's weight type; the tensor's shape, budget and ranks are recorded in the decision's context."""
    projection = cell.params["weight"]
    found = g2.floor(projection)
    record_cell(request.config, f"g2 {cell.id}", {
        "shape": g2.shape(projection), "budget_params": found.budget_params,
        "ranks": list(found.ranks), "mode_effective_ranks": list(found.mode_effective_ranks)})
    return projection


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, g2):
    from pytest_ladder.probes import spectral

    t = g2.tensor(prereg.hardest_cell.params["weight"])
    trap.check(spectral.projection_residual(t, spectral.identity_factors(t.shape, device=t.device)))


@ladder.prefilter("residual_at_budget")
def test_residual_at_budget(cell, gate, g2, weight):
    found = g2.floor(weight)
    gate.check(found.residual, ranks=list(found.ranks), params=found.params, budget_params=found.budget_params,
               mode_effective_ranks=list(found.mode_effective_ranks),
               series=g2.curves(weight))


@ladder.gate("tucker_residual")
def test_tucker_residual(cell, gate, g2, weight):
    residual, tau = g2.hosvd_and_tau(weight)
    gate.check(residual, tau=tau, ranks=list(g2.floor(weight).ranks))


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, g2):
    residual, tau = g2.hosvd_and_tau(prereg.hardest_cell.params["weight"])
    trap.check(tau.tau - residual, method=residual, best_random=tau.tau)
