"""G10-scan and G10.5: can a decaying scan (plus a few attended keys) replace a layer's attention?

Attention at layer ℓ maps its input x_t (after the layer norm, H wide) to its output o_t (after o_proj, what is
added to the residual). Both rungs fit on the calibration split and are judged on held-out points by the relative
error ‖O − Ô‖_F / ‖O‖_F (pooled over points; measure.errors.frobenius_relative_error).

- G10-scan: the scan is the linear, time-invariant part of RWKV time-mixing: per decay λ in a fixed set, the
  contractive accumulation e_λ,t = λ e_λ,t−1 + (1 − λ) x_t (e_λ,−1 = 0, |λ| < 1), and ô_t = W φ_t with the features
  φ_t = [x_t, e_λ1,t, ..., e_λm,t] (H·(m+1) wide). W is the ridge least-squares fit on calibration points:
  W = (ΦᵀΦ + α I)⁻¹ ΦᵀO with α = ridge · tr(ΦᵀΦ) / d — from sufficient statistics, float64.
- G10.5: the smooth + sparse split: each query keeps its top-k keys per head with their exact attention weights
  (the sparse part, o_sparse = W_o Σ_h Σ_{s ∈ topk} A_h,ts v_h,s + b_o) and the scan fits what is left,
  o − o_sparse. Routing stability: the Jaccard index between each query's content-addressed top-k keys and the keys
  a static rule picks (per head, the calibration's mean attention on the first (sink) token and on each relative
  offset t − s); queries that see at most k keys pick them all under any rule and are left out of the mean.
  The τ baselines keep k random visible keys per query and head (same budget) and fit the scan the same way.

Capture: one forward per token sequence (no padding) with eager attention (so the attention weights exist), hooks
on the layers' self-attention (input, output, weights) and value projection; o_proj's weight is read meta-safe.
Each sequence is reduced on the fly to O(T·H) numbers, so long contexts never keep (heads, T, T) matrices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.routing import route_jaccard

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter

F64 = torch.float64
RECONSTRUCTION_TOLERANCE = 1e-3  # o_proj(A v) must reproduce the captured output to this relative error


# ----------------------------------------------------------------------------------------------- the scan ----


def scan_features(x: torch.Tensor, decays: Sequence[float]) -> torch.Tensor:
    """φ = [x, e_λ1, ..., e_λm] (T, H·(m+1)) for one sequence x (T, H), e_λ,t = Σ_{s≤t} (1 − λ) λ^{t−s} x_s, float64."""
    x = x.to(F64)
    t = torch.arange(x.shape[0], device=x.device)
    lag = (t[:, None] - t[None, :]).to(F64)
    causal = lag >= 0
    parts = [x]
    for decay in decays:
        if not 0 <= decay < 1:
            raise ValueError(f"scan decays must lie in [0, 1) (contractive), got {decay}")
        kernel = torch.where(causal, (1 - decay) * torch.tensor(decay, dtype=F64).pow(lag.clamp_min(0)),
                             torch.zeros((), dtype=F64))
        parts.append(kernel @ x)
    return torch.cat(parts, dim=-1)


@dataclass
class Normal:
    """Sufficient statistics of least squares Ô = Φ W over points: ΦᵀΦ (d, d), ΦᵀY (d, H) per target, Σ‖Y‖²."""

    ftf: torch.Tensor | None = None
    fty: dict[str, torch.Tensor] = field(default_factory=dict)
    yy: dict[str, float] = field(default_factory=dict)
    n_points: int = 0

    def add(self, phi: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        phi = phi.to(F64)
        self.ftf = phi.mT @ phi if self.ftf is None else self.ftf + phi.mT @ phi
        for name, y in targets.items():
            y = y.to(device=phi.device, dtype=F64)
            self.fty[name] = phi.mT @ y if name not in self.fty else self.fty[name] + phi.mT @ y
            self.yy[name] = self.yy.get(name, 0.0) + float(y.square().sum())
        self.n_points += phi.shape[0]


def fit_scan(normal: Normal, target: str, ridge: float, *, width: int | None = None) -> torch.Tensor:
    """W = (ΦᵀΦ + α I)⁻¹ ΦᵀY with α = ridge · tr(ΦᵀΦ) / d (ridge 0: plain least squares via lstsq), float64.

    `width` keeps the first `width` features only (e.g. H: the memoryless map x_t -> o_t, no accumulation)."""
    if normal.ftf is None:
        raise ValueError("fit_scan: no calibration points were accumulated")
    d = normal.ftf.shape[0] if width is None else width
    a, b = normal.ftf[:d, :d], normal.fty[target][:d]
    if ridge == 0:
        return torch.linalg.lstsq(a, b).solution
    alpha = ridge * torch.diagonal(a).sum() / d
    return torch.linalg.solve(a + alpha * torch.eye(d, dtype=F64, device=a.device), b)


def fit_error(normal: Normal, target: str, w: torch.Tensor) -> float:
    """‖Φ W − Y‖_F / ‖Y‖_F on the accumulated (calibration) points, from the sufficient statistics."""
    d = w.shape[0]
    a, b = normal.ftf[:d, :d], normal.fty[target][:d]
    sq = float((w * (a @ w)).sum() - 2 * (w * b).sum()) + normal.yy[target]
    return (max(sq, 0.0) / normal.yy[target]) ** 0.5


def random_readout(normal: Normal, target: str, seed: int) -> torch.Tensor:
    """The random-basis trap's readout: Haar-random orthonormal columns Q (d, H) scaled by the least-squares scalar
    c = tr(QᵀΦᵀY) / tr(QᵀΦᵀΦQ) on calibration — a scan of the same size whose readout was not fit."""
    d, h = normal.fty[target].shape
    q = random_orthonormal_columns(d, h, seed, device=normal.ftf.device)
    c = (q * normal.fty[target]).sum() / (q * (normal.ftf @ q)).sum()
    return c * q


# --------------------------------------------------------------------------------------------- capture -----


@dataclass
class SequenceCapture:
    """One layer on one sequence: attention input x (T, H), output o (T, H), and with `sparse` the reduced
    sparse quantities (oracle top-k output, random-key outputs per seed, top-k indices per head)."""

    x: torch.Tensor
    o: torch.Tensor
    o_sparse: torch.Tensor | None = None
    o_random: list[torch.Tensor] = field(default_factory=list)
    topk: torch.Tensor | None = None  # (heads, T, k) oracle key indices
    sparse_mass: torch.Tensor | None = None  # (heads, T): Σ_{s ∈ topk} A_ts
    offset_mass: torch.Tensor | None = None  # (heads, T): attention per relative offset d = t − s (s ≥ 1), summed
    offset_count: torch.Tensor | None = None  # (T,): number of queries with offset d visible (s ≥ 1)
    sink_mass: torch.Tensor | None = None  # (heads,): Σ_t A_t0


@dataclass(frozen=True)
class SparseSpec:
    """The sparse part: k keys per query and head; `random_seeds` draw the τ baselines' random key sets."""

    top_k: int
    random_seeds: tuple[int, ...] = ()


def _attention_shape(module: Any, config: Any) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(module, "head_dim", None) or config.hidden_size // heads)
    return heads, kv_heads, head_dim


def _per_head(v: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """(T, kv·hd) values -> (heads, T, hd), each KV head repeated for its query heads (repeat_kv)."""
    v = v.reshape(v.shape[0], kv_heads, head_dim).transpose(0, 1)
    return v.repeat_interleave(heads // kv_heads, dim=0)


def _mixed(weights: torch.Tensor, v: torch.Tensor, o_weight: torch.Tensor, o_bias: torch.Tensor | None
           ) -> torch.Tensor:
    """o_proj(concat_h A_h v_h) for weights A (heads, T, T), v (heads, T, hd): (T, H) in float64."""
    mixed = (weights @ v).transpose(0, 1).reshape(weights.shape[1], -1)
    return F.linear(mixed, o_weight, o_bias)


def _keep_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (heads, T, T), indices (heads, T, k)) of the k highest causal scores per query (all visible keys, and
    some masked ones among the indices, when t + 1 ≤ k)."""
    t = scores.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
    masked = scores.masked_fill(~causal, float("-inf"))
    index = masked.topk(min(k, t), dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
    return keep & causal, index


class _Reducer:
    """Hook state: turns each (layer, sequence) forward into a SequenceCapture."""

    def __init__(self, model: Any, adapter: MoEAdapter, layers: Sequence[int], sparse: SparseSpec | None) -> None:
        from pytest_ladder.models.weights import read_parameter

        self.model, self.adapter, self.sparse = model, adapter, sparse
        self.inputs: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.captured: dict[int, list[SequenceCapture]] = {layer: [] for layer in layers}
        self.o_proj: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for layer in layers if sparse is not None else ():
            attention = adapter.decoder_layers()[layer].self_attn
            name = adapter.name_of(attention.o_proj)
            bias = read_parameter(model, f"{name}.bias") if attention.o_proj.bias is not None else None
            self.o_proj[layer] = (read_parameter(model, f"{name}.weight").to(F64),
                                  None if bias is None else bias.to(F64))

    def attention_pre(self, layer: int, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.inputs[layer] = hidden[0].detach()

    def value_post(self, layer: int, output: torch.Tensor) -> None:
        self.values[layer] = output[0].detach().clone()

    def attention_post(self, layer: int, module: Any, output: Any) -> None:
        o, weights = output[0][0].detach(), output[1]
        x = self.inputs.pop(layer)
        record = SequenceCapture(x=x.to("cpu", F64), o=o.to("cpu", F64))
        if self.sparse is not None:
            if weights is None:
                raise RuntimeError(f"layer {layer}: the attention returned no weights; G10.5 needs eager attention "
                                   "(attention_capture switches it on; a custom attention module must return them)")
            self._reduce_sparse(layer, module, record, weights[0].detach().to(F64), self.values.pop(layer).to(F64))
        self.captured[layer].append(record)

    def _reduce_sparse(self, layer: int, module: Any, record: SequenceCapture, a: torch.Tensor, v: torch.Tensor
                       ) -> None:
        heads, kv_heads, head_dim = _attention_shape(module, self.model.config)
        v = _per_head(v, heads, kv_heads, head_dim)
        o_weight, o_bias = (t if t is None else t.to(a.device) for t in self.o_proj[layer])
        full = _mixed(a, v, o_weight, o_bias).cpu()
        error = float(frobenius_relative_error(record.o, full))
        if not error <= RECONSTRUCTION_TOLERANCE:
            raise RuntimeError(
                f"layer {layer}: o_proj(A v) reproduces the attention output only to relative error {error:.3g} "
                f"(> {RECONSTRUCTION_TOLERANCE}); this attention is not softmax(QKᵀ)V followed by o_proj (clipped "
                "values, sinks, a bias on V?) — G10.5's sparse part cannot be computed for this architecture")
        k = self.sparse.top_k
        keep, index = _keep_topk(a, k)
        record.topk = index.cpu()
        record.o_sparse = _mixed(a * keep, v, o_weight, o_bias).cpu()
        record.sparse_mass = (a * keep).sum(-1).cpu()
        t = a.shape[-1]
        positions = torch.arange(t, device=a.device)
        lag = positions[:, None] - positions[None, :]
        offsets = torch.zeros(heads, t, dtype=F64, device=a.device)
        visible = (lag >= 0) & (positions[None, :] >= 1)
        offsets.index_add_(1, lag[visible], a[:, visible])
        record.offset_mass = offsets.cpu()
        record.offset_count = torch.bincount(lag[visible], minlength=t).to(F64).cpu()
        record.sink_mass = a[:, :, 0].sum(-1).cpu()
        for seed in self.sparse.random_seeds:
            scores = torch.rand(a.shape, generator=cpu_generator(seed), dtype=F64).to(a.device)
            random_keep, _ = _keep_topk(scores, k)
            record.o_random.append(_mixed(a * random_keep, v, o_weight, o_bias).cpu())


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Temporarily run attention eagerly (so attention weights are computed and returned)."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_capture(model: Any, adapter: MoEAdapter, sequences: Sequence[Sequence[int]], layers: Sequence[int],
                      *, sparse: SparseSpec | None = None, desc: str = "attention capture",
                      progress: bool | None = None) -> dict[int, list[SequenceCapture]]:
    """Run each token sequence alone (no padding) and keep, per layer, its attention input and output (and with
    `sparse` the top-k / random-key sparse outputs and the offset statistics of the static rule)."""
    from tqdm.auto import tqdm

    from pytest_ladder.models.capture import model_device

    reducer = _Reducer(model, adapter, layers, sparse)
    handles = []
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            attention = adapter.decoder_layers()[layer].self_attn
            handles.append(attention.register_forward_pre_hook(
                lambda module, args, kwargs, layer=layer: reducer.attention_pre(layer, args, kwargs),
                with_kwargs=True))
            handles.append(attention.register_forward_hook(
                lambda module, args, output, layer=layer: reducer.attention_post(layer, module, output)))
            if sparse is not None:
                handles.append(attention.v_proj.register_forward_hook(
                    lambda module, args, output, layer=layer: reducer.value_post(layer, output)))
        context = eager_attention(model) if sparse is not None else contextlib.nullcontext()
        with torch.no_grad(), context:
            for sequence in tqdm(sequences, desc=desc, disable=None if progress is None else not progress,
                                 leave=False):
                ids = torch.as_tensor([list(sequence)], dtype=torch.long, device=device)
                model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return reducer.captured


# ------------------------------------------------------------------------------------------------ fits ------


def _points(record: SequenceCapture, skip_prefix: bool) -> slice:
    return slice(1 if skip_prefix else 0, None)


def _whole(record: SequenceCapture) -> torch.Tensor:
    return record.o


@dataclass(frozen=True)
class ScanResult:
    """A fitted scan on one layer: held-out and calibration errors, and the memoryless map's held-out error."""

    heldout_error: float
    calibration_error: float
    memoryless_error: float
    n_calibration: int
    n_heldout: int
    n_features: int

    @property
    def generalization_gap(self) -> float:
        return self.heldout_error - self.calibration_error


def _normal(records: Sequence[SequenceCapture], decays: Sequence[float], targets: dict[str, Any],
            skip_prefix: bool) -> Normal:
    normal = Normal()
    for record in records:
        keep = _points(record, skip_prefix)
        phi = scan_features(record.x, decays)[keep]
        normal.add(phi, {name: select(record)[keep] for name, select in targets.items()})
    return normal


def _heldout_features(records: Sequence[SequenceCapture], decays: Sequence[float], skip_prefix: bool
                      ) -> list[torch.Tensor]:
    return [scan_features(record.x, decays)[_points(record, skip_prefix)] for record in records]


def _heldout_error(records: Sequence[SequenceCapture], phis: Sequence[torch.Tensor], w: torch.Tensor, target: Any,
                   skip_prefix: bool) -> float:
    """‖O − Ô‖_F / ‖O‖_F pooled over the held-out points, Ô = O − target + Φ W: the scan (readout W) predicts
    `target(record)`, the part of the attention output O it replaces (all of O for G10-scan)."""
    outputs, predictions = [], []
    for record, phi in zip(records, phis):
        keep = _points(record, skip_prefix)
        o = record.o[keep]
        outputs.append(o)
        predictions.append(o - target(record)[keep] + phi[:, :w.shape[0]] @ w)
    return float(frobenius_relative_error(torch.cat(outputs), torch.cat(predictions)))


def fit_scan_layer(calibration: Sequence[SequenceCapture], heldout: Sequence[SequenceCapture],
                   decays: Sequence[float], ridge: float, *, skip_prefix: bool = True) -> ScanResult:
    """G10-scan on one layer: fit the scan readout on calibration, judge it on held-out points."""
    normal = _normal(calibration, decays, {"o": _whole}, skip_prefix)
    phis = _heldout_features(heldout, decays, skip_prefix)
    w = fit_scan(normal, "o", ridge)
    memoryless = fit_scan(normal, "o", ridge, width=calibration[0].x.shape[-1])
    return ScanResult(
        heldout_error=_heldout_error(heldout, phis, w, _whole, skip_prefix),
        calibration_error=fit_error(normal, "o", w),
        memoryless_error=_heldout_error(heldout, phis, memoryless, _whole, skip_prefix),
        n_calibration=normal.n_points,
        n_heldout=sum(r.o[_points(r, skip_prefix)].shape[0] for r in heldout),
        n_features=w.shape[0],
    )


def random_scan_errors(calibration: Sequence[SequenceCapture], heldout: Sequence[SequenceCapture],
                       decays: Sequence[float], seeds: Sequence[int], *, skip_prefix: bool = True) -> list[float]:
    """The random-basis trap: held-out errors of same-size scans whose readout is random (scaled, not fit)."""
    normal = _normal(calibration, decays, {"o": _whole}, skip_prefix)
    phis = _heldout_features(heldout, decays, skip_prefix)
    return [_heldout_error(heldout, phis, random_readout(normal, "o", seed), _whole, skip_prefix) for seed in seeds]


def trivial_scan_error(heldout: Sequence[SequenceCapture], *, skip_prefix: bool = True) -> float:
    """The uncompressed pipeline: the attention's own output through the same held-out error, exactly 0."""
    outputs = torch.cat([r.o[_points(r, skip_prefix)] for r in heldout])
    return float(frobenius_relative_error(outputs, outputs.clone()))


@dataclass(frozen=True)
class HybridResult:
    """G10.5's error on one layer: hybrid (oracle top-k + scan), its random-key baselines (one per seed), the sparse
    part alone, and the mean attention mass of the top-k keys."""

    hybrid_error: float
    random_errors: tuple[float, ...]
    sparse_only_error: float
    sparse_mass: float


def fit_hybrid_layer(calibration: Sequence[SequenceCapture], heldout: Sequence[SequenceCapture],
                     decays: Sequence[float], ridge: float, *, skip_prefix: bool = True) -> HybridResult:
    """G10.5 on one layer: the scan fit on o − o_sparse (oracle keys, and per random seed), judged on held-out."""
    n_random = len(calibration[0].o_random)
    targets = {"oracle": lambda r: r.o - r.o_sparse}
    targets.update({f"random{i}": (lambda r, i=i: r.o - r.o_random[i]) for i in range(n_random)})
    normal = _normal(calibration, decays, targets, skip_prefix)
    phis = _heldout_features(heldout, decays, skip_prefix)
    hybrid = _heldout_error(heldout, phis, fit_scan(normal, "oracle", ridge), targets["oracle"], skip_prefix)
    randoms = tuple(_heldout_error(heldout, phis, fit_scan(normal, f"random{i}", ridge), targets[f"random{i}"],
                                   skip_prefix) for i in range(n_random))
    outputs = torch.cat([r.o[_points(r, skip_prefix)] for r in heldout])
    sparse = torch.cat([r.o_sparse[_points(r, skip_prefix)] for r in heldout])
    mass = torch.cat([r.sparse_mass[:, _points(r, skip_prefix)].reshape(-1) for r in heldout])
    return HybridResult(hybrid, randoms, float(frobenius_relative_error(outputs, sparse)), float(mass.mean()))


def static_key_scores(calibration: Sequence[SequenceCapture]) -> tuple[torch.Tensor, torch.Tensor]:
    """The static rule from calibration: per head, mean attention on the sink (s = 0) and per offset d = t − s ≥ 0
    (keys s ≥ 1), as (sink (heads,), offsets (heads, T_max)); offsets never seen score 0."""
    width = max(r.offset_mass.shape[1] for r in calibration)
    heads = calibration[0].offset_mass.shape[0]
    mass = torch.zeros(heads, width, dtype=F64)
    count = torch.zeros(width, dtype=F64)
    sink, queries = torch.zeros(heads, dtype=F64), 0
    for record in calibration:
        t = record.offset_mass.shape[1]
        mass[:, :t] += record.offset_mass
        count[:t] += record.offset_count
        sink += record.sink_mass
        queries += t
    return sink / queries, torch.where(count > 0, mass / count.clamp_min(1), torch.zeros_like(mass))


def static_topk(sink: torch.Tensor, offsets: torch.Tensor, length: int, k: int) -> torch.Tensor:
    """Key indices (heads, T, k) the static rule picks for a sequence of `length` tokens."""
    positions = torch.arange(length)
    lag = positions[:, None] - positions[None, :]
    width = offsets.shape[1]
    scores = offsets[:, lag.clamp(0, width - 1)].clone()
    scores[:, lag >= width] = 0
    scores[:, :, 0] = sink[:, None]
    return _keep_topk(scores, k)[1]


@dataclass(frozen=True)
class KeyStability:
    """Routing stability: mean Jaccard of the top-k keys and the static rule's keys over n (query, head) pairs."""

    jaccard: float
    n: int


def key_stability(calibration: Sequence[SequenceCapture], heldout: Sequence[SequenceCapture]) -> KeyStability:
    """Mean |A ∩ B| / |A ∪ B| over held-out queries that see more than k keys and heads: A the top-k keys, B the keys
    the static rule (fit on calibration) picks."""
    sink, offsets = static_key_scores(calibration)
    total, count = 0.0, 0
    for record in heldout:
        k, length = record.topk.shape[-1], record.topk.shape[1]
        if length <= k:
            continue
        jaccard = route_jaccard(record.topk[:, k:], static_topk(sink, offsets, length, k)[:, k:])
        total += float(jaccard.sum())
        count += jaccard.numel()
    if count == 0:
        raise ValueError("key_stability: no held-out query sees more than k keys; use longer sequences or a smaller "
                         "params.top_k_keys")
    return KeyStability(total / count, count)


# ------------------------------------------------------------------------------------------------ the study ---


class AttentionStudy:
    """G10-scan / G10.5 on one loaded model (models.loading.LoadedModel) and its corpora: one attention capture per
    (task, split) covering every layer of the cells, and each layer's fit, computed once.

    Held-out: the first `n_points` document tokens of the task's held-out split; calibration: the first
    `calibration_tokens_per_feature` · d tokens of its calibration split, d = H · (1 + len(decays)) scan features.
    With `sparse` the captures also keep the sparse parts G10.5 needs.
    """

    def __init__(self, loaded: Any, corpora: Any, layers: Sequence[int], *, n_points: int, decays: Sequence[float],
                 ridge: float, calibration_tokens_per_feature: float, sparse: SparseSpec | None = None) -> None:
        self.loaded, self.corpora, self.layers = loaded, corpora, sorted(set(layers))
        self.n_points, self.decays, self.ridge, self.sparse = n_points, list(decays), ridge, sparse
        hidden = int(loaded.model.config.hidden_size)
        self.n_features = hidden * (1 + len(self.decays))
        self.calibration_tokens = int(calibration_tokens_per_feature * self.n_features)
        self._captures: dict[tuple[str, str], dict[int, list[SequenceCapture]]] = {}
        self._scan: dict[tuple[int, str], ScanResult] = {}
        self._hybrid: dict[tuple[int, str], HybridResult] = {}

    def records(self, layer: int, task: str, split: str) -> list[SequenceCapture]:
        if (task, split) not in self._captures:
            from pytest_ladder.models.corpora import token_sequences

            loaded = self.loaded
            n_tokens = self.n_points if split == "heldout" else self.calibration_tokens
            sequences = token_sequences(self.corpora[task].split(split), loaded.tokenizer, n_tokens,
                                        loaded.max_length, loaded.prefix_token_id)
            self._captures[(task, split)] = attention_capture(loaded.model, loaded.adapter, sequences, self.layers,
                                                              sparse=self.sparse, desc=f"attention {task} {split}")
        return self._captures[(task, split)][layer]

    def scan(self, layer: int, task: str) -> ScanResult:
        """G10-scan on (layer, task)."""
        if (layer, task) not in self._scan:
            self._scan[(layer, task)] = fit_scan_layer(self.records(layer, task, "calibration"),
                                                       self.records(layer, task, "heldout"), self.decays, self.ridge)
        return self._scan[(layer, task)]

    def random_scans(self, layer: int, task: str, seeds: Sequence[int]) -> list[float]:
        """The random-basis trap of G10-scan on (layer, task): one random readout per seed."""
        return random_scan_errors(self.records(layer, task, "calibration"), self.records(layer, task, "heldout"),
                                  self.decays, seeds)

    def hybrid(self, layer: int, task: str) -> HybridResult:
        """G10.5's error on (layer, task)."""
        self._need_sparse()
        if (layer, task) not in self._hybrid:
            self._hybrid[(layer, task)] = fit_hybrid_layer(self.records(layer, task, "calibration"),
                                                           self.records(layer, task, "heldout"), self.decays,
                                                           self.ridge)
        return self._hybrid[(layer, task)]

    def key_stability(self, layer: int, task: str) -> KeyStability:
        """G10.5's routing stability on (layer, task)."""
        self._need_sparse()
        return key_stability(self.records(layer, task, "calibration"), self.records(layer, task, "heldout"))

    def _need_sparse(self) -> None:
        if self.sparse is None:
            raise ValueError("AttentionStudy: built without a SparseSpec; G10.5 needs sparse=SparseSpec(top_k, seeds)")

    def trivial(self, layer: int, task: str) -> float:
        return trivial_scan_error(self.records(layer, task, "heldout"))
