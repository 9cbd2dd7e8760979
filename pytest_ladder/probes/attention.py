"""G10-scan and G10.5: can a decaying scan (plus a few attended keys) replace a layer's attention?

Attention at layer ℓ maps its input x_t (after the layer norm, H wide) to its output o_t (after o_proj, what is
added to the residual). Both rungs fit on the calibration split and are judged on held-out points by the relative
error ‖O − Ô‖_F / ‖O‖_F (pooled over points; measure.errors.frobenius_relative_error).

- G10-scan: the scan is the linear, time-invariant part of RWKV time-mixing: per decay λ in a fixed set, the
  contractive accumulation e_λ,t = λ e_λ,t−1 + (1 − λ) x_t (e_λ,−1 = 0, |λ| < 1), and ô_t = W φ_t with the features
  φ_t = [x_t, e_λ1,t, ..., e_λm,t] (d = H·(m+1) wide). W is the ridge least-squares fit on calibration points,
  W = (ΦᵀΦ + α I)⁻¹ ΦᵀO with α = ridge · tr(ΦᵀΦ) / d (ridge 0: plain least squares), from sufficient statistics in
  float64. The ridge is chosen from a locked grid on calibration alone: fit on four of every five calibration
  sequences, pick the ridge with the lowest error on the fifth, refit on all of them. The memoryless map (features
  x_t alone) is fit the same way for comparison.
- G10.5: the smooth + sparse split: each query keeps its top-k keys per head with their exact attention weights
  (the sparse part, o_sparse = W_o Σ_h Σ_{s ∈ topk} A_h,ts v_h,s + b_o) and the scan fits what is left,
  o − o_sparse. Routing stability: the Jaccard index between each query's content-addressed top-k keys and the keys
  a static rule picks (per head, the calibration's mean attention on the first (sink) token and on each relative
  offset t − s); queries that see at most k keys pick them all under any rule and are left out of the mean.
  The τ baselines keep k random visible keys per query and head (same budget; drawn on the CPU from the seed, one
  draw per sequence length) and fit the scan the same way.

Capture: one forward per token sequence (no padding) with eager attention for G10.5 (so the attention weights
exist), hooks on the layers' self-attention (input, output, weights) and value projection; o_proj's weight is read
meta-safe. Each sequence is reduced on the fly: calibration sequences are folded into the sufficient statistics at
once (never kept), held-out sequences keep O(T·H) numbers on the CPU. Long contexts never keep (heads, T, T).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
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
RECONSTRUCTION_TOLERANCE = 1e-2  # o_proj(A v) must reproduce the captured output to this relative error


# ----------------------------------------------------------------------------------------------- the scan ----


def scan_features(x: torch.Tensor, decays: Sequence[float]) -> torch.Tensor:
    """φ = [x, e_λ1, ..., e_λm] (T, H·(m+1)) of one sequence x (T, H), e_λ,t = Σ_{s≤t} (1 − λ) λ^{t−s} x_s, float64."""
    x = x.to(F64)
    t = torch.arange(x.shape[0], device=x.device)
    lag = (t[:, None] - t[None, :]).to(F64)
    causal = lag >= 0
    parts = [x]
    for decay in decays:
        if not 0 <= decay < 1:
            raise ValueError(f"scan decays must lie in [0, 1) (contractive), got {decay}")
        kernel = torch.where(causal, (1 - decay) * torch.tensor(decay, dtype=F64, device=x.device).pow(
            lag.clamp_min(0)), torch.zeros((), dtype=F64, device=x.device))
        parts.append(kernel @ x)
    return torch.cat(parts, dim=-1)


@dataclass
class Normal:
    """Sufficient statistics of least squares Ô = Φ W over points: ΦᵀΦ (d, d), ΦᵀY (d, H) and Σ‖Y‖² per target."""

    ftf: torch.Tensor | None = None
    fty: dict[str, torch.Tensor] = field(default_factory=dict)
    yy: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    _eigh: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def add(self, phi: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        """Fold in points with features phi (n, d) and each target (n, H): one matmul for all targets."""
        phi = phi.to(F64)
        names = list(targets)
        sizes = [targets[name].shape[-1] for name in names]
        ys = torch.cat([targets[name].to(device=phi.device, dtype=F64) for name in names], dim=-1)
        gram = phi.mT @ phi
        self.ftf = gram if self.ftf is None else self.ftf + gram
        for name, part, y in zip(names, (phi.mT @ ys).split(sizes, dim=-1), ys.split(sizes, dim=-1)):
            self.fty[name] = part if name not in self.fty else self.fty[name] + part
            self.yy[name] = self.yy.get(name, 0.0) + float(y.square().sum())
        self.n_points += phi.shape[0]
        self._eigh.clear()

    def __add__(self, other: Normal) -> Normal:
        if other.ftf is None:
            return self
        if self.ftf is None:
            return other
        return Normal(self.ftf + other.ftf, {k: v + other.fty[k] for k, v in self.fty.items()},
                      {k: v + other.yy[k] for k, v in self.yy.items()}, self.n_points + other.n_points)

    def eigh(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigendecomposition of the leading (width, width) block of ΦᵀΦ, computed once for every target and ridge."""
        if width not in self._eigh:
            self._eigh[width] = torch.linalg.eigh(self.ftf[:width, :width])
        return self._eigh[width]


EIG_CUTOFF = 1e-12  # ridge 0: eigenvalues of ΦᵀΦ below EIG_CUTOFF · λ_max count as zero (pseudo-inverse)


def fit_scan(normal: Normal, target: str, ridge: float, *, width: int | None = None) -> torch.Tensor:
    """W = (ΦᵀΦ + α I)⁻¹ ΦᵀY with α = ridge · tr(ΦᵀΦ) / d (ridge 0: the least-squares pseudo-inverse), float64,
    through one eigendecomposition of ΦᵀΦ shared by every target and ridge.

    `width` keeps the first `width` features only (H of them: the memoryless map x_t -> o_t)."""
    if normal.ftf is None:
        raise ValueError("fit_scan: no calibration points were accumulated")
    d = normal.ftf.shape[0] if width is None else width
    evals, evecs = normal.eigh(d)
    evals = evals.clamp_min(0)
    if ridge == 0:
        kept = evals > EIG_CUTOFF * evals.max()
        inverse = torch.where(kept, 1.0 / evals.where(kept, torch.ones_like(evals)), torch.zeros_like(evals))
    else:
        inverse = 1.0 / (evals + ridge * evals.sum() / d)
    return evecs @ (inverse[:, None] * (evecs.mT @ normal.fty[target][:d]))


def fit_error(normal: Normal, target: str, w: torch.Tensor) -> float:
    """‖Φ W − Y‖_F / ‖Y‖_F on the accumulated (calibration) points, from the sufficient statistics."""
    d = w.shape[0]
    a, b = normal.ftf[:d, :d], normal.fty[target][:d]
    sq = float((w * (a @ w)).sum() - 2 * (w * b).sum()) + normal.yy[target]
    return (max(sq, 0.0) / normal.yy[target]) ** 0.5


VALIDATION_EVERY = 5  # every fifth calibration sequence validates the ridge


def readout(calibration: Calibration, target: str, ridges: Sequence[float], *, width: int | None = None
            ) -> tuple[torch.Tensor, float]:
    """(W, ridge): the ridge of `ridges` whose fit on the fitting sequences has the lowest error on the validation
    sequences, and W refit with it on every calibration sequence (a single ridge is used as is)."""
    ridges = list(ridges)
    if not ridges:
        raise ValueError("readout: no ridge given; params.ridges must list at least one value")
    chosen = ridges[0]
    if len(ridges) > 1:
        if calibration.validation.ftf is None or calibration.fit.ftf is None:
            raise ValueError(f"readout: choosing among {len(ridges)} ridges needs at least {VALIDATION_EVERY} "
                             "calibration sequences; raise params.calibration_tokens_per_feature")
        errors = [fit_error(calibration.validation, target, fit_scan(calibration.fit, target, r, width=width))
                  for r in ridges]
        chosen = ridges[min(range(len(ridges)), key=errors.__getitem__)]
    return fit_scan(calibration.normal, target, chosen, width=width), chosen


def random_readout(normal: Normal, target: str, seed: int) -> torch.Tensor:
    """The random-basis trap's readout: Haar-random orthonormal columns Q (d, H) scaled by the least-squares scalar
    c = tr(QᵀΦᵀY) / tr(QᵀΦᵀΦQ) on calibration — a scan of the same size whose readout was not fit."""
    d, h = normal.fty[target].shape
    q = random_orthonormal_columns(d, h, seed, device=normal.ftf.device)
    c = (q * normal.fty[target]).sum() / (q * (normal.ftf @ q)).sum()
    return c * q


# --------------------------------------------------------------------------------------------- capture -----


@dataclass(frozen=True)
class SparseSpec:
    """The sparse part: k keys per query and head; `random_seeds` draw the τ baselines' random key sets."""

    top_k: int
    random_seeds: tuple[int, ...] = ()


@dataclass
class SequenceCapture:
    """One layer on one sequence: attention input x (T, H) and output o (T, H); with a SparseSpec also the oracle
    top-k output, one random-key output per seed, the top-k key indices (heads, T, k), the top-k attention mass
    (heads, T), and for the static rule the attention summed per offset d = t − s over keys s ≥ 1 (heads, T), the
    number of queries seeing each offset (T,) and the attention on the first token summed over queries (heads,)."""

    x: torch.Tensor
    o: torch.Tensor
    o_sparse: torch.Tensor | None = None
    o_random: list[torch.Tensor] = field(default_factory=list)
    topk: torch.Tensor | None = None
    sparse_mass: torch.Tensor | None = None
    offset_mass: torch.Tensor | None = None
    offset_count: torch.Tensor | None = None
    sink_mass: torch.Tensor | None = None

    def to(self, device: Any) -> SequenceCapture:
        """The same capture with every tensor on `device` (floating ones as float32)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=torch.float32) if t.is_floating_point() else t.to(device)

        return SequenceCapture(move(self.x), move(self.o), move(self.o_sparse), [move(t) for t in self.o_random],
                               move(self.topk), move(self.sparse_mass), move(self.offset_mass),
                               move(self.offset_count), move(self.sink_mass))


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
    """(mask (heads, T, T), indices (heads, T, min(k, T))) of the k highest causal scores per query (every visible
    key, and some masked ones among the indices, when t + 1 ≤ k)."""
    t = scores.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
    index = scores.masked_fill(~causal, float("-inf")).topk(min(k, t), dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
    return keep & causal, index


def _offset_sums(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t A[:, t, t − d] over queries t with key t − d ≥ 1, per offset d (heads, T), and those query counts (T,)."""
    t = a.shape[-1]
    positions = torch.arange(t, device=a.device)
    key = positions[:, None] - positions[None, :]  # key index t − d at [t, d]
    valid = key >= 1
    skewed = a.gather(-1, key.clamp_min(0).expand(a.shape[0], t, t))
    return (skewed * valid).sum(1), valid.sum(0).to(F64)


class _Reducer:
    """Hook state: turns each (layer, sequence) forward into a SequenceCapture and hands it to `on_record`."""

    def __init__(self, model: Any, adapter: MoEAdapter, layers: Sequence[int], sparse: SparseSpec | None,
                 on_record: Callable[[int, SequenceCapture], None]) -> None:
        from pytest_ladder.models.weights import read_parameter

        self.model, self.sparse, self.on_record = model, sparse, on_record
        self.inputs: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.o_proj: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.random_index: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
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
        record = SequenceCapture(x=self.inputs.pop(layer).float(), o=o.float())
        if self.sparse is not None:
            if weights is None:
                raise RuntimeError(f"layer {layer}: the attention returned no weights; G10.5 needs eager attention "
                                   "(attention_capture switches it on; a custom attention module must return them)")
            self._reduce_sparse(layer, module, record, weights[0].detach().to(F64), self.values.pop(layer).to(F64))
        self.on_record(layer, record)

    def _random_keys(self, seed: int, shape: tuple[int, ...], k: int) -> torch.Tensor:
        """k uniformly random visible keys per (head, query), drawn on the CPU from `seed` (cached per shape)."""
        if (seed, shape) not in self.random_index:
            scores = torch.rand(shape, generator=cpu_generator(seed), dtype=torch.float32)
            self.random_index[(seed, shape)] = _keep_topk(scores, k)[1]
        return self.random_index[(seed, shape)]

    def _reduce_sparse(self, layer: int, module: Any, record: SequenceCapture, a: torch.Tensor, v: torch.Tensor
                       ) -> None:
        heads, kv_heads, head_dim = _attention_shape(module, self.model.config)
        v = _per_head(v, heads, kv_heads, head_dim)
        o_weight, o_bias = (t if t is None else t.to(a.device) for t in self.o_proj[layer])
        full = _mixed(a, v, o_weight, o_bias)
        error = float(frobenius_relative_error(record.o, full))
        if not error <= RECONSTRUCTION_TOLERANCE:
            raise RuntimeError(
                f"layer {layer}: o_proj(A v) reproduces the attention output only to relative error {error:.3g} "
                f"(> {RECONSTRUCTION_TOLERANCE}); this attention is not softmax(QKᵀ)V followed by o_proj (clipped "
                "values, sinks, a bias on V?) — G10.5's sparse part cannot be computed for this architecture")
        k = self.sparse.top_k
        keep, record.topk = _keep_topk(a, k)
        record.o_sparse = _mixed(a * keep, v, o_weight, o_bias).float()
        record.sparse_mass = (a * keep).sum(-1).float()
        record.offset_mass, record.offset_count = _offset_sums(a)
        record.sink_mass = a[:, :, 0].sum(-1)
        for seed in self.sparse.random_seeds:
            index = self._random_keys(seed, tuple(a.shape), k).to(a.device)
            random_keep = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, index, True).tril_()
            record.o_random.append(_mixed(a * random_keep, v, o_weight, o_bias).float())


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
                      *, sparse: SparseSpec | None = None,
                      on_record: Callable[[int, SequenceCapture], None] | None = None,
                      desc: str = "attention capture", progress: bool | None = None
                      ) -> dict[int, list[SequenceCapture]]:
    """Run each token sequence alone (no padding) through the model and reduce, per layer, its attention input and
    output (with `sparse` also the sparse parts and the static rule's statistics). Each SequenceCapture goes to
    `on_record(layer, record)` on the device it was computed on; without it they are kept on the CPU and returned."""
    from tqdm.auto import tqdm

    from pytest_ladder.models.capture import model_device
    from pytest_ladder.models.sequential import stopping_after

    kept: dict[int, list[SequenceCapture]] = {layer: [] for layer in layers}
    if on_record is None:
        def on_record(layer: int, record: SequenceCapture) -> None:
            kept[layer].append(record.to("cpu"))

    reducer = _Reducer(model, adapter, layers, sparse, on_record)
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
        with torch.no_grad(), context, stopping_after(model, max(layers)) as forward:
            for sequence in tqdm(sequences, desc=desc, disable=None if progress is None else not progress,
                                 leave=False):
                ids = torch.as_tensor([list(sequence)], dtype=torch.long, device=device)
                forward(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return kept


# ------------------------------------------------------------------------------------------------ fits ------


def _points(skip_prefix: bool) -> slice:
    """The points of a sequence: every position but the prefix token's (corpora.token_sequences)."""
    return slice(1 if skip_prefix else 0, None)


def _targets(sparse: bool, n_random: int) -> dict[str, Callable[[SequenceCapture], torch.Tensor]]:
    """What the scan fits: the whole output "o"; with the sparse part "oracle" = o − o_sparse and one residual per
    random-key baseline."""
    targets: dict[str, Callable[[SequenceCapture], torch.Tensor]] = {"o": lambda r: r.o}
    if sparse:
        targets["oracle"] = lambda r: r.o - r.o_sparse
        targets.update({f"random{i}": (lambda r, i=i: r.o - r.o_random[i]) for i in range(n_random)})
    return targets


@dataclass
class Calibration:
    """One layer's calibration, folded in sequence by sequence: the scan's normal equations for every target and,
    with the sparse part, the static rule's attention sums."""

    decays: tuple[float, ...]
    skip_prefix: bool = True
    fit: Normal = field(default_factory=Normal)
    validation: Normal = field(default_factory=Normal)
    n_sequences: int = 0
    _normal: Normal | None = field(default=None, repr=False, compare=False)
    sink: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    queries: int = 0

    def add(self, record: SequenceCapture) -> None:
        keep = _points(self.skip_prefix)
        targets = _targets(record.o_sparse is not None, len(record.o_random))
        phi = scan_features(record.x, self.decays)[keep]
        self.n_sequences += 1
        fold = self.validation if self.n_sequences % VALIDATION_EVERY == 0 else self.fit
        fold.add(phi, {name: select(record)[keep] for name, select in targets.items()})
        self._normal = None
        if record.offset_mass is not None:
            t = record.offset_mass.shape[1]
            if self.offsets is None or self.offsets.shape[1] < t:
                grown = torch.zeros(record.offset_mass.shape[0], t, dtype=F64, device=record.offset_mass.device)
                counts = torch.zeros(t, dtype=F64, device=record.offset_mass.device)
                if self.offsets is not None:
                    grown[:, :self.offsets.shape[1]] = self.offsets
                    counts[:self.counts.shape[0]] = self.counts
                self.offsets, self.counts = grown, counts
            self.offsets[:, :t] += record.offset_mass.to(F64)
            self.counts[:t] += record.offset_count.to(F64)
            self.sink = record.sink_mass.to(F64) if self.sink is None else self.sink + record.sink_mass.to(F64)
            self.queries += t

    @property
    def normal(self) -> Normal:
        """The normal equations over every calibration sequence (fit + validation)."""
        if self._normal is None:
            self._normal = self.fit + self.validation
        return self._normal

    def static_rule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sink (heads,), offsets (heads, T_max)): mean attention on the first token and per offset (unseen: 0)."""
        if self.offsets is None:
            raise ValueError("Calibration: no attention statistics; capture with a SparseSpec")
        offsets = torch.where(self.counts > 0, self.offsets / self.counts.clamp_min(1), torch.zeros_like(self.offsets))
        return (self.sink / self.queries).cpu(), offsets.cpu()


def _heldout_features(records: Sequence[SequenceCapture], decays: Sequence[float], skip_prefix: bool,
                      device: Any) -> list[torch.Tensor]:
    return [scan_features(record.x.to(device), decays)[_points(skip_prefix)] for record in records]


def _heldout_error(records: Sequence[SequenceCapture], phis: Sequence[torch.Tensor], w: torch.Tensor,
                   target: Callable[[SequenceCapture], torch.Tensor], skip_prefix: bool) -> float:
    """‖O − Ô‖_F / ‖O‖_F pooled over the held-out points, Ô = O − target + Φ W: the scan (readout W) predicts
    `target(record)`, the part of the attention output O it replaces (all of O for G10-scan)."""
    outputs, predictions = [], []
    keep = _points(skip_prefix)
    for record, phi in zip(records, phis):
        o = record.o[keep].to(device=phi.device, dtype=F64)
        outputs.append(o)
        predictions.append(o - target(record)[keep].to(device=phi.device, dtype=F64) + phi[:, :w.shape[0]] @ w)
    return float(frobenius_relative_error(torch.cat(outputs), torch.cat(predictions)))


@dataclass(frozen=True)
class ScanResult:
    """A fitted scan on one layer: held-out and calibration errors, the chosen ridge, and the memoryless map's
    held-out error."""

    heldout_error: float
    calibration_error: float
    memoryless_error: float
    ridge: float
    n_calibration: int
    n_heldout: int
    n_features: int

    @property
    def generalization_gap(self) -> float:
        return self.heldout_error - self.calibration_error


def fit_scan_layer(calibration: Calibration, heldout: Sequence[SequenceCapture], ridges: Sequence[float]
                   ) -> ScanResult:
    """G10-scan on one layer: the readout fit on calibration, judged on held-out points."""
    normal, decays, skip = calibration.normal, calibration.decays, calibration.skip_prefix
    phis = _heldout_features(heldout, decays, skip, normal.ftf.device)
    w, ridge = readout(calibration, "o", ridges)
    memoryless, _ = readout(calibration, "o", ridges, width=heldout[0].x.shape[-1])
    return ScanResult(
        heldout_error=_heldout_error(heldout, phis, w, lambda r: r.o, skip),
        calibration_error=fit_error(normal, "o", w),
        memoryless_error=_heldout_error(heldout, phis, memoryless, lambda r: r.o, skip),
        ridge=ridge,
        n_calibration=normal.n_points,
        n_heldout=sum(r.o[_points(skip)].shape[0] for r in heldout),
        n_features=w.shape[0],
    )


def random_scan_errors(calibration: Calibration, heldout: Sequence[SequenceCapture], seeds: Sequence[int]
                       ) -> list[float]:
    """The random-basis trap: held-out errors of same-size scans whose readout is random (scaled, not fit)."""
    normal, skip = calibration.normal, calibration.skip_prefix
    phis = _heldout_features(heldout, calibration.decays, skip, normal.ftf.device)
    return [_heldout_error(heldout, phis, random_readout(normal, "o", seed), lambda r: r.o, skip) for seed in seeds]


def trivial_scan_error(heldout: Sequence[SequenceCapture], *, skip_prefix: bool = True) -> float:
    """The uncompressed pipeline: the attention's own output through the same held-out error, exactly 0."""
    outputs = torch.cat([r.o[_points(skip_prefix)] for r in heldout])
    return float(frobenius_relative_error(outputs, outputs.clone()))


@dataclass(frozen=True)
class HybridResult:
    """G10.5's error on one layer: hybrid (oracle top-k + scan), its random-key baselines (one per seed), the sparse
    part alone, and the mean attention mass of the top-k keys."""

    hybrid_error: float
    random_errors: tuple[float, ...]
    sparse_only_error: float
    sparse_mass: float


def fit_hybrid_layer(calibration: Calibration, heldout: Sequence[SequenceCapture], ridges: Sequence[float]
                     ) -> HybridResult:
    """G10.5 on one layer: the scan fit on o − o_sparse (oracle keys, and per random seed), judged on held-out."""
    normal, skip = calibration.normal, calibration.skip_prefix
    targets = _targets(True, len(heldout[0].o_random))
    phis = _heldout_features(heldout, calibration.decays, skip, normal.ftf.device)
    errors = {name: _heldout_error(heldout, phis, readout(calibration, name, ridges)[0], select, skip)
              for name, select in targets.items() if name != "o"}
    keep = _points(skip)
    outputs = torch.cat([r.o[keep] for r in heldout]).to(F64)
    sparse = torch.cat([r.o_sparse[keep] for r in heldout]).to(F64)
    mass = torch.cat([r.sparse_mass[:, keep].reshape(-1) for r in heldout]).to(F64)
    randoms = tuple(errors[name] for name in targets if name.startswith("random"))
    return HybridResult(errors["oracle"], randoms, float(frobenius_relative_error(outputs, sparse)),
                        float(mass.mean()))


def static_topk(sink: torch.Tensor, offsets: torch.Tensor, length: int, k: int) -> torch.Tensor:
    """Key indices (heads, T, min(k, T)) the static rule picks for a sequence of `length` tokens: per head, the
    keys with the highest mean attention by offset, the first token scored by its own mean."""
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


def key_stability(calibration: Calibration, heldout: Sequence[SequenceCapture]) -> KeyStability:
    """Mean |A ∩ B| / |A ∪ B| over held-out queries that see more than k keys and heads: A the top-k keys, B the keys
    the static rule (fit on calibration) picks."""
    sink, offsets = calibration.static_rule()
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
    """G10-scan / G10.5 on one loaded model (models.loading.LoadedModel) and its corpora: per task one calibration
    pass (folded into every cell layer's statistics) and one held-out capture, and each layer's fit, computed once.

    Held-out: the first `n_points` document tokens of the task's held-out split; calibration: the first
    `calibration_tokens_per_feature` · d tokens of its calibration split, d = H · (1 + len(decays)) scan features.
    With `sparse` the captures also keep the sparse parts G10.5 needs. Statistics live on the model's device.
    """

    def __init__(self, loaded: Any, corpora: Any, layers: Sequence[int], *, n_points: int, decays: Sequence[float],
                 ridges: Sequence[float], calibration_tokens_per_feature: float,
                 sparse: SparseSpec | None = None) -> None:
        self.loaded, self.corpora, self.layers = loaded, corpora, sorted(set(layers))
        self.n_points, self.decays, self.ridges, self.sparse = n_points, tuple(decays), tuple(ridges), sparse
        hidden = int(loaded.model.config.hidden_size)
        self.n_features = hidden * (1 + len(self.decays))
        self.calibration_tokens = int(calibration_tokens_per_feature * self.n_features)
        self._calibration: dict[str, dict[int, Calibration]] = {}
        self._heldout: dict[str, dict[int, list[SequenceCapture]]] = {}
        self._scan: dict[tuple[int, str], ScanResult] = {}
        self._hybrid: dict[tuple[int, str], HybridResult] = {}

    def _sequences(self, task: str, split: str, n_tokens: int) -> list[list[int]]:
        from pytest_ladder.models.corpora import token_sequences

        loaded = self.loaded
        return token_sequences(self.corpora[task].split(split), loaded.tokenizer, n_tokens, loaded.max_length,
                               loaded.prefix_token_id)

    def calibration(self, layer: int, task: str) -> Calibration:
        if task not in self._calibration:
            stats = {layer: Calibration(self.decays) for layer in self.layers}
            attention_capture(self.loaded.model, self.loaded.adapter,
                              self._sequences(task, "calibration", self.calibration_tokens), self.layers,
                              sparse=self.sparse, on_record=lambda layer, record: stats[layer].add(record),
                              desc=f"attention {task} calibration")
            self._calibration[task] = stats
        return self._calibration[task][layer]

    def heldout(self, layer: int, task: str) -> list[SequenceCapture]:
        if task not in self._heldout:
            self._heldout[task] = attention_capture(self.loaded.model, self.loaded.adapter,
                                                    self._sequences(task, "heldout", self.n_points), self.layers,
                                                    sparse=self.sparse, desc=f"attention {task} heldout")
        return self._heldout[task][layer]

    def scan(self, layer: int, task: str) -> ScanResult:
        """G10-scan on (layer, task)."""
        if (layer, task) not in self._scan:
            self._scan[(layer, task)] = fit_scan_layer(self.calibration(layer, task), self.heldout(layer, task),
                                                       self.ridges)
        return self._scan[(layer, task)]

    def random_scans(self, layer: int, task: str, seeds: Sequence[int]) -> list[float]:
        """The random-basis trap of G10-scan on (layer, task): one random readout per seed."""
        return random_scan_errors(self.calibration(layer, task), self.heldout(layer, task), seeds)

    def hybrid(self, layer: int, task: str) -> HybridResult:
        """G10.5's error on (layer, task)."""
        self._need_sparse()
        if (layer, task) not in self._hybrid:
            self._hybrid[(layer, task)] = fit_hybrid_layer(self.calibration(layer, task), self.heldout(layer, task),
                                                           self.ridges)
        return self._hybrid[(layer, task)]

    def key_stability(self, layer: int, task: str) -> KeyStability:
        """G10.5's routing stability on (layer, task)."""
        self._need_sparse()
        return key_stability(self.calibration(layer, task), self.heldout(layer, task))

    def trivial(self, layer: int, task: str) -> float:
        return trivial_scan_error(self.heldout(layer, task))

    def _need_sparse(self) -> None:
        if self.sparse is None:
            raise ValueError("AttentionStudy: built without a SparseSpec; G10.5 needs sparse=SparseSpec(top_k, seeds)")
