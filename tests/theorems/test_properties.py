"""Each Lean kill theorem's statement, checked numerically on random instances with the project's own metric code.

The Lean sources say what must hold for every instance; here hypothesis draws instances and pytest_ladder.measure
computes both sides. Where the theorem is an inequality, a construction that attains (or just breaks) the bound
checks that the bound is the right one, so these tests can fail.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure import (
    Artifact,
    TensorStorage,
    activation_error,
    activation_sq_error,
    global_delta_bytes,
    gram,
    margin_certifies_no_flip,
    mode_spectra,
    project_inputs,
    random_orthogonal,
    random_orthonormal_columns,
    residual_energy,
    route_flip_rate,
    singular_values,
    spectrum_floor,
    topk_indices,
    topk_margin,
    truncate,
    tucker_artifact,
    tucker_residual,
)
from pytest_ladder.measure.rng import cpu_generator

F64 = torch.float64
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def gaussian(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=cpu_generator(seed), dtype=F64)


def invertible(n: int, seed: int) -> torch.Tensor:
    """A general (non-orthogonal) invertible matrix Q₁ diag(s) Q₂ with singular values s in [0.5, 2]."""
    s = 0.5 + 1.5 * torch.rand(n, generator=cpu_generator(seed), dtype=F64)
    return random_orthogonal(n, seed + 1) @ torch.diag(s) @ random_orthogonal(n, seed + 2)


def frob_sq(x: torch.Tensor) -> float:
    """frobSq of the Lean sources: tr(Xᵀ X)."""
    return float(torch.trace(x.mT @ x))


# ----------------------------------------------------------------------------------------------------------------
# G0: invertible_gauge_preserves_rank_family, orthogonal_gauge_preserves_{gram,singular_values}, frobSq_orthogonal_mul


@PROPERTY
@given(seed=seeds, m=st.integers(2, 10), n=st.integers(2, 10), data=st.data())
def test_invertible_gauge_preserves_rank_family(seed: int, m: int, n: int, data: st.DataObject) -> None:
    ranks = [data.draw(st.integers(0, min(m, n))) for _ in range(3)]
    for i, r in enumerate(ranks):
        w = gaussian(seed + 10 * i, m, r) @ gaussian(seed + 10 * i + 1, r, n)
        gauged = invertible(m, seed + 10 * i + 2) @ w @ invertible(n, seed + 10 * i + 5)
        assert int(torch.linalg.matrix_rank(w)) == r
        assert int(torch.linalg.matrix_rank(gauged)) == r


@PROPERTY
@given(seed=seeds, m=st.integers(1, 12), n=st.integers(1, 12))
def test_orthogonal_gauge_preserves_gram_singular_values_and_frobenius(seed: int, m: int, n: int) -> None:
    w = gaussian(seed, m, n)
    q = random_orthogonal(m, seed + 1)
    qw = q @ w
    torch.testing.assert_close(qw.mT @ qw, w.mT @ w, rtol=1e-12, atol=1e-12 * m)
    for method in ("svd", "gram"):
        torch.testing.assert_close(singular_values(qw, method=method), singular_values(w, method=method),
                                   rtol=1e-9, atol=1e-9)
    assert frob_sq(qw) == pytest.approx(frob_sq(w), rel=1e-12)
    assert int(torch.linalg.matrix_rank(qw)) == int(torch.linalg.matrix_rank(w))


def test_a_non_orthogonal_gauge_moves_the_singular_values() -> None:
    """The orthogonality hypothesis is needed: an invertible gauge keeps the rank but not the spectrum."""
    w = gaussian(7, 6, 5)
    gauged = invertible(6, 8) @ w
    assert int(torch.linalg.matrix_rank(gauged)) == int(torch.linalg.matrix_rank(w)) == 5
    assert not torch.allclose(singular_values(gauged), singular_values(w), rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# G0: eckart_young_floor, orthogonal_gauge_cannot_lower_rank_floor, regauge_residual_floor


@PROPERTY
@given(seed=seeds, m=st.integers(2, 10), n=st.integers(2, 10), data=st.data())
def test_no_orthogonal_regauge_lowers_the_rank_floor(seed: int, m: int, n: int, data: st.DataObject) -> None:
    r = data.draw(st.integers(0, min(m, n)))
    w = gaussian(seed, m, n)
    q = random_orthogonal(m, seed + 1)
    sv = singular_values(w)
    floor = float(residual_energy(sv, r)) * frob_sq(w)  # Σ_{i>r} σ_i(W)²
    # Eckart–Young attains the floor of W's own spectrum on the regauged Q W ...
    assert frob_sq(q @ w - truncate(q @ w, r)) == pytest.approx(floor, rel=1e-9, abs=1e-9)
    assert float(spectrum_floor(singular_values(q @ w), r)) == pytest.approx(float(spectrum_floor(sv, r)), abs=1e-9)
    # ... and no rank-≤ r matrix does better; the proof's map B ↦ Qᵀ B keeps the error.
    for j in range(3):
        b = gaussian(seed + 2 + j, m, r) @ gaussian(seed + 5 + j, r, n)
        assert frob_sq(q @ w - b) >= floor * (1 - 1e-9) - 1e-9
        assert frob_sq(w - q.mT @ b) == pytest.approx(frob_sq(q @ w - b), rel=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# G2: mode_rank_le_budget, olmoe_tucker_cross_mode_no_compression (the floor it rests on)


@PROPERTY
@given(seed=seeds, dims=st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)), data=st.data())
def test_tucker_budget_caps_mode_ranks_and_each_mode_floors_the_residual(
    seed: int, dims: tuple[int, int, int], data: st.DataObject
) -> None:
    ranks = tuple(data.draw(st.integers(1, d)) for d in dims)
    # the byte closed form of tuckerParams: core r₁r₂r₃ plus factors Σ d_k r_k (one byte per value at int8)
    params = ranks[0] * ranks[1] * ranks[2] + sum(d * r for d, r in zip(dims, ranks))
    assert tucker_artifact("t", dims, ranks, torch.int8).nbytes == params
    assert tucker_artifact("t", dims, ranks, torch.bfloat16).nbytes == 2 * params
    budget = params + data.draw(st.integers(0, 50))
    assert all(r <= budget // d for d, r in zip(dims, ranks))  # mode_rank_le_budget

    t = gaussian(seed, *dims)
    residual = tucker_residual(t, ranks)
    spectra = mode_spectra(t)
    for k in range(3):
        floor = float(residual_energy(spectra[k], ranks[k]))  # tail energy of mode k past r_k (Eckart–Young)
        assert residual >= floor - 1e-12
        # the tail only grows as the rank shrinks (tailEnergy_antitone)
        tails = [float(residual_energy(spectra[k], r)) for r in range(dims[k] + 1)]
        assert all(a >= b - 1e-15 for a, b in itertools.pairwise(tails))


# ----------------------------------------------------------------------------------------------------------------
# Gate 1: static_student_bytes_lt_dense


def static_student(experts: int, out: int, hidden: int, rank: int, dtype: torch.dtype) -> Artifact:
    """One shared basis (H, r) and, per expert, its weight times the basis (out, r)."""
    parts = [TensorStorage("basis", (hidden, rank), dtype=dtype, kind="basis")]
    parts += [TensorStorage(f"expert{e}.factor", (out, rank), dtype=dtype, kind="factor") for e in range(experts)]
    return Artifact(tuple(parts))


def dense_experts(experts: int, out: int, hidden: int, dtype: torch.dtype) -> Artifact:
    return Artifact(tuple(TensorStorage(f"expert{e}", (out, hidden), dtype=dtype) for e in range(experts)))


@PROPERTY
@given(
    experts=st.integers(1, 8),
    out=st.integers(1, 64),
    hidden=st.integers(1, 64),
    data=st.data(),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.int8]),
)
def test_static_student_byte_closed_form(experts: int, out: int, hidden: int, data: st.DataObject, dtype) -> None:
    rank = data.draw(st.integers(0, hidden))
    b = dtype.itemsize
    student, dense = static_student(experts, out, hidden, rank, dtype), dense_experts(experts, out, hidden, dtype)
    assert student.nbytes == b * (experts * out * rank + hidden * rank)  # staticStudentBytes
    assert dense.nbytes == b * (experts * out * hidden)  # denseExpertBytes
    saves = global_delta_bytes(student, dense) < 0
    assert saves == (rank * (experts * out + hidden) < experts * out * hidden)


def test_olmoe_static_student_bytes_lt_dense() -> None:
    delta = global_delta_bytes(static_student(64, 2048, 2048, 24, torch.bfloat16),
                               dense_experts(64, 2048, 2048, torch.bfloat16))
    assert delta == 2 * (64 * 2048 * 24 + 2048 * 24) - 2 * 64 * 2048 * 2048 == -530_481_152


# ----------------------------------------------------------------------------------------------------------------
# Gate 3: route_flip_zero_above_margin


@PROPERTY
@given(seed=seeds, tokens=st.integers(1, 40), experts=st.integers(2, 16), data=st.data(),
       fraction=st.floats(0.0, 0.99))
def test_no_route_flips_below_half_the_margin(
    seed: int, tokens: int, experts: int, data: st.DataObject, fraction: float
) -> None:
    k = data.draw(st.integers(1, experts - 1))
    logits = gaussian(seed, tokens, experts)
    margin = topk_margin(logits, k)
    noise = 2 * torch.rand(tokens, experts, generator=cpu_generator(seed + 1), dtype=F64) - 1
    perturbed = logits + noise * (margin / 2 * fraction).unsqueeze(-1)  # |δ| < margin / 2
    assert bool(margin_certifies_no_flip(logits, perturbed, k).all())
    assert route_flip_rate(topk_indices(logits, k), topk_indices(perturbed, k)) == 0.0


@PROPERTY
@given(seed=seeds, tokens=st.integers(1, 40), experts=st.integers(2, 16), data=st.data(),
       excess=st.floats(0.01, 1.0))
def test_half_the_margin_is_the_exact_threshold(
    seed: int, tokens: int, experts: int, data: st.DataObject, excess: float
) -> None:
    """Just past margin/2, moving the k-th logit down and the (k+1)-th up flips every route."""
    k = data.draw(st.integers(1, experts - 1))
    logits = gaussian(seed, tokens, experts)
    order = logits.argsort(dim=-1, descending=True)
    step = (topk_margin(logits, k) / 2 * (1 + excess)).unsqueeze(-1)
    delta = torch.zeros_like(logits)
    delta.scatter_(-1, order[:, k - 1 : k], -step)
    delta.scatter_(-1, order[:, k : k + 1], step)
    perturbed = logits + delta
    assert not bool(margin_certifies_no_flip(logits, perturbed, k).any())
    assert route_flip_rate(topk_indices(logits, k), topk_indices(perturbed, k)) == 1.0


# ----------------------------------------------------------------------------------------------------------------
# Gate 2: activation_weighted_error_le_frobenius


@PROPERTY
@given(seed=seeds, out=st.integers(1, 10), d=st.integers(1, 10), tokens=st.integers(1, 30))
def test_activation_error_le_sqrt_lambda_max_times_frobenius(seed: int, out: int, d: int, tokens: int) -> None:
    x = gaussian(seed, tokens, d)  # token-major: X = xᵀ (d, tokens)
    g = gram(x)  # G = X Xᵀ
    lam_max = float(torch.linalg.eigvalsh(g)[-1])
    # the theorem's hypothesis holds at λ = λ_max: λ I − G ⪰ 0
    assert float(torch.linalg.eigvalsh(lam_max * torch.eye(d, dtype=F64) - g)[0]) >= -1e-9 * max(lam_max, 1.0)
    delta = gaussian(seed + 1, out, d)
    assert float(activation_sq_error(delta, g)) <= lam_max * frob_sq(delta.mT) * (1 + 1e-12) + 1e-12
    assert float(activation_sq_error(delta, g)) == pytest.approx(frob_sq((delta @ x.mT).mT), rel=1e-9, abs=1e-12)
    # attained by an error along the top input direction: Δ = a vᵀ
    v = torch.linalg.eigh(g).eigenvectors[:, -1]
    along = gaussian(seed + 2, out, 1) @ v.unsqueeze(0)
    assert float(activation_sq_error(along, g)) == pytest.approx(lam_max * frob_sq(along.mT), rel=1e-9, abs=1e-12)
    # gate 2's relative form: ‖ΔX‖ / ‖WX‖ ≤ √λ_max ‖Δ‖_F / ‖WX‖
    w = gaussian(seed + 3, out, d)
    err = activation_error(w, w - delta, g)
    bound = math.sqrt(lam_max * frob_sq(delta.mT)) / math.sqrt(float(err.sq_norm))
    assert err.pooled <= bound * (1 + 1e-12) + 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Gate 4: task_union_basis_contains_task_basis, task_union_basis_error_le


@PROPERTY
@given(seed=seeds, d=st.integers(4, 16), n_tasks=st.integers(2, 3), tokens=st.integers(1, 30), data=st.data())
def test_union_basis_contains_every_task_basis(seed: int, d: int, n_tasks: int, tokens: int,
                                               data: st.DataObject) -> None:
    bases = [random_orthonormal_columns(d, data.draw(st.integers(1, d // n_tasks)), seed + t) for t in range(n_tasks)]
    u, s, _ = torch.linalg.svd(torch.cat(bases, dim=1), full_matrices=False)
    union = u[:, s > 1e-10 * s[0]]  # orthonormal basis of span(∪_t U_t)
    eye = torch.eye(d, dtype=F64)
    for t, basis in enumerate(bases):
        # span U_t ⊆ span U_∪: projecting the task basis onto the union changes nothing
        torch.testing.assert_close(project_inputs(basis.mT, union), basis.mT, rtol=0, atol=1e-10)
        # so every activation is at least as close to the union span as to the task's span (W = I: ‖X − P X‖)
        g = gram(gaussian(seed + 100 + t, tokens, d))
        union_error = activation_error(eye, project_inputs(eye, union), g).pooled
        task_error = activation_error(eye, project_inputs(eye, basis), g).pooled
        assert union_error <= task_error + 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Gate 5: one_bit_compounding_exceeds_gate


@PROPERTY
@given(eps=st.floats(1e-6, 0.5), layers=st.integers(1, 32), gate_fraction=st.floats(0.0, 0.999), seed=seeds)
def test_per_layer_inflation_compounds_past_the_gate(eps: float, layers: int, gate_fraction: float, seed: int) -> None:
    gate = gate_fraction * layers * eps  # any gate below L·ε
    compounded = (1 + eps) ** layers - 1
    assert compounded >= layers * eps - 1e-12  # Bernoulli (one_add_mul_le_pow_of_nonneg)
    assert gate < compounded
    # realised by a chain of L layers, each compressed layer inflating its output by exactly 1 + ε
    d = 4
    dense = torch.eye(d, dtype=F64)
    for layer in range(layers):
        dense = random_orthogonal(d, seed + layer) @ dense
    compressed = (1 + eps) ** layers * dense
    g = gram(gaussian(seed, 16, d))
    assert activation_error(dense, compressed, g).pooled == pytest.approx(compounded, rel=1e-9, abs=1e-12)


def test_olmoe_sixteen_layers_exceed_the_loss_gate() -> None:
    assert (1 + 1 / 256) ** 16 - 1 > 0.05
    assert 16 * (1 / 256) > 0.05  # the hypothesis gate < L·ε the Lean proof uses
