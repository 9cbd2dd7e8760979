"""Activation-weighted errors from Gram matrices (gates 2 and 4) and the plain Frobenius error.

Convention: X is (in, tokens) as in the protocol, so a linear map acts as W X and the Gram matrix is G = X Xᵀ
(in, in). Then ‖(W − W')X‖²_F = tr(Δ G Δᵀ) with Δ = W − W', so per-expert Gram matrices of the routed tokens suffice.
Everything is computed in float64 on the input's device. Shapes batch over leading dims: W (..., out, in) with
G (..., in, in), e.g. all experts of a layer as (E, out, in) and (E, in, in).

Aggregation across experts is token-weighted: pooled error = sqrt(Σ_e tr(Δ_e G_e Δ_eᵀ) / Σ_e tr(W_e G_e W_eᵀ)),
i.e. the relative error of all routed (token, expert) outputs stacked into one matrix, so an expert that sees many
tokens weighs more than one that sees few (an expert with no routed tokens contributes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pytest_ladder.measure.workspace import Workspace, to_f64

F64 = torch.float64


def gram(x: torch.Tensor) -> torch.Tensor:
    """G = Σ_tokens x xᵀ in float64 for token-major inputs x (..., tokens, in): the protocol's X Xᵀ with X = xᵀ."""
    x = x.to(F64)
    return x.mT @ x


def activation_sq_error(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """tr(Δ G Δᵀ) = ‖Δ X‖²_F in float64, batched over leading dims: Δ (..., out, in), G (..., in, in) -> (...)."""
    if delta.shape[-1] != gram.shape[-1] or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(
            f"activation_sq_error: delta {tuple(delta.shape)} and gram {tuple(gram.shape)} do not match: need "
            "delta (..., out, in) and gram (..., in, in) with the same `in`"
        )
    delta = delta.to(F64)
    return ((delta @ to_f64(gram, delta.device)) * delta).sum(dim=(-2, -1))


@dataclass(frozen=True)
class ActivationError:
    """Squared activation error and squared reference norm per batch entry (e.g. per expert), float64."""

    sq_error: torch.Tensor  # tr(Δ G Δᵀ)
    sq_norm: torch.Tensor  # tr(W G Wᵀ)

    @property
    def relative(self) -> torch.Tensor:
        """Per-entry ‖ΔX‖_F / ‖WX‖_F (nan where the entry saw no tokens, i.e. ‖WX‖ = 0)."""
        ratio = self.sq_error.clamp_min(0) / self.sq_norm
        return torch.where(self.sq_norm > 0, ratio, torch.full_like(ratio, float("nan"))).sqrt()

    @property
    def pooled(self) -> float:
        """Token-weighted relative error over all entries: sqrt(Σ tr(ΔGΔᵀ) / Σ tr(WGWᵀ))."""
        total = float(self.sq_norm.sum())
        if not total > 0:
            raise ValueError(
                "activation error: the reference ‖W X‖ is zero (no routed tokens, or W = 0): the Gram matrices "
                "hold no tokens; capture more calibration/held-out tokens for this cell"
            )
        return (max(float(self.sq_error.sum()), 0.0) / total) ** 0.5


def activation_error(w: torch.Tensor, w_prime: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                     gram: torch.Tensor, *, workspace: Workspace | None = None) -> ActivationError:
    """Gate 2: ‖(W − W')X‖_F / ‖W X‖_F from W, W' (..., out, in) and G = X Xᵀ (..., in, in), via tr(Δ G Δᵀ).

    `w_prime` may be a function of a chunk of W (e.g. W ↦ W P); with a bounded `workspace` the leading (expert)
    dimension is processed in chunks on the workspace's device, so W and G may wait on the CPU."""
    if workspace is None or w.dim() < 3:
        w64 = w.to(F64)
        w_prime = w_prime(w) if callable(w_prime) else w_prime
        if w.shape != w_prime.shape:
            raise ValueError(f"activation_error: W {tuple(w.shape)} and W' {tuple(w_prime.shape)} differ in shape")
        return ActivationError(
            sq_error=activation_sq_error(w64 - to_f64(w_prime, w.device), gram),
            sq_norm=activation_sq_error(w64, gram.to(w.device)),
        )
    if not callable(w_prime) and w.shape != w_prime.shape:
        raise ValueError(f"activation_error: W {tuple(w.shape)} and W' {tuple(w_prime.shape)} differ in shape")
    out, inner = w.shape[-2], w.shape[-1]
    per_item = 8 * (4 * out * inner + 2 * inner * inner + out * inner)  # W, W', Δ, ΔG (float64) and G per expert
    parts = []
    for span in workspace.spans(w.shape[0], per_item * math.prod(w.shape[1:-2])):
        chunk = w[span].to(workspace.device)
        chunk_prime = w_prime(chunk) if callable(w_prime) else w_prime[span]
        parts.append(activation_error(chunk, chunk_prime.to(workspace.device), gram[span].to(workspace.device)))
    return ActivationError(sq_error=torch.cat([p.sq_error.cpu() for p in parts]),
                           sq_norm=torch.cat([p.sq_norm.cpu() for p in parts]))


def frobenius_relative_error(w: torch.Tensor, w_prime: torch.Tensor) -> torch.Tensor:
    """‖W − W'‖_F / ‖W‖_F per matrix (batched over leading dims), float64: the data-free round-trip error."""
    if w.shape != w_prime.shape:
        raise ValueError(f"frobenius_relative_error: W {tuple(w.shape)} and W' {tuple(w_prime.shape)} differ")
    w64 = w.to(F64)
    delta = w64 - to_f64(w_prime, w.device)
    return torch.linalg.matrix_norm(delta) / torch.linalg.matrix_norm(w64)


@dataclass(frozen=True)
class WorstTask:
    """Gate 4: the task with the largest pooled activation error, and every task's error."""

    task: str
    value: float
    per_task: dict[str, float]


def worst_task_error(
    w: torch.Tensor | Mapping[str, torch.Tensor],
    w_prime: torch.Tensor | Callable | Mapping[str, torch.Tensor | Callable],
    grams: Mapping[str, torch.Tensor],
    *,
    workspace: Workspace | None = None,
) -> WorstTask:
    """max_t ‖(W_t − W'_t)X_t‖_F / ‖W_t X_t‖_F over the tasks of `grams` (W, W' shared or given per task)."""
    if not grams:
        raise ValueError("worst_task_error: no task Gram matrices given")
    per_task: dict[str, float] = {}
    for task, task_gram in grams.items():
        w_t = _for_task(w, task, "W")
        w_prime_t = _for_task(w_prime, task, "W'")
        per_task[task] = activation_error(w_t, w_prime_t, task_gram, workspace=workspace).pooled
    task = max(per_task, key=lambda t: per_task[t])
    return WorstTask(task=task, value=per_task[task], per_task=per_task)


def _for_task(value: torch.Tensor | Callable | Mapping[str, torch.Tensor], task: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor) or callable(value):
        return value
    if task not in value:
        raise KeyError(f"worst_task_error: no {what} for task {task!r}; tasks given: {sorted(value)}")
    return value[task]
