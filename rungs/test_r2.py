"""R2: SRHT (Hadamard·Rademacher) beats a Haar random rotation under the same quantizer, on the experts' bytes line.

An impact rung: it opens with the GB it takes off the experts line of the budget table (probes.budget), recorded in
the postmortem. Weights only, no forward pass (probes.quant_weights).
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung import record_cell, record_context, run_context
from pytest_ladder.rung_fixtures import resolve_layer
from pytest_ladder.seal import derive_seeds

ladder = rung("r2")


@pytest.fixture
def rotated(cell, prereg, ladder_weights, ladder_seeds, ladder_workspace, rung_cache, request):
    """The cell's SRHT-vs-Haar comparison (layer resolved against the model and recorded), once per rung; under a
    bounded GPU workspace the stack waits on the CPU and its round trips run a chunk of experts at a time."""
    from pytest_ladder.probes import quant_weights

    layer = resolve_layer(cell.params["layer"], ladder_weights.n_layers)
    record_cell(request.config, f"r2 {cell.id}", {"layer": layer})
    key = (layer, cell.params["weight"])
    if key not in rung_cache:
        ws = ladder_weights.on(ladder_workspace.home).experts(layer, cell.params["weight"])
        haar_seeds = tuple(ladder_seeds)
        srht_seeds = derive_seeds(prereg.seal or "", len(haar_seeds), purpose="srht")
        rung_cache[key] = quant_weights.srht_vs_haar(ws, quant_weights.row_spec(prereg.params["bits"], ws.shape[-1]),
                                                     srht_seeds=srht_seeds, haar_seeds=haar_seeds,
                                                     workspace=ladder_workspace)
    return rung_cache[key]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, ladder_weights, ladder_workspace):
    """Weights on the quantizer's grid with R = I round-trip exactly; the dense experts R2 counts are exactly the
    budget table's experts line (two independent byte counts of the uncompressed model)."""
    import torch

    from pytest_ladder.probes import quant_weights
    from pytest_ladder.probes.budget import budget_table
    from pytest_ladder.probes.rotorquant import expert_stacks

    hardest = prereg.hardest_cell.params
    ws = ladder_weights.on(ladder_workspace.home).experts(resolve_layer(hardest["layer"], ladder_weights.n_layers),
                                                          hardest["weight"])
    spec = quant_weights.row_spec(prereg.params["bits"], ws.shape[-1])
    eye = torch.eye(ws.shape[-1], dtype=torch.float64, device=ladder_workspace.device)
    error = quant_weights.rotation_error(ws, eye, spec, workspace=ladder_workspace,
                                         prepare=lambda w: quant_weights.on_grid(w, spec))
    _, _, dense = quant_weights.expert_bytes_delta(expert_stacks(ladder_weights.dtype_bytes()), prereg.params["bits"],
                                                   scale_dtype=prereg.params["scale_dtype"])
    unaccounted = dense.nbytes - budget_table(ladder_weights.dtype_bytes()).line_bytes("experts")
    trap.check(max(error, abs(unaccounted)), error=error, delta_bytes=unaccounted)


@ladder.prefilter("bytes")
def test_bytes(gate, prereg, ladder_weights, request):
    from pytest_ladder.probes import quant_weights
    from pytest_ladder.probes.budget import budget_table
    from pytest_ladder.probes.rotorquant import expert_stacks

    stacks = expert_stacks(ladder_weights.dtype_bytes())
    delta, compressed, dense = quant_weights.expert_bytes_delta(stacks, prereg.params["bits"],
                                                                scale_dtype=prereg.params["scale_dtype"])
    table = budget_table(ladder_weights.dtype_bytes(), tied_head=bool(ladder_weights.config.get("tie_word_embeddings")))
    table = table.with_target(prereg.params["target_device_memory_fraction"])
    deltas = {**run_context(request.config).get("budget_deltas", {}), "r2": {"experts": delta}}
    record_context(request.config, "budget_deltas", deltas)
    record_context(request.config, "budget_table", table.rows(deltas))
    gate.check(delta, delta_gb=delta / 1e9, expert_line_bytes=table.line_bytes("experts"),
               compressed=compressed.bytes_by_kind(), dense_bytes=dense.nbytes, total_bytes=table.total_bytes,
               after_bytes=table.after({"experts": delta}), target_bytes=table.target_bytes)


@ladder.gate("srht_vs_haar_pp")
def test_srht_vs_haar_pp(cell, gate, rotated):
    gate.check(rotated.pp, srht_mean=rotated.srht_mean, haar_mean=rotated.haar_mean,
               identity_error=rotated.identity_error, srht_errors=list(rotated.srht_errors),
               haar_errors=list(rotated.haar_errors))


@ladder.gate("round_trip_error")
def test_round_trip_error(cell, gate, rotated):
    gate.check(rotated.srht_mean, tau={"tau": min(rotated.haar_errors), "values": list(rotated.haar_errors)},
               srht_errors=list(rotated.srht_errors))
