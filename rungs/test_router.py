"""Routers, any method: every MoE layer's router W_r -> W_r′ by the compressor a prereg names, judged by the bytes
prefilter, route flips per cell against the τ floor, ΔNLL at full depth and the traps. A generic rung: it has no
prereg of its own and tests every prereg that binds it with "rung": "router" (each its own claim, decision and
archive folder), e.g. prereg/router_int4_rows.

The prereg names the method in params: "compressor": "<module>:<factory>" and "compressor_params": {...}; the
factory returns an object with compress(layer, router) and storage(routers) (pytest_ladder.compressors.
RouterCompressor; docs/compressors.md). Gates as G6's: bytes (prefilter) from the declared storage against the dense
routers; route_flip_rate per cell on the dense model's held-out router inputs, against the τ floor (the best of B
random controls storing the same bytes: the compressor's random_control(seed), else a random projection);
delta_nll with every router replaced, worst task. Traps: trivial_pass (W_r′ = W_r: every gate exactly 0) and
harmful_control (the compressor's harmful_control(), else a rank-one router off a random direction, must fail the
route-flip gate). Heavy lifting: pytest_ladder.probes.routers.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.compressors import check_router, find_compressor
from pytest_ladder.rung_fixtures import compressor_study

ladder = rung("router", own_prereg=False, check=find_compressor, prepare=check_router)


@pytest.fixture
def compressor(rung_cache, request, prereg):
    from pytest_ladder.compressors import rung_compressor

    return rung_compressor(rung_cache, prereg, "router", request.config.rootpath)


@pytest.fixture
def routers(ladder_weights):
    from pytest_ladder.probes.routers import router_stacks

    return router_stacks(ladder_weights.dtype_bytes())


@pytest.fixture
def study(rung_cache, request, compressor, routers, ladder_routing, ladder_layers, prereg, ladder_seeds):
    from pytest_ladder.probes.routers import RouterStudy, harmful_control, random_control, router_bytes

    return compressor_study(
        rung_cache, request, prereg, ladder_layers, ladder_seeds, compressor,
        lambda: router_bytes(compressor, routers).fraction, (random_control, harmful_control),
        lambda compressors: RouterStudy(ladder_routing, compressors=compressors))


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, study, rung_cache, prereg, routers):
    cell = prereg.hardest_cell
    outcome = study.trivial_pass(rung_cache["layers"][cell.id], cell.params["task"], routers)
    trap.check(outcome.observed, **outcome.refs)


@ladder.prefilter("bytes")
def test_bytes(gate, compressor, routers):
    from pytest_ladder.probes.routers import router_bytes

    found = router_bytes(compressor, routers)
    gate.check(found.delta, dense_routers_bytes=found.dense.nbytes, compressed_routers_bytes=found.compressed.nbytes,
               by_kind=found.compressed.bytes_by_kind())


@ladder.gate("route_flip_rate")
def test_route_flip_rate(cell, gate, study, rung_cache, ladder_seeds):
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    gate.check(study.flip_rate(layer, task), tau=study.tau(layer, task, [("random", seed) for seed in ladder_seeds]),
               layer=layer)


@ladder.gate("delta_nll")
def test_delta_nll(gate, study, prereg):
    deployed = {task: study.deploy(task) for task in prereg.tasks}
    losses = {task: found[1] for task, found in deployed.items()}
    gate.check(max(losses.values()), series={"delta_nll_per_task": list(losses.values())}, per_task=losses,
               deployed_route_flip_rate={task: found[0] for task, found in deployed.items()})


@ladder.trap("harmful_control")
def test_harmful_control(trap, study, rung_cache, prereg):
    from pytest_ladder.compressors import HARMFUL

    cell = prereg.hardest_cell
    layer, task = rung_cache["layers"][cell.id], cell.params["task"]
    trap.check(study.flip_rate(layer, task, HARMFUL), threshold=prereg.gates["route_flip_rate"].threshold,
               method=study.flip_rate(layer, task))
