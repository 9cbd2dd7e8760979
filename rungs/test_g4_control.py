"""G4 with pipeline controls — task-conditional rank reduction: a static rank-r basis on each MoE layer's expert inputs,
shared by its experts. g4's claim and gates; traps that test the pipeline, never the claim.

Universal bases (every task's calibration tokens) face gates 1-3 and 5 and τ (Haar-random bases of the same rank);
task-conditional bases face gate 4; the deploy patches every MoE layer. The traps are judged on the fit's own
calibration objective, where their outcome holds for a working pipeline whatever the basis is worth: the
off-projection carries exactly the energy the basis drops (kept + off = 1), and no random or swapped rank-r basis
goes below the fitted one (Eckart–Young in the whitened coordinates). Heavy lifting: pytest_ladder.probes.lowrank.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers, resolve_size

ladder = rung("g4_control")


@pytest.fixture
def study(rung_cache, ladder_routing, ladder_layers, prereg, request):
    from pytest_ladder.probes import lowrank

    if "study" not in rung_cache:
        rank = resolve_size(prereg.params["rank_fraction"], ladder_routing.adapter.hidden_size)
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        rung_cache["study"] = lowrank.LowRankStudy(ladder_routing, rank, prereg.tasks,
                                                   calibration_points=prereg.params["calibration_points"])
        record_cell(request.config, "g4_control", {"rank": rank, "layers": rung_cache["layers"]})
    return rung_cache["study"]


def hardest(rung_cache, prereg):
    return rung_cache["layers"][prereg.hardest_cell.id], prereg.hardest_cell.params["task"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg, ladder_weights):
    from pytest_ladder.probes.lowrank import input_stacks

    outcome = study.trivial_pass(*hardest(rung_cache, prereg), input_stacks(ladder_weights.dtype_bytes()))
    trap.check(outcome.observed, **outcome.refs)


@ladder.prefilter("bytes")
def test_bytes(gate, prereg, ladder_weights):
    from pytest_ladder.probes.lowrank import input_stacks, student_delta_bytes

    rank = resolve_size(prereg.params["rank_fraction"], ladder_weights.config["hidden_size"])
    gate.check(student_delta_bytes(input_stacks(ladder_weights.dtype_bytes()), rank), rank=rank)


@ladder.gate("activation_error")
def test_activation_error(cell, gate, study, rung_cache, ladder_seeds):
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    gate.check(study.error(layer, task, study.basis("universal", layer)), tau=study.tau(layer, task, ladder_seeds),
               layer=layer, rank=study.rank)


@ladder.gate("task_conditioning")
def test_task_conditioning(gate, study, rung_cache):
    worst = {layer: study.worst_task(layer) for layer in sorted(set(rung_cache["layers"].values()))}
    layer = max(worst, key=lambda k: worst[k].value)
    gate.check(worst[layer].value, layer=layer, task=worst[layer].task,
               per_layer={str(k): w.per_task for k, w in worst.items()})


@ladder.gate("route_flip_rate")
def test_route_flip_rate(gate, study, prereg):
    from pytest_ladder.probes.lowrank import pooled_flip_rate

    deploys = [study.deploy("method", task, routes=True) for task in prereg.tasks]
    gate.check(pooled_flip_rate(deploys), per_task={d.task: d.route_flip_rate for d in deploys})


@ladder.gate("delta_nll")
def test_delta_nll(gate, study, prereg):
    deploys = {task: study.deploy("method", task, routes=True) for task in prereg.tasks}
    gate.check(max(d.delta_nll for d in deploys.values()), per_task={t: d.delta_nll for t, d in deploys.items()},
               series={"delta_nll_by_task": [deploys[t].delta_nll for t in prereg.tasks]},
               nll={t: d.nll for t, d in deploys.items()})


@ladder.trap("random_basis")
def test_random_basis(trap, study, rung_cache, prereg, ladder_seeds):
    from pytest_ladder.probes.lowrank import random_basis

    layer, _ = hardest(rung_cache, prereg)
    hidden = study.adapter.hidden_size
    randoms = [study.fit_error("universal", layer, random_basis(hidden, study.rank, seed, device=study.device))
               for seed in ladder_seeds]
    trap.check(min(randoms), method=study.fit_error("universal", layer, study.basis("universal", layer)),
               worst=max(randoms))


@ladder.trap("task_swap")
def test_task_swap(trap, study, rung_cache, prereg):
    layer, task = hardest(rung_cache, prereg)
    trap.check(study.fit_error(task, layer, study.basis(prereg.params["swap_from"], layer)),
               own_error=study.fit_error(task, layer, study.basis(task, layer)))


@ladder.trap("off_projection")
def test_off_projection(trap, study, rung_cache, prereg):
    layer, _ = hardest(rung_cache, prereg)
    kept, off = study.fit_split("universal", layer, study.basis("universal", layer))
    trap.check(abs(kept + off - 1.0), kept_energy=kept, off_energy=off)
