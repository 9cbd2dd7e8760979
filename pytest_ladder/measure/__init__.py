"""The measurement library: gate metrics, τ floor, traps, transforms and analytical prefilters (protocol §3-§6, §9).

Plain functions on tensors (weights, Gram matrices, top-k indices, NLL sums) returning numbers and dataclasses; it
knows nothing of pytest or model loading. One module per role:

    storage     artifact byte accounting, global_delta_bytes (gate 1)
    errors      activation-weighted error via tr(Δ G Δᵀ), worst-task error (gates 2, 4), Frobenius error
    routing     route flips (gate 3), top-k margins, low-rank router, effective weights, co-activation
    loss        ΔNLL fraction per task (gate 5)
    tau         τ floor from seeded random baselines, beats_tau
    traps       random basis, task swap, off-projection, trivial pass
    spectra     singular values (SVD or Gram eigh), effective rank, energy at rank r
    lowrank     SVD and activation-aware truncation, input bases and projections, random projections
    orthogonal  Haar-random orthogonal matrices
    hadamard    fast Walsh–Hadamard transform, SRHT
    gauge       learned gauge with bounded condition number, quantization round trips
    tucker      HOSVD / Tucker of stacked tensors
    quant       INT8/4/2/1 quantizers with packed storage accounting and outliers
    prefilters  closed-form byte budgets, spectrum floor, random floor
    rng         seeds -> CPU generators (same random matrices on every device)

Importing this package imports torch and these modules only.
"""

from pytest_ladder.measure.errors import (
    ActivationError,
    WorstTask,
    activation_error,
    activation_sq_error,
    frobenius_relative_error,
    gram,
    worst_task_error,
)
from pytest_ladder.measure.gauge import (
    Gauge,
    bound_condition,
    condition_number,
    learn_gauge,
    round_trip,
    round_trip_error,
)
from pytest_ladder.measure.hadamard import SRHT, fwht, hadamard_transform, power_of_two_blocks, rademacher, srht
from pytest_ladder.measure.loss import delta_nll_by_task, delta_nll_fraction
from pytest_ladder.measure.lowrank import (
    LowRank,
    activation_lowrank,
    input_basis,
    project_inputs,
    project_off,
    random_projection,
    svd_lowrank,
    truncate,
)
from pytest_ladder.measure.orthogonal import random_orthogonal, random_orthonormal_columns
from pytest_ladder.measure.prefilters import (
    RandomFloor,
    activation_spectrum_floor,
    break_even_rank,
    lowrank_delta_bytes,
    quantized_delta_bytes,
    random_floor,
    random_residual_energy,
    spectrum_floor,
)
from pytest_ladder.measure.quant import (
    Quantized,
    QuantParams,
    QuantSpec,
    calibrate,
    fake_quant,
    quantize,
    random_scales,
)
from pytest_ladder.measure.routing import (
    Coactivation,
    coactivation,
    effective_weight_spectra,
    effective_weights,
    lowrank_router,
    margin_certifies_no_flip,
    route_flip_mask,
    route_flip_rate,
    route_jaccard,
    router_flip_rates,
    topk_indices,
    topk_margin,
)
from pytest_ladder.measure.spectra import (
    directions_after_deflation,
    effective_rank,
    energy_at_rank,
    rank_for_energy,
    residual_energy,
    singular_values,
    singular_values_from_gram,
    whitened_singular_values,
)
from pytest_ladder.measure.storage import (
    Artifact,
    TensorStorage,
    codebook_artifact,
    combine,
    dense_artifact,
    global_delta_bytes,
    lowrank_artifact,
    quantized_artifact,
    tensors_artifact,
    tucker_artifact,
)
from pytest_ladder.measure.tau import TauFloor, beats_tau, tau_floor
from pytest_ladder.measure.traps import (
    TrapOutcome,
    off_projection_trap,
    random_basis_trap,
    task_swap_trap,
    trivial_pass_trap,
)
from pytest_ladder.measure.tucker import (
    Tucker,
    hosvd,
    mode_effective_ranks,
    mode_spectra,
    multilinear_rank,
    tucker_residual,
)

__all__ = [
    "SRHT",
    "ActivationError",
    "Artifact",
    "Coactivation",
    "Gauge",
    "LowRank",
    "QuantParams",
    "QuantSpec",
    "Quantized",
    "RandomFloor",
    "TauFloor",
    "TensorStorage",
    "TrapOutcome",
    "Tucker",
    "WorstTask",
    "activation_error",
    "activation_lowrank",
    "activation_spectrum_floor",
    "activation_sq_error",
    "beats_tau",
    "bound_condition",
    "break_even_rank",
    "calibrate",
    "coactivation",
    "codebook_artifact",
    "combine",
    "condition_number",
    "delta_nll_by_task",
    "delta_nll_fraction",
    "dense_artifact",
    "directions_after_deflation",
    "effective_rank",
    "effective_weight_spectra",
    "effective_weights",
    "energy_at_rank",
    "fake_quant",
    "frobenius_relative_error",
    "fwht",
    "global_delta_bytes",
    "gram",
    "hadamard_transform",
    "hosvd",
    "input_basis",
    "learn_gauge",
    "lowrank_artifact",
    "lowrank_delta_bytes",
    "lowrank_router",
    "margin_certifies_no_flip",
    "mode_effective_ranks",
    "mode_spectra",
    "multilinear_rank",
    "off_projection_trap",
    "power_of_two_blocks",
    "project_inputs",
    "project_off",
    "quantize",
    "quantized_artifact",
    "quantized_delta_bytes",
    "rademacher",
    "random_basis_trap",
    "random_floor",
    "random_orthogonal",
    "random_orthonormal_columns",
    "random_projection",
    "random_residual_energy",
    "random_scales",
    "rank_for_energy",
    "residual_energy",
    "round_trip",
    "round_trip_error",
    "route_flip_mask",
    "route_flip_rate",
    "route_jaccard",
    "router_flip_rates",
    "singular_values",
    "singular_values_from_gram",
    "spectrum_floor",
    "srht",
    "svd_lowrank",
    "task_swap_trap",
    "tau_floor",
    "tensors_artifact",
    "topk_indices",
    "topk_margin",
    "trivial_pass_trap",
    "truncate",
    "tucker_artifact",
    "tucker_residual",
    "whitened_singular_values",
    "worst_task_error",
]
