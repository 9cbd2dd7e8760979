"""G10: residual-stream quantization — each routed expert's output is quantized before it is summed.

An MoE layer adds Σ_k g_k y_{e_k}(x) to the residual stream, y_e the output of expert e. The claim: y_e can travel
as INT4 codes with static scales and the model still works end to end. The seeds' variants, all measured here:

- v3 (the claim): per-channel INT4, symmetric, one float32 scale per (layer, expert, hidden channel), calibrated on
  the calibration tokens of one task (the seeds: 1000 wikitext tokens): s = max |y_e,c| / 7 over those tokens;
  ŷ = s · clamp(round(y / s), −7, 7). Values beyond the calibrated range saturate.
- v4: the K largest-|y| entries of every token's output kept aside at float16 (top-K outliers per token).
- v5: calibration task × evaluation task, a 3 × 3 matrix of ΔNLL.
- g10's traps: INT2 (same calibration, 2 bits) and random scales (every calibrated scale times a log-uniform factor
  in [0.1, 10]), both expected to be catastrophic to the NLL (which depends on how robust the model is).
- g10_control's traps, pipeline controls that hold for any model: the error of the outputs themselves grows as bits
  fall (INT2's levels {−m, 0, m} sit on INT4's {k m / 7}, so nearest-level rounding onto INT4 is never worse,
  `pooled_output_error`), and the calibration tokens' own outputs round within half a step (max-abs scales rounded
  up leave nothing to saturate, `max_step_error`).

y is quantized before its routing weight g (what an expert would ship); an expert that saw no calibration token
gets its layer's scales over all experts. Quantization is token-local (each row with fixed scales), so padding in a
batch changes nothing. The dense reference runs through the same per-expert loop with the identity transform
(models.weights.transformed_expert_outputs), so the uncompressed pipeline gives ΔNLL exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pytest_ladder.measure.loss import delta_nll_fraction
from pytest_ladder.measure.quant import (
    QuantParams,
    QuantSpec,
    calibrate,
    extent,
    fake_quant,
    merged,
    mergeable,
    params_of,
    random_scales,
)
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.storage import (
    Artifact,
    TensorStorage,
    global_delta_bytes,
    index_dtype,
)

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter
    from pytest_ladder.models.capture import Capture
    from pytest_ladder.models.weights import ExpertTransform


def output_spec(bits: int, *, outliers: int = 0, scale_dtype: torch.dtype = torch.float32) -> QuantSpec:
    """Per-channel symmetric quantization of expert outputs (tokens, H): one scale per hidden channel (axis −1)."""
    return QuantSpec(bits=bits, symmetric=True, granularity="channel", axis=-1, scale_dtype=scale_dtype,
                     outliers=outliers)


def identity_transform(layer: int, expert: int, output: torch.Tensor) -> torch.Tensor:
    """The uncompressed pipeline: every expert output passes unchanged (the dense reference and trivial pass)."""
    return output


@dataclass(frozen=True)
class OutputQuantizer:
    """Static scales per (layer, expert) for expert outputs; `transform` is a models.weights ExpertTransform.

    `fallback[layer]` serves experts that saw no calibration token; `calibration_tokens[layer][e]` counts the rows
    each expert's scales were fit on.
    """

    spec: QuantSpec
    params: dict[tuple[int, int], QuantParams]
    fallback: dict[int, QuantParams]
    calibration_tokens: dict[int, list[int]] = field(default_factory=dict)
    placed: dict[tuple[int, int, torch.device], QuantParams] = field(default_factory=dict, compare=False, repr=False)

    def params_for(self, layer: int, expert: int, device: torch.device | None = None) -> QuantParams:
        """The scales of (layer, expert), or its layer's fallback; with `device`, a copy kept there (the forward's
        per-expert loop then copies no scale to the GPU, and waits for none)."""
        if device is not None:
            key = (layer, expert, torch.device(device))
            if key not in self.placed:
                found = self.params_for(layer, expert)
                self.placed[key] = QuantParams(
                    scale=found.scale.to(device), zero=None if found.zero is None else found.zero.to(device))
            return self.placed[key]
        found = self.params.get((layer, expert))
        if found is not None:
            return found
        if layer not in self.fallback:
            raise KeyError(f"OutputQuantizer: layer {layer} was not calibrated (calibrated: {sorted(self.fallback)})")
        return self.fallback[layer]

    def round_trip(self, layer: int, expert: int, output: torch.Tensor) -> torch.Tensor:
        """ŷ = dequantize(quantize(y)) with the static scales, float64 (before the cast to the model's dtype)."""
        return fake_quant(output, self.spec, self.params_for(layer, expert, output.device))

    def transform(self, layer: int, expert: int, output: torch.Tensor) -> torch.Tensor:
        """ŷ = dequantize(quantize(y)) with the static scales, back in y's dtype."""
        return self.round_trip(layer, expert, output).to(output.dtype)

    def with_random_scales(self, seed: int, *, low: float = 0.1, high: float = 10.0) -> OutputQuantizer:
        """The random-scales trap: every scale (fallbacks too) times its own log-uniform factor in [low, high]."""
        generator = cpu_generator(seed)
        params = {key: random_scales(self.params[key], generator, low=low, high=high) for key in sorted(self.params)}
        fallback = {layer: random_scales(self.fallback[layer], generator, low=low, high=high)
                    for layer in sorted(self.fallback)}
        return OutputQuantizer(self.spec, params, fallback, self.calibration_tokens)

    def uncalibrated_experts(self) -> dict[int, list[int]]:
        """Per layer, the experts without calibration rows (they use the layer's fallback scales)."""
        return {layer: [e for e, n in enumerate(counts) if n == 0] for layer, counts in self.calibration_tokens.items()}


def calibrate_outputs(outputs: Mapping[int, Mapping[int, torch.Tensor]], n_experts: int, spec: QuantSpec
                      ) -> OutputQuantizer:
    """Scales from calibration outputs {layer: {expert: (rows, H)}}: per expert, and per layer for the fallback.

    With `spec.outliers` = K the top-K |y| of each row are taken out before the scales are fit (measure.quant).
    Per-channel scales of the layer's rows come from the experts' extents (the max of their maxima, exactly the
    rows' own), so the rows are read once; other specs fit the stacked rows.
    """
    params: dict[tuple[int, int], QuantParams] = {}
    fallback: dict[int, QuantParams] = {}
    counts: dict[int, list[int]] = {}
    for layer, per_expert in outputs.items():
        rows = {expert: values for expert, values in per_expert.items() if values.shape[0]}
        if not rows:
            raise ValueError(f"calibrate_outputs: no calibration rows reached any expert of layer {layer}; capture "
                             "more calibration tokens (params.calibration_tokens)")
        counts[layer] = [0] * n_experts
        if mergeable(spec, next(iter(rows.values())).dim()):
            extents = {expert: extent(values, spec) for expert, values in rows.items()}
            params.update({(layer, expert): params_of(found, spec) for expert, found in extents.items()})
            fallback[layer] = params_of(merged(list(extents.values())), spec)
        else:
            params.update({(layer, expert): calibrate(values, spec) for expert, values in rows.items()})
            fallback[layer] = calibrate(torch.cat(list(rows.values())), spec)
        for expert, values in rows.items():
            counts[layer][expert] = int(values.shape[0])
    return OutputQuantizer(spec, params, fallback, counts)


def captured_outputs(capture: Capture) -> dict[int, dict[int, torch.Tensor]]:
    """{layer: {expert: (rows, H)}} from a models.capture run with CaptureSpec(expert_outputs=True)."""
    found = {}
    for layer, result in capture.layers.items():
        if result.expert_outputs is None:
            raise ValueError("captured_outputs: the capture holds no expert outputs; capture with "
                             "CaptureSpec(expert_outputs=True)")
        found[layer] = {expert: values for expert, (_, values) in result.expert_outputs.items()}
    return found


def pooled_output_error(outputs: Mapping[int, Mapping[int, torch.Tensor]], quantizer: OutputQuantizer) -> float:
    """‖ŷ − y‖_F / ‖y‖_F over every (layer, expert)'s output rows {layer: {expert: (rows, H)}}, float64: the
    quantizer's error on the outputs themselves, no forward pass through the quantized model."""
    error = energy = 0.0
    for layer, per_expert in outputs.items():
        for expert, values in per_expert.items():
            if values.shape[0]:
                exact = values.to(torch.float64)
                error += float((quantizer.round_trip(layer, expert, values) - exact).square().sum())
                energy += float(exact.square().sum())
    if energy == 0:
        raise ValueError("pooled_output_error: every expert output is zero (or none was captured); nothing to "
                         "measure an error against")
    return math.sqrt(error / energy)


def max_step_error(outputs: Mapping[int, Mapping[int, torch.Tensor]], quantizer: OutputQuantizer) -> float:
    """max |ŷ − y| / s over every (layer, expert) with its own calibrated scales, in units of the element's step s.

    On the outputs the scales were calibrated on this is at most 1/2 for a working pipeline, whatever the model:
    s = max |y| / qmax rounded up leaves every calibration value inside the range (no saturation), and rounding to the
    nearest code is off by at most half a step. Experts on fallback scales are skipped (their rows were pooled).
    """
    worst = 0.0
    for layer, per_expert in outputs.items():
        for expert, values in per_expert.items():
            params = quantizer.params.get((layer, expert))
            if params is None or not values.shape[0]:
                continue
            steps = (quantizer.round_trip(layer, expert, values) - values.to(torch.float64)).abs() / params.scale
            worst = max(worst, float(steps.max()))
    return worst


def delta_nll_under(adapter: MoEAdapter, transform: ExpertTransform, score: Callable[[], Any], reference: Any
                    ) -> float:
    """ΔNLL fraction of the model whose expert outputs pass through `transform` against `reference`.

    `score()` returns an NLL result (.nats, .tokens) of the model as it is when called; `reference` is that score
    under `identity_transform` (the dense pipeline). Full depth: every MoE layer is transformed.
    """
    from pytest_ladder.models.weights import transformed_expert_outputs

    with transformed_expert_outputs(adapter, transform):
        result = score()
    return delta_nll_fraction(reference.nats, result.nats, tokens_dense=reference.tokens, tokens_comp=result.tokens)


def reference_nll(adapter: MoEAdapter, score: Callable[[], Any]) -> Any:
    """The dense reference: `score()` with every expert output through the per-expert loop, unchanged."""
    from pytest_ladder.models.weights import transformed_expert_outputs

    with transformed_expert_outputs(adapter, identity_transform):
        return score()


def outlier_counts(fractions: Sequence[float], hidden: int) -> list[int]:
    """v4's K values for a model of width `hidden`: ceil(f · hidden) for each fraction (0 stays 0), deduplicated,
    ascending (the seeds' K ∈ {0, 8, 16, 32, 64} on hidden 2048 are the fractions K / 2048)."""
    counts = {0 if f == 0 else max(1, math.ceil(f * hidden - 1e-9)) for f in fractions}
    if any(not 0 <= k <= hidden for k in counts):
        raise ValueError(f"outlier fractions {list(fractions)} must lie in [0, 1]")
    return sorted(counts)


def activation_bytes(top_k: int, hidden: int, bits: int, dtype: torch.dtype, *, outliers: int = 0,
                     outlier_dtype: torch.dtype = torch.float16) -> Artifact:
    """What one token's k routed expert outputs occupy on the wire: packed codes (k, H) plus, with K outliers per
    row, their values (k, K) at `outlier_dtype` and column indices; `bits` >= 16 means the dense rows at `dtype`."""
    if bits >= 16:
        return Artifact((TensorStorage("token.expert_outputs", (top_k, hidden), dtype=dtype),))
    parts = [TensorStorage("token.expert_outputs.codes", (top_k, hidden), bits=bits, kind="codes")]
    if outliers:
        parts += [
            TensorStorage("token.expert_outputs.outlier_values", (top_k, outliers), dtype=outlier_dtype,
                          kind="outlier_values"),
            TensorStorage("token.expert_outputs.outlier_indices", (top_k, outliers), dtype=index_dtype(hidden),
                          kind="outlier_indices"),
        ]
    return Artifact(tuple(parts))


def activation_delta_bytes(top_k: int, hidden: int, bits: int, dtype: torch.dtype, *, outliers: int = 0) -> int:
    """Bytes one token's k quantized expert outputs save on the wire against the dense ones at `dtype` (< 0 saves).

    The scales are static (stored once, see `scale_bytes`), so per token only codes (and outliers) travel:
    k · (⌈H · bits / 8⌉ + K · (2 + index bytes)) − k · H · itemsize.
    """
    dense = Artifact((TensorStorage("token.expert_outputs", (top_k, hidden), dtype=dtype),))
    return global_delta_bytes(activation_bytes(top_k, hidden, bits, dtype, outliers=outliers), dense)


def checkpoint_dtype(config: Mapping[str, Any]) -> torch.dtype:
    """The dtype a checkpoint's config.json declares (`dtype`, or `torch_dtype` before transformers 5); float32 when
    it declares none (transformers' default)."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, str(name).removeprefix("torch."))


def scale_bytes(n_layers: int, n_experts: int, hidden: int, scale_dtype: torch.dtype = torch.float32) -> int:
    """The static metadata G10 stores: one scale per (MoE layer, expert, channel) at `scale_dtype`."""
    return Artifact((TensorStorage("expert_output.scales", (n_layers, n_experts, hidden), dtype=scale_dtype,
                                   kind="scales"),)).nbytes


# ------------------------------------------------------------------------------------------------ the study ---


def heldout_texts(documents: Sequence[Any], tokenizer: Any, n_tokens: int) -> list[str]:
    """The first documents of a split (in split order) whose tokens reach `n_tokens`: the ΔNLL points, whole
    documents so the rolling NLL windows them exactly as lm-eval would (the count scored is recorded)."""
    texts, total = [], 0
    for document in documents:
        texts.append(document.text)
        total += len(tokenizer(document.text, add_special_tokens=False)["input_ids"])
        if total >= n_tokens:
            return texts
    raise ValueError(f"the split holds only {total} tokens, {n_tokens} were asked for; lower data_points or give a "
                     "larger corpus with --ladder-corpus TASK=PATH")


def activation_bytes_prefilter(weights: Any, bits: int) -> tuple[int, dict[str, int]]:
    """G10's prefilter on a checkpoint (models.checkpoint weights: config, top_k, layers, experts): the per-token wire
    delta of the k routed outputs at `bits` against the checkpoint's dtype, and what it is recorded with."""
    config, dtype = weights.config, checkpoint_dtype(weights.config)
    hidden, k = config["hidden_size"], weights.top_k
    return activation_delta_bytes(k, hidden, bits, dtype), {
        "dense_token_bytes": k * hidden * dtype.itemsize,
        "stored_scale_bytes": scale_bytes(weights.n_layers, weights.n_experts, hidden)}


class OutputQuantStudy:
    """G10 on one loaded model (models.loading.LoadedModel) and its corpora: dense reference NLLs, calibrations and
    candidate NLLs, each computed once. `n_points` held-out tokens per task score ΔNLL; `calibration_tokens`
    calibration tokens of a task fit its scales."""

    @classmethod
    def from_params(cls, loaded: Any, corpora: Mapping[str, Any], data_points: int, params: Mapping[str, Any]
                    ) -> OutputQuantStudy:
        """The study a G10 prereg describes: its data_points and params (calibration_tokens, scale_dtype)."""
        return cls(loaded, corpora, n_points=data_points, calibration_tokens=params["calibration_tokens"],
                   scale_dtype=getattr(torch, params["scale_dtype"]))

    def __init__(self, loaded: Any, corpora: Mapping[str, Any], *, n_points: int, calibration_tokens: int,
                 scale_dtype: torch.dtype = torch.float32, batch_size: int = 8) -> None:
        self.loaded, self.corpora = loaded, corpora
        self.n_points, self.calibration_tokens = n_points, calibration_tokens
        self.scale_dtype, self.batch_size = scale_dtype, batch_size
        self._texts: dict[str, list[str]] = {}
        self._reference: dict[str, Any] = {}
        self._outputs: dict[tuple[str, str], dict[int, dict[int, torch.Tensor]]] = {}
        self._quantizers: dict[tuple, OutputQuantizer] = {}
        self._delta: dict[tuple, float] = {}

    @property
    def adapter(self) -> MoEAdapter:
        return self.loaded.adapter

    def texts(self, task: str) -> list[str]:
        if task not in self._texts:
            self._texts[task] = heldout_texts(self.corpora[task].heldout, self.loaded.tokenizer, self.n_points)
        return self._texts[task]

    def score(self, task: str) -> Any:
        """Rolling NLL of the task's held-out texts with the model as it is now."""
        from pytest_ladder.models.nll import rolling_nll

        return rolling_nll(self.loaded.model, self.loaded.tokenizer, self.texts(task), batch_size=self.batch_size,
                           desc=f"nll {task}")

    def reference(self, task: str) -> Any:
        """The dense reference: the per-expert pipeline with the identity transform."""
        if task not in self._reference:
            self._reference[task] = reference_nll(self.adapter, lambda: self.score(task))
        return self._reference[task]

    def _captured(self, task: str, split: str, n_tokens: int) -> dict[int, dict[int, torch.Tensor]]:
        """Every MoE layer's routed expert outputs (dense model) on the first `n_tokens` tokens of a split."""
        if (task, split) not in self._outputs:
            from pytest_ladder.models.capture import CaptureSpec, capture
            from pytest_ladder.models.corpora import token_sequences

            loaded = self.loaded
            sequences = token_sequences(getattr(self.corpora[task], split), loaded.tokenizer, n_tokens,
                                        loaded.max_length, loaded.prefix_token_id)
            pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
            captured = capture(loaded.model, self.adapter, sequences,
                               CaptureSpec(gram=False, topk=False, expert_outputs=True), batch_size=self.batch_size,
                               pad_token_id=pad,
                               desc=f"calibrate {task}" if split == "calibration" else f"{split} outputs {task}")
            self._outputs[(task, split)] = captured_outputs(captured)
        return self._outputs[(task, split)]

    def calibration_outputs(self, task: str) -> dict[int, dict[int, torch.Tensor]]:
        """Every MoE layer's routed expert outputs on `calibration_tokens` calibration tokens of `task`."""
        return self._captured(task, "calibration", self.calibration_tokens)

    def heldout_outputs(self, task: str) -> dict[int, dict[int, torch.Tensor]]:
        """Every MoE layer's routed expert outputs (dense model) on `n_points` held-out tokens of `task`."""
        return self._captured(task, "heldout", self.n_points)

    def quantizer(self, calibration_task: str, bits: int, outliers: int = 0) -> OutputQuantizer:
        key = (calibration_task, bits, outliers)
        if key not in self._quantizers:
            spec = output_spec(bits, outliers=outliers, scale_dtype=self.scale_dtype)
            self._quantizers[key] = calibrate_outputs(self.calibration_outputs(calibration_task),
                                                      self.adapter.n_experts, spec)
        return self._quantizers[key]

    def delta_nll(self, task: str, quantizer: OutputQuantizer | None, key: tuple) -> float:
        """ΔNLL of `task` with expert outputs through `quantizer` (None: the identity, the trivial pass), cached
        under `key` (which names the quantizer: its calibration task, bits, outliers, or a trap and seed)."""
        if (task, *key) not in self._delta:
            transform = identity_transform if quantizer is None else quantizer.transform
            self._delta[(task, *key)] = delta_nll_under(self.adapter, transform, lambda: self.score(task),
                                                        self.reference(task))
        return self._delta[(task, *key)]

    def candidate(self, task: str, calibration_task: str, bits: int, outliers: int = 0) -> float:
        """ΔNLL of `task` with scales calibrated on `calibration_task`."""
        return self.delta_nll(task, self.quantizer(calibration_task, bits, outliers),
                              ("calibrated", calibration_task, bits, outliers))

    def trivial_pass(self, task: str) -> dict[str, float]:
        """The uncompressed pipeline: ΔNLL of `task` through the per-expert loop with the identity, and the wire-byte
        delta of dense outputs against themselves; both exactly 0 for a working pipeline."""
        config = self.loaded.model.config
        wire = activation_delta_bytes(self.adapter.top_k, config.hidden_size, 16, self.loaded.model.dtype)
        return {"delta_nll": self.delta_nll(task, None, ("identity",)), "delta_bytes": float(wire)}

    def loss_cell(self, task: str, calibration_task: str, bits: int, calibration_tasks: Sequence[str],
                  outlier_fractions: Sequence[float] = ()) -> tuple[float, dict[str, list], dict[str, Any]]:
        """G10's delta_nll gate on one task: the claim's ΔNLL (scales calibrated on `calibration_task`), v5's row
        (calibrated on each of `calibration_tasks`) and, given `outlier_fractions`, v4's top-K series; returns
        (value, series, what the gate records with them)."""
        series: dict[str, list] = {"calibration_matrix": [self.candidate(task, c, bits) for c in calibration_tasks]}
        if outlier_fractions:
            ks = outlier_counts(outlier_fractions, self.loaded.model.config.hidden_size)
            series["outliers_k"] = ks
            series["delta_nll_vs_outliers"] = [self.candidate(task, calibration_task, bits, k) for k in ks]
        reference = self.reference(task)
        refs = {"calibration_tasks": list(calibration_tasks), "reference_nats_per_token": reference.nats_per_token,
                "tokens": reference.tokens,
                "uncalibrated_experts": self.quantizer(calibration_task, bits).uncalibrated_experts()}
        return self.candidate(task, calibration_task, bits), series, refs

    def output_error(self, task: str, calibration_task: str, bits: int) -> float:
        """The quantizer's pooled relative error on the routed outputs of `task`'s held-out tokens (dense model)."""
        return pooled_output_error(self.heldout_outputs(task), self.quantizer(calibration_task, bits))

    def calibration_step_error(self, calibration_task: str, bits: int) -> float:
        """max |ŷ − y| / s on the outputs the scales were calibrated on (≤ 1/2 for a working pipeline)."""
        return max_step_error(self.calibration_outputs(calibration_task), self.quantizer(calibration_task, bits))

    def random_scales(self, task: str, calibration_task: str, bits: int, seed: int, *, low: float = 0.1,
                      high: float = 10.0) -> float:
        """ΔNLL of `task` with the calibrated scales each multiplied by a random log-uniform factor in [low, high]."""
        quantizer = self.quantizer(calibration_task, bits).with_random_scales(seed, low=low, high=high)
        return self.delta_nll(task, quantizer, ("random_scales", calibration_task, bits, seed, low, high))
