"""Expert-output compressors on one loaded model: the heavy lifting of the generic expert-outputs rung
(rungs/test_expert_outputs.py).

An expert-output compressor (pytest_ladder.compressors.ExpertOutputCompressor) changes what each routed expert's
output y (rows, H) becomes before the routing weight and the sum into the residual stream (G10-like activation
quantization), calibrated once per layer on the dense model's calibration outputs, and declares what one token's k
routed outputs occupy. The study judges it the way G10 judges INT4 outputs:

- bytes: the declared per-token storage minus the dense outputs (k, H) at the model's dtype;
- output_error per (layer, task) cell: ‖y′ − y‖_F / ‖y‖_F pooled over the layer's experts on the dense model's
  held-out routed outputs, against the τ floor of random controls storing the same bytes;
- delta_nll at full depth: every MoE layer's expert outputs passed through the compressor in the running model
  (models.weights.transformed_expert_outputs), each task's held-out NLL against the dense per-expert pipeline's.

The data (calibration and held-out outputs, texts, the dense reference NLL) come from G10's OutputQuantStudy.
Built-in compressors: `IdentityOutputs` (y′ = y, the trivial pass), `RandomProjectionOutputs` (y Q Qᵀ with Q a
Haar-random rank-r subspace of the hidden dim whose r values per output take the method's bytes: the default τ
baseline; rank 1: the default declared-harmful control).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.compressors import IDENTITY, METHOD, named_compressor, own_or
from pytest_ladder.measure.storage import Artifact, DeclaredBytes, TensorStorage, declared_bytes

F64 = torch.float64



def dense_outputs_artifact(top_k: int, hidden: int, dtype: torch.dtype) -> Artifact:
    """One token's k routed expert outputs (k, H) at the model's dtype."""
    return Artifact((TensorStorage("token.expert_outputs", (top_k, hidden), dtype=dtype),))


# --------------------------------------------------------------------------------------- built-in compressors ---


class IdentityOutputs:
    """y′ = y, the outputs travelling dense: the trivial pass (every gate exactly 0)."""

    def calibrate(self, layer: int, outputs: Mapping[int, torch.Tensor]) -> None:
        return None

    def compress(self, layer: int, expert: int, outputs: torch.Tensor, state: Any) -> torch.Tensor:
        return outputs

    def storage(self, top_k: int, hidden: int, dtype: torch.dtype) -> Artifact:
        return dense_outputs_artifact(top_k, hidden, dtype)


@dataclass(frozen=True)
class RandomProjectionOutputs:
    """y′ = (y Q) Qᵀ with Q (H, r) spanning a Haar-random subspace, one per (seed, layer), r = max(1, floor(fraction ·
    H)): the r coordinates y Q of each output at the model's dtype take `fraction` of the dense bytes (Q comes from
    the seed). The default τ baseline; `rank_one=True` keeps one coordinate, the default declared-harmful control."""

    fraction: float
    seed: int
    rank_one: bool = False

    def rank(self, hidden: int) -> int:
        return 1 if self.rank_one else max(1, min(hidden, math.floor(self.fraction * hidden)))

    def calibrate(self, layer: int, outputs: Mapping[int, torch.Tensor]) -> None:
        return None

    def compress(self, layer: int, expert: int, outputs: torch.Tensor, state: Any) -> torch.Tensor:
        hidden = outputs.shape[-1]
        q = random_orthonormal_columns(hidden, self.rank(hidden), self.seed * 1_000_003 + layer,
                                       device=outputs.device)
        return ((outputs.to(F64) @ q) @ q.mT).to(outputs.dtype)

    def storage(self, top_k: int, hidden: int, dtype: torch.dtype) -> Artifact:
        return Artifact((TensorStorage("token.expert_outputs.yq", (top_k, self.rank(hidden)), dtype=dtype,
                                       kind="factor"),))


def output_bytes(compressor: Any, top_k: int, hidden: int, dtype: torch.dtype) -> DeclaredBytes:
    """Gate 1 of an output compressor: one token's declared bytes minus the dense outputs' (< 0 saves)."""
    return declared_bytes(compressor, dense_outputs_artifact(top_k, hidden, dtype), top_k, hidden, dtype)


def random_control(compressor: Any, seed: int, fraction: float) -> Any:
    """The τ baseline of `compressor` for `seed`: its own `random_control(seed)`, else a RandomProjectionOutputs
    taking the same `fraction` of the dense bytes."""
    return own_or(compressor, "random_control", RandomProjectionOutputs(fraction, seed), seed)


def harmful_control(compressor: Any) -> Any:
    """The declared-harmful control: the compressor's own `harmful_control()`, else a rank-one random projection."""
    return own_or(compressor, "harmful_control", RandomProjectionOutputs(0.0, 0, rank_one=True))


# ------------------------------------------------------------------------------------------------ the study ---


class OutputCompressorStudy:
    """Expert-output compressors on one loaded model, each quantity once. Compressors are named by keys: IDENTITY and
    whatever `compressors` maps ({METHOD: the method, HARMFUL: its harmful control, ("random", seed): a τ baseline}).
    Each is calibrated per MoE layer on the calibration outputs of `calibration_tasks` (every expert's rows of those
    tasks, concatenated in task order)."""

    def __init__(self, outputs: Any, *, calibration_tasks: Sequence[str],
                 compressors: Mapping[tuple, Any] | None = None) -> None:
        self.outputs = outputs  # probes.expert_outputs.OutputQuantStudy: captures, texts, reference NLLs
        self.calibration_tasks = tuple(calibration_tasks)
        self.compressors = dict(compressors or {})
        self._states: dict[tuple, Any] = {}
        self._errors: dict[tuple, float] = {}
        self._delta: dict[tuple, float] = {}

    @property
    def adapter(self) -> Any:
        return self.outputs.adapter

    def compressor(self, key: tuple) -> Any:
        return named_compressor(self.compressors, key, IdentityOutputs(), type(self).__name__)

    def _calibration(self, layer: int) -> dict[int, torch.Tensor]:
        """{expert: its calibration outputs (rows, H)} of `layer`, for the experts that saw calibration tokens (an
        expert routed no token is absent, as the ExpertOutputCompressor protocol says, not an empty (0, H) tensor)."""
        per_task = [self.outputs.calibration_outputs(task).get(layer, {}) for task in self.calibration_tasks]
        experts = sorted({e for found in per_task for e in found})
        rows = {e: torch.cat([found[e] for found in per_task if e in found]) for e in experts}
        return {e: y for e, y in rows.items() if y.shape[0] > 0}

    def state(self, layer: int, key: tuple) -> Any:
        if (layer, key) not in self._states:
            self._states[(layer, key)] = self.compressor(key).calibrate(layer, self._calibration(layer))
        return self._states[(layer, key)]

    def transform(self, key: tuple) -> Any:
        """The per-expert transform (models.weights.ExpertTransform) of compressor `key`."""
        compressor = self.compressor(key)

        def apply(layer: int, expert: int, output: torch.Tensor) -> torch.Tensor:
            found = compressor.compress(layer, expert, output, self.state(layer, key))
            if tuple(found.shape) != tuple(output.shape):
                raise ValueError(f"{type(compressor).__name__}.compress(layer={layer}, expert={expert}) returned "
                                 f"shape {tuple(found.shape)} for outputs {tuple(output.shape)}: return the same shape")
            return found.to(output.dtype)

        return apply

    def output_error(self, layer: int, task: str, key: tuple = METHOD) -> float:
        """‖y′ − y‖_F / ‖y‖_F pooled over `layer`'s experts on `task`'s held-out routed outputs (float64)."""
        if (layer, task, key) not in self._errors:
            transform = self.transform(key)
            removed = total = 0.0
            for expert, values in sorted(self.outputs.heldout_outputs(task).get(layer, {}).items()):
                dense = values.to(F64)
                removed += float((transform(layer, expert, values).to(F64) - dense).square().sum())
                total += float(dense.square().sum())
            if total == 0:
                raise ValueError(f"output_error: no held-out outputs routed at layer {layer} on {task}")
            self._errors[(layer, task, key)] = math.sqrt(removed / total)
        return self._errors[(layer, task, key)]

    def tau(self, layer: int, task: str, keys: Sequence[tuple]) -> dict:
        values = [self.output_error(layer, task, key) for key in keys]
        return {"tau": min(values), "values": values}

    def delta_nll(self, task: str, key: tuple = METHOD) -> float:
        """ΔNLL fraction of `task` with every MoE layer's expert outputs through compressor `key` (full depth), against
        the dense per-expert pipeline."""
        if (task, key) not in self._delta:
            from pytest_ladder.probes.expert_outputs import delta_nll_under

            # calibrate every layer first: the capture for calibration must not run inside the transformed model
            for layer in self.adapter.moe_layers():
                self.state(layer, key)
            self._delta[(task, key)] = delta_nll_under(self.adapter, self.transform(key),
                                                       lambda: self.outputs.score(task), self.outputs.reference(task))
        return self._delta[(task, key)]

    def trivial_pass(self, layer: int, task: str, top_k: int, hidden: int, dtype: torch.dtype) -> Any:
        """y′ = y through every gate: the cell's output error, ΔNLL of `task` at full depth, the byte delta."""
        from pytest_ladder.measure.traps import TrapOutcome

        refs = {"output_error": float(self.output_error(layer, task, IDENTITY)),
                "delta_nll": float(self.delta_nll(task, IDENTITY)),
                "delta_bytes": float(output_bytes(IdentityOutputs(), top_k, hidden, dtype).delta)}
        return TrapOutcome(name="trivial_pass", expected="output error, ΔNLL and byte delta all exactly 0",
                           observed=max(abs(v) for v in refs.values()), refs=refs,
                           fired_as_declared=all(v == 0.0 for v in refs.values()))
