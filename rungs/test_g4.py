"""G4 — task-conditional rank reduction: a static rank-r basis on each MoE layer's expert inputs, shared by its experts.

Universal bases (every task's calibration tokens) face gates 1-3 and 5 and τ (Haar-random bases of the same rank);
task-conditional bases face gate 4; the deploy patches every MoE layer. Heavy lifting: pytest_ladder.probes.lowrank.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell
from pytest_ladder.rung_fixtures import cell_layers, resolve_size

ladder = rung("g4")


@pytest.fixture
def study(rung_cache, ladder_routing, ladder_layers, prereg, request):
    from pytest_ladder.probes import lowrank

    if "study" not in rung_cache:
        hidden, fraction = ladder_routing.adapter.hidden_size, prereg.params["rank_fraction"]
        rank = resolve_size(fraction, hidden)
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        rung_cache["study"] = lowrank.LowRankStudy(ladder_routing, rank, prereg.tasks,
                                                   calibration_points=prereg.params["calibration_points"])
        record_cell(request.config, "g4", {"rank": rank, "layers": rung_cache["layers"], "resolved": {
            "rank": {"value": rank, "of": "hidden_size", "size": hidden, "param": "rank_fraction", "given": fraction}}})
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
    from pytest_ladder.probes.lowrank import rank_grid

    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    error = study.error(layer, task, study.basis("universal", layer))
    sweep = None if gate.passes(error) else ("rank", study.error_by_rank(  # where the killed claim would pass
        layer, task, rank_grid(study.rank, study.adapter.hidden_size)))
    gate.check(error, tau=study.tau(layer, task, ladder_seeds), sweep=sweep, layer=layer, rank=study.rank)


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
    layer, task = hardest(rung_cache, prereg)
    tau = study.tau(layer, task, ladder_seeds)
    trap.check(tau.tau, method=study.error(layer, task, study.basis("universal", layer)), worst=max(tau.values))


@ladder.trap("task_swap")
def test_task_swap(trap, study, rung_cache, prereg):
    layer, task = hardest(rung_cache, prereg)
    trap.check(study.error(layer, task, study.basis(prereg.params["swap_from"], layer)),
               own_error=study.error(layer, task, study.basis(task, layer)))


@ladder.trap("off_projection")
def test_off_projection(trap, study, rung_cache, prereg):
    _, task = hardest(rung_cache, prereg)
    off, removed = study.deploy("off", task).delta_nll, study.deploy("removed", task).delta_nll
    trap.check(off / removed if removed else float("nan"), off_delta_nll=off, removed_delta_nll=removed,
               method_delta_nll=study.deploy("method", task, routes=True).delta_nll)
