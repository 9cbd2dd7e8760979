"""A GPU workspace budget changes where and in what chunks probes compute, never what they find: G4's Grams, bases,
gate values and τ baselines on the embedded model under a workspace of a few hundred KiB (every expert its own
chunk, results kept on the CPU) equal the unbounded run's to float64 rounding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

TINY = 256 * 1024  # smaller than one expert's float64 working set: one expert per chunk
BATCHED = 16 * 1024**2  # G10.5's calibration: several sequences folded in per batch


@pytest.fixture(scope="module")
def studies():
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.loading import ModelSpec, load_model
    from pytest_ladder.probes.lowrank import LowRankStudy
    from pytest_ladder.probes.routes import RoutingStudy

    torch.set_num_threads(1)
    loaded = load_model(ModelSpec(source="embedded"))
    corpora = load_corpora()
    found = {}
    for budget in (None, TINY):
        budgeted = type(loaded)(loaded.model, loaded.tokenizer, loaded.adapter, loaded.identity,
                                replace(loaded.spec, gpu_workspace=budget), loaded.path)
        routing = RoutingStudy(budgeted, corpora, n_points=256)
        found[budget] = LowRankStudy(routing, 8, ("code", "math", "text"), calibration_points=256)
    return found


def test_tiny_budget_chunks_one_expert_at_a_time(studies):
    workspace = studies[TINY].routing.workspace
    assert workspace.bounded and workspace.chunk(16, 2 * 128 * 128 * 8 + 256 * 128 * 8) == 1
    assert not studies[None].routing.workspace.bounded


def test_grams_bases_and_gate_values_do_not_depend_on_the_budget(studies):
    free, tiny = studies[None], studies[TINY]
    for layer in (1, 6):
        grams_free, counts_free = free.routing.expert_grams("text", layer)
        grams_tiny, counts_tiny = tiny.routing.expert_grams("text", layer)
        assert torch.equal(counts_free.cpu(), counts_tiny.cpu())
        torch.testing.assert_close(grams_tiny.cpu(), grams_free.cpu(), rtol=1e-13, atol=1e-10)
        basis_free, basis_tiny = free.basis("universal", layer), tiny.basis("universal", layer)
        torch.testing.assert_close(basis_tiny.apply(torch.eye(128)), basis_free.apply(torch.eye(128)),
                                   rtol=1e-9, atol=1e-9)
        for task in ("code", "text"):
            assert tiny.error(layer, task, basis_tiny) == pytest.approx(free.error(layer, task, basis_free),
                                                                        rel=1e-9)
            tau_free, tau_tiny = free.tau(layer, task, [11, 12, 13]), tiny.tau(layer, task, [11, 12, 13])
            assert tau_tiny.values == pytest.approx(tau_free.values, rel=1e-12)
        worst_free, worst_tiny = free.worst_task(layer), tiny.worst_task(layer)
        assert worst_tiny.task == worst_free.task
        assert worst_tiny.per_task == pytest.approx(worst_free.per_task, rel=1e-9)


def test_identity_is_exactly_zero_under_any_budget(studies):
    from pytest_ladder.probes.lowrank import identity_basis

    for study in studies.values():
        assert study.error(3, "math", identity_basis(128)) == 0.0


def test_rotorquant_errors_do_not_depend_on_the_budget(studies):
    from pytest_ladder.probes.rotorquant import IDENTITY, METHOD, RotorQuant, RotorQuantStudy

    found = {budget: RotorQuantStudy(study.routing, quantizer=RotorQuant(2)) for budget, study in studies.items()}
    for key in (METHOD, ("bits", 4), ("random_scales", 5, 0.1, 10.0)):
        free, tiny = found[None].error(3, "text", key), found[TINY].error(3, "text", key)
        assert tiny.pooled == pytest.approx(free.pooled, rel=1e-9)
        assert tiny.per_projection == pytest.approx(free.per_projection, rel=1e-9)
    assert found[TINY].error(3, "text", IDENTITY).pooled == 0.0
    for key in (METHOD, ("random_scales", 5, 0.1, 10.0)):  # chunks of experts give the one-pass W' bit for bit
        free, tiny = found[None].compress(3, key), found[TINY].compress(3, key)
        assert all(torch.equal(tiny[p].cpu(), free[p].cpu()) for p in free)
        stored = found[TINY].compress(3, key, stored_dtype=True)
        assert all(stored[p].dtype == found[TINY].stacks(3)[p].dtype for p in free)
        assert all(torch.equal(stored[p], free[p].cpu().to(stored[p].dtype)) for p in free)
        gathered = found[TINY].compress(3, key, stored_dtype=True, on_device=True)  # a deploy's layer
        assert all(torch.equal(gathered[p], stored[p]) for p in free)
    assert found[TINY].deploy("text", METHOD) == found[None].deploy("text", METHOD)
    assert found[TINY].deploy("text", IDENTITY) == found[None].deploy("text", IDENTITY) == (0.0, 0.0)


@pytest.fixture(scope="module")
def attention_studies():
    """G10.5's attention study on the embedded model (layers 1 and 6, text), unbounded and under TINY."""
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.loading import ModelSpec, load_model
    from pytest_ladder.probes.attention import AttentionStudy, SparseSpec

    torch.set_num_threads(1)
    loaded = load_model(ModelSpec(source="embedded"))
    corpora = load_corpora()
    found = {}
    for budget in (None, TINY, BATCHED):
        budgeted = type(loaded)(loaded.model, loaded.tokenizer, loaded.adapter, loaded.identity,
                                replace(loaded.spec, gpu_workspace=budget), loaded.path)
        found[budget] = AttentionStudy(budgeted, corpora, [1, 6], n_points=256, decays=(0.5, 0.9), ridges=(1e-3, 1e-1),
                                       calibration_tokens_per_feature=4, sparse=SparseSpec(4, (11, 12)))
    return found


@pytest.mark.parametrize("budget", ["tiny", "batched"])
def test_attention_fits_do_not_depend_on_the_budget(attention_studies, budget):
    """TINY folds every calibration sequence in alone, BATCHED several sequences at once: both equal the unbounded
    fits."""
    free, tiny = attention_studies[None], attention_studies[TINY if budget == "tiny" else BATCHED]
    for layer in (1, 6):
        kept = tiny.calibration(layer, "text").fit
        assert kept.ftf.device.type == "cpu" and all(v.device.type == "cpu" for v in kept.fty.values())
        hybrid_free, hybrid_tiny = free.hybrid(layer, "text"), tiny.hybrid(layer, "text")
        assert hybrid_tiny.hybrid_error == pytest.approx(hybrid_free.hybrid_error, rel=1e-9)
        assert hybrid_tiny.random_errors == pytest.approx(hybrid_free.random_errors, rel=1e-9)
        assert hybrid_tiny.sparse_only_error == hybrid_free.sparse_only_error
        scan_free, scan_tiny = free.scan(layer, "text"), tiny.scan(layer, "text")
        assert (scan_tiny.ridge, scan_tiny.n_calibration) == (scan_free.ridge, scan_free.n_calibration)
        assert scan_tiny.heldout_error == pytest.approx(scan_free.heldout_error, rel=1e-9)
        assert scan_tiny.memoryless_error == pytest.approx(scan_free.memoryless_error, rel=1e-9)
        assert tiny.random_scans(layer, "text", [3, 4]) == pytest.approx(free.random_scans(layer, "text", [3, 4]),
                                                                         rel=1e-9)
        assert tiny.trivial(layer, "text") == free.trivial(layer, "text") == 0.0


def test_g2_does_not_depend_on_the_budget():
    """G2's expert tensor under TINY: kept on the CPU as read, Grams, floor, HOSVD and random residuals equal the
    unbounded run's; identity factors give exactly 0 under both."""
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.embedded import embedded_model_dir
    from pytest_ladder.probes import spectral

    weights = Checkpoint(embedded_model_dir())
    layers = [weights.experts(layer, "down") for layer in range(weights.n_layers)]
    free = spectral.expert_tensor(layers, "down", Workspace.on("cpu", None))
    tiny = spectral.expert_tensor(layers, "down", Workspace.on("cpu", TINY))
    assert tiny.slices[0].dtype == layers[0].dtype and tiny.shape == free.shape == (8, 16, 128, 128)
    for g_free, g_tiny in zip(free.mode_grams(), tiny.mode_grams()):
        torch.testing.assert_close(g_tiny, g_free, rtol=1e-12, atol=1e-9)
    floor_free, floor_tiny = spectral.tucker_floor(free, free.numel() // 4), spectral.tucker_floor(tiny, free.numel() // 4)
    assert floor_tiny.ranks == floor_free.ranks and floor_tiny.residual == pytest.approx(floor_free.residual, rel=1e-9)
    for factors in (spectral.hosvd_factors(free, floor_free.ranks), spectral.random_factors(free.shape, floor_free.ranks, 5)):
        assert spectral.projection_residual(tiny, factors) == pytest.approx(spectral.projection_residual(free, factors),
                                                                            rel=1e-10)
    assert spectral.projection_residual(tiny, spectral.identity_factors(tiny.shape)) == 0.0
    assert spectral.projection_residual(free, spectral.identity_factors(free.shape)) == 0.0


def test_g2_reads_resident_weights_as_views_with_the_checkpoints_values_bit_for_bit():
    """G2's expert tensor from the loaded model's resident parameters (views of the fused gate_up_proj halves and of
    down_proj: no copy) gives the mode Grams, the floor and the HOSVD, random and identity residuals of the tensor read
    from the checkpoint, bit for bit, in pieces of the strided views under a small budget and unbounded; an offloaded (meta) parameter, another device or a
    narrower dtype than the checkpoint's gives None (the checkpoint is read)."""
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.loading import ModelSpec, load_model
    from pytest_ladder.probes import spectral
    from pytest_ladder.rung_fixtures import resident_experts

    loaded = load_model(ModelSpec(source="embedded", device="cpu"))
    weights = Checkpoint(loaded.path)
    resident = resident_experts(loaded, "cpu", weights)
    small = 3_000_000  # a few rows of a layer per piece; chunks of K's 732 columns cut rows of mode 2 (128 wide)
    for projection, budget in (("gate", small), ("up", None), ("down", small)):
        views = [resident(layer, projection) for layer in range(weights.n_layers)]
        read = [weights.experts(layer, projection) for layer in range(weights.n_layers)]
        fused = loaded.adapter.experts_module(1)
        parameter = fused.down_proj if projection == "down" else fused.gate_up_proj
        assert views[1].untyped_storage().data_ptr() == parameter.untyped_storage().data_ptr()
        assert all(torch.equal(v, r) for v, r in zip(views, read))
        from_views = spectral.expert_tensor(views, projection, Workspace.on("cpu", budget))
        from_file = spectral.expert_tensor(read, projection, Workspace.on("cpu", budget))
        assert from_views.slices[1].untyped_storage().data_ptr() == parameter.untyped_storage().data_ptr()
        for g_views, g_file in zip(from_views.mode_grams(), from_file.mode_grams()):
            assert torch.equal(g_views, g_file)
        floor = spectral.tucker_floor(from_file, from_file.numel() // 4)
        assert spectral.tucker_floor(from_views, from_file.numel() // 4) == floor
        sets = [spectral.hosvd_factors(from_file, floor.ranks), spectral.random_factors(from_file.shape, floor.ranks, 5),
                spectral.identity_factors(from_file.shape)]
        residuals = spectral.projection_residuals(from_views, sets)
        assert residuals == spectral.projection_residuals(from_file, sets) and residuals[2] == 0.0
    assert resident_experts(loaded, "cuda:0", weights)(1, "up") is None
    assert resident_experts(None, "cpu", weights)(1, "up") is None
    loaded.model.to(torch.bfloat16)  # narrower than the stored float32: not the checkpoint's values
    assert weights.expert_dtype == torch.float32 and resident(1, "up") is None
    with torch.device("meta"):
        offloaded = type(loaded.model)(loaded.model.config)
    assert type(loaded.adapter)(offloaded).resident_experts(1, "down", "cpu") is None


def test_g0_does_not_depend_on_the_budget():
    """G0's layer under TINY (a few experts per piece, the stacked layer matrix a block of rows at a time, its σ from
    the stacked triangular factors) equals the unbounded run's: spectra, floors, the best regauge's error and every
    τ baseline to float64 rounding; the trivial pass is exactly 0 and a random regauge's σ drift is rounding under
    both. The drift traps' σ of the layer matrix (from its Gram, assembled from row blocks) equal a plain SVD of the
    formed matrix to 1e-12 of σ_max."""
    from pytest_ladder.measure.orthogonal import random_orthogonal
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.embedded import embedded_model_dir
    from pytest_ladder.probes import spectral

    weights = Checkpoint(embedded_model_dir())
    free = spectral.HeldLayers(weights, {}, Workspace.on("cpu", None))
    tiny = spectral.HeldLayers(weights, {}, Workspace.on("cpu", TINY))
    assert len(tiny._spans(tiny._read(3)["gate"])) > 1 and len(free._spans(free._read(3)["gate"])) == 1
    for layer in (0, 3):
        s_free, s_tiny = free.spectra(layer), tiny.spectra(layer)
        for kind in spectral.KINDS:
            torch.testing.assert_close(s_tiny[kind], s_free[kind], rtol=1e-10, atol=1e-12)
        ranks = {k: max(1, s.shape[-1] // 8) for k, s in s_free.items()}
        f_free, f_tiny = free.floor(layer, ranks), tiny.floor(layer, ranks)
        assert f_tiny.residual == pytest.approx(f_free.residual, rel=1e-10) and f_tiny.residual_at == f_free.residual_at
        (b_free, t_free), (b_tiny, t_tiny) = free.best_and_tau(layer, ranks, [1, 2]), tiny.best_and_tau(layer, ranks, [1, 2])
        assert b_tiny.value == pytest.approx(b_free.value, rel=1e-10) and b_tiny.at == b_free.at
        assert t_tiny.values == pytest.approx(t_free.values, rel=1e-10)
        assert free.trivial_pass(layer) == tiny.trivial_pass(layer) == {
            "error": 0.0, "floor_residual": 0.0, "sigma_drift": 0.0}
        assert 0 < tiny.random_drift(layer, 7) < 1e-12 and 0 < free.random_drift(layer, 7) < 1e-12
    matrices = spectral.layer_matrices(*(weights.experts(3, p) for p in ("gate", "up", "down")))
    exact = torch.linalg.svdvals(matrices["layer"][0])
    q = random_orthogonal(matrices["layer"].shape[-1], 4)
    for rotation in (None, q):
        assert float((tiny._layer_singular_values(3, rotation) - exact).abs().max()) < 1e-12 * float(exact[0])


def test_drift_sigma_takes_the_gram_only_where_it_is_accurate():
    """σ for the drift traps: from the Gram where σ_min ≥ 1e-3 σ_max (within 1e-12 σ_max of the SVD here), by SVD for
    a nearly rank-deficient matrix (whose Gram σ are off by ~√ε σ_max = 1.5e-8 σ_max, over the traps' 1e-9), and
    exactly the SVD's values there."""
    from pytest_ladder.probes import spectral

    g = torch.Generator().manual_seed(3)
    full = torch.randn(2, 24, 40, generator=g, dtype=torch.float64)
    low = torch.randn(2, 24, 3, generator=g, dtype=torch.float64) @ torch.randn(2, 3, 40, generator=g, dtype=torch.float64)
    both = torch.cat([full, low])
    found, exact = spectral.drift_sigma(both), torch.linalg.svdvals(both)
    assert spectral.well_conditioned(spectral.singular_values(both, method="gram")).tolist() == [True, True, False, False]
    assert float(((found[:2] - exact[:2]).abs() / exact[:2, :1]).max()) < 1e-12
    assert torch.equal(found[2:], exact[2:])
    gram_only = spectral.singular_values(low, method="gram")
    assert float(((gram_only - exact[2:]).abs() / exact[2:, :1]).max()) > 1e-9  # what the SVD fallback avoids


def test_g0_reuses_sigma_only_where_the_rotated_matrices_are_bit_for_bit_the_same():
    """σ(W) is computed once per rung; the trivial pass (Q = I: W Q = W exactly) reuses it, a random Q does not (its
    drift is rounding, not 0), and the drift values equal a fresh computation's."""
    from pytest_ladder.measure.orthogonal import random_orthogonal
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.embedded import embedded_model_dir
    from pytest_ladder.probes import spectral

    weights = Checkpoint(embedded_model_dir())
    held = spectral.HeldLayers(weights, {}, Workspace.on("cpu", TINY))
    assert held.trivial_pass(3)["sigma_drift"] == 0.0
    assert set(held.store["layer_sigma"]) == {3} and len(held.store["expert_sigma"]) > 3
    drift = held.random_drift(3, 7)
    fresh = spectral.HeldLayers(weights, {}, Workspace.on("cpu", TINY)).random_drift(3, 7)
    assert drift == fresh and 0 < drift < 1e-12
    hidden = weights.experts(3, "gate").shape[-1]
    q = random_orthogonal(hidden, 7)
    assert not torch.equal(held._layer_singular_values(3, q), held._layer_singular_values(3, None))


def test_r2_does_not_depend_on_the_budget():
    """R2's SRHT-vs-Haar round trips a few experts at a time under TINY equal one pass over the stack to float64
    rounding; on-grid weights through R = I round-trip exactly (0) either way."""
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.embedded import embedded_model_dir
    from pytest_ladder.probes import quant_weights

    ws = Checkpoint(embedded_model_dir()).experts(3, "up")
    spec = quant_weights.row_spec(2, ws.shape[-1])
    tiny = Workspace.on("cpu", TINY)
    assert len(tiny.spans(ws.shape[0], 6 * 8 * ws[0].numel())) > 1
    free = quant_weights.srht_vs_haar(ws, spec, srht_seeds=(1, 2), haar_seeds=(3, 4))
    chunked = quant_weights.srht_vs_haar(ws, spec, srht_seeds=(1, 2), haar_seeds=(3, 4), workspace=tiny)
    for a, b in ((free.srht_errors, chunked.srht_errors), (free.haar_errors, chunked.haar_errors),
                 ((free.identity_error,), (chunked.identity_error,))):
        assert a == pytest.approx(b, rel=1e-12)
    eye = torch.eye(ws.shape[-1], dtype=torch.float64)
    for workspace in (None, tiny):
        assert quant_weights.rotation_error(ws, eye, spec, workspace=workspace,
                                            prepare=lambda w: quant_weights.on_grid(w, spec)) == 0.0


def test_a_layer_calibrated_alone_equals_it_calibrated_with_the_others(attention_studies, monkeypatch):
    """The first layer asked for a task is captured alone; the next brings every other study layer in one pass; a
    layer's statistics are the same bit for bit whether it was captured alone or beside the others."""
    from pytest_ladder.probes import attention

    free = attention_studies[None]
    passes = []
    capture = attention.attention_capture
    monkeypatch.setattr(attention, "attention_capture",
                        lambda *args, **kwargs: passes.append(list(args[3])) or capture(*args, **kwargs))
    fresh = attention.AttentionStudy(free.loaded, free.corpora, [1, 6, 3], n_points=256, decays=free.decays,
                                     ridges=free.ridges, calibration_tokens_per_feature=4, sparse=free.sparse)
    alone = fresh.calibration(6, "text")
    beside = fresh.calibration(1, "text")
    assert passes == [[6], [1, 3]] and fresh.calibration(3, "text") is fresh.calibration(3, "text")
    assert alone.share == 0.25 and beside.share == fresh.calibration(3, "text").share == 0.125  # a quarter, split
    assert len(passes) == 2
    together = attention.AttentionStudy(free.loaded, free.corpora, [1, 6, 3], n_points=256, decays=free.decays,
                                        ridges=free.ridges, calibration_tokens_per_feature=4, sparse=free.sparse)
    together.calibration(1, "text")  # the first pass: layer 1 alone
    both = together.calibration(6, "text")  # the second pass: layers 3 and 6 together
    for one, other in ((alone, both), (beside, together.calibration(1, "text"))):
        for fold in ("fit", "validation"):
            a, b = getattr(one, fold), getattr(other, fold)
            assert torch.equal(a.ftf, b.ftf) and a.n_points == b.n_points and a.yy == b.yy
            assert all(torch.equal(a.fty[k], b.fty[k]) for k in a.fty)
        assert torch.equal(one.offsets, other.offsets) and torch.equal(one.sink, other.sink)


def test_key_stability_reads_a_rule_only_pass_equal_to_the_full_calibrations_rule(attention_studies):
    """key_jaccard needs the static rule alone: a layer without a calibration gets a pass that gathers only the
    rule's statistics (no normal equations), for every study layer lacking them; the rule equals the one a full
    calibration of the layer gathers, bit for bit, and so does the Jaccard."""
    from pytest_ladder.probes import attention

    free = attention_studies[None]
    fresh = attention.AttentionStudy(free.loaded, free.corpora, [1, 6], n_points=256, decays=free.decays,
                                     ridges=free.ridges, calibration_tokens_per_feature=4, sparse=free.sparse)
    stability = fresh.key_stability(6, "text")
    rule = fresh.rule(6, "text")
    assert not rule.fits and rule.fit.ftf is None and rule.n_sequences == 0
    assert set(fresh._rules["text"]) == {1, 6} and "text" not in fresh._calibration
    full = free.calibration(6, "text")
    for a, b in zip(rule.static_rule(), full.static_rule()):
        assert torch.equal(a, b)
    assert stability == free.key_stability(6, "text")
    assert fresh.rule(6, "text") is rule
    fresh.calibration(6, "text")
    assert fresh.rule(6, "text") is fresh.calibration(6, "text")  # a full calibration, once there, is read


def test_sparse_parts_reduced_a_head_at_a_time_equal_all_heads_at_once(attention_studies):
    """Under a bounded workspace a sequence's sparse parts are computed a chunk of heads at a time (G10.5 on
    OLMoE-1B-7B: 537 MB per float64 copy of the attention otherwise): every kept tensor equals the all-heads reduction
    bit for bit, the rule-only pass's statistics too."""
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.probes import attention_capture as capture

    free, one_byte = attention_studies[None], Workspace.on("cpu", 1)
    sequences = free._sequences("text", "heldout", 256)[:3]
    spec = free.sparse
    found = {}
    for bound, workspace in ((None, None), (1, one_byte)):
        for rule_only in (False, True):
            found[bound, rule_only] = capture.attention_capture(
                free.loaded.model, free.loaded.adapter, sequences, [1, 6], sparse=spec, rule_only=rule_only,
                workspace=workspace, progress=False)
    heads = free.loaded.model.config.num_attention_heads
    assert heads > 1 and len(capture._Reducer(free.loaded.model, free.loaded.adapter, [], spec, print,
                                              workspace=one_byte)._head_spans(heads, 8)) == heads
    for rule_only in (False, True):
        for layer in (1, 6):
            for a, b in zip(found[None, rule_only][layer], found[1, rule_only][layer]):
                for name in ("x", "o", "o_sparse", "topk", "sparse_mass", "offset_mass", "offset_count", "sink_mass"):
                    x, y = getattr(a, name), getattr(b, name)
                    assert (x is None and y is None) if rule_only and name in ("o_sparse", "topk", "sparse_mass") \
                        else torch.equal(x, y), name
                assert len(a.o_random) == len(b.o_random) == (0 if rule_only else 2)
                assert all(torch.equal(x, y) for x, y in zip(a.o_random, b.o_random))
