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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.routing import route_jaccard
from pytest_ladder.measure.workspace import Workspace, to_f64
from pytest_ladder.probes.attention_capture import SequenceCapture, SparseSpec, _keep_topk, attention_capture
from pytest_ladder.probes.scan import (VALIDATION_EVERY, Normal, choose_ridges, fit_error, fit_scan, random_readout,
                                       readout, scan_features)

F64 = torch.float64

__all__ = ["AttentionStudy", "Calibration", "SparseSpec", "SequenceCapture", "attention_capture", "scan_features",
           "fit_scan_layer", "fit_hybrid_layer", "key_stability", "static_topk", "random_scan_errors",
           "trivial_scan_error", "readout", "random_readout", "fit_scan", "fit_error", "Normal"]


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
    with the sparse part, the static rule's attention sums.

    Under a bounded `workspace` the normal equations wait on the CPU (G10.5 on OLMoE-1B-7B: ~2.7 GB per layer and
    fold) and the sequences' features and targets are held on the device until they fill `share` of it (a quarter,
    split between the layers captured together), then folded in together (one product per batch of sequences, not
    one 2.7 GB transfer per sequence)."""

    decays: tuple[float, ...]
    skip_prefix: bool = True
    workspace: Workspace | None = None
    fits: bool = True  # False: the static rule's statistics alone (no features, no normal equations)
    share: float = 0.25  # of the workspace its held sequences may fill (the layers captured together split a quarter)
    fit: Normal = field(default_factory=Normal)
    validation: Normal = field(default_factory=Normal)
    n_sequences: int = 0
    _normal: Normal | None = field(default=None, repr=False, compare=False)
    _pending: dict[str, list] = field(default_factory=lambda: {"fit": [], "validation": []}, repr=False,
                                      compare=False)
    _pending_bytes: int = field(default=0, repr=False, compare=False)
    sink: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    queries: int = 0

    def add(self, record: SequenceCapture) -> None:
        if self.fits:
            self._fold(record)
        self._add_rule(record)

    def _fold(self, record: SequenceCapture) -> None:
        keep = _points(self.skip_prefix)
        targets = _targets(record.o_sparse is not None, len(record.o_random))
        phi = scan_features(record.x, self.decays)[keep]
        self.n_sequences += 1
        name = "validation" if self.n_sequences % VALIDATION_EVERY == 0 else "fit"
        values = {target: select(record)[keep] for target, select in targets.items()}
        if self.bounded:
            self._pending[name].append((phi, values))
            self._pending_bytes += phi.numel() * 8 + sum(v.numel() * v.element_size() for v in values.values())
            if self._pending_bytes > self.workspace.limit * self.share:
                self.flush()
        else:
            getattr(self, name).add(phi, values)
            getattr(self, name).device = phi.device
        self._normal = None

    def _add_rule(self, record: SequenceCapture) -> None:
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
    def bounded(self) -> bool:
        return self.workspace is not None and self.workspace.bounded

    def flush(self) -> None:
        """Fold the sequences held on the device into the normal equations kept on the CPU (bounded workspace)."""
        for name, pending in self._pending.items():
            if not pending:
                continue
            fold = getattr(self, name)
            phi = torch.cat([p for p, _ in pending])
            values = {target: torch.cat([v[target] for _, v in pending]) for target in pending[0][1]}
            pending.clear()  # the sequences' own copies go before the products are made
            fold.add(phi, values, workspace=self.workspace)
            fold.device = phi.device
            del phi, values
        self._pending_bytes = 0
        self._normal = None

    @property
    def normal(self) -> Normal:
        """The normal equations over every calibration sequence (fit + validation)."""
        self.flush()
        if self._normal is None:
            self._normal = self.fit + self.validation
        return self._normal

    @property
    def device(self) -> torch.device:
        """Where the fits run (the device the records were captured on)."""
        return self.normal.compute_device

    def release(self) -> None:
        """Drop what the fits keep on the device (eigendecompositions, ΦᵀΦ); the statistics stay."""
        for normal in (self.fit, self.validation, self.normal):
            normal.release()

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
        o = to_f64(record.o[keep], phi.device)
        outputs.append(o)
        predictions.append(o - to_f64(target(record)[keep], phi.device) + phi[:, :w.shape[0]] @ w)
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
    phis = _heldout_features(heldout, decays, skip, calibration.device)
    w, ridge = readout(calibration, "o", ridges)
    memoryless, _ = readout(calibration, "o", ridges, width=heldout[0].x.shape[-1])
    result = ScanResult(
        heldout_error=_heldout_error(heldout, phis, w, lambda r: r.o, skip),
        calibration_error=fit_error(normal, "o", w),
        memoryless_error=_heldout_error(heldout, phis, memoryless, lambda r: r.o, skip),
        ridge=ridge,
        n_calibration=normal.n_points,
        n_heldout=sum(r.o[_points(skip)].shape[0] for r in heldout),
        n_features=w.shape[0],
    )
    calibration.release()
    return result


def random_scan_errors(calibration: Calibration, heldout: Sequence[SequenceCapture], seeds: Sequence[int]
                       ) -> list[float]:
    """The random-basis trap: held-out errors of same-size scans whose readout is random (scaled, not fit)."""
    normal, skip = calibration.normal, calibration.skip_prefix
    phis = _heldout_features(heldout, calibration.decays, skip, calibration.device)
    errors = [_heldout_error(heldout, phis, random_readout(normal, "o", seed), lambda r: r.o, skip) for seed in seeds]
    calibration.release()
    return errors


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
    phis = _heldout_features(heldout, calibration.decays, skip, calibration.device)
    names = [name for name in targets if name != "o"]
    chosen = choose_ridges(calibration, names, ridges)
    # targets with the same chosen ridge in a row: each ridge's factor of ΦᵀΦ + α I is made once
    errors = {name: _heldout_error(heldout, phis, fit_scan(normal, name, chosen[name]), targets[name], skip)
              for name in sorted(names, key=chosen.__getitem__)}
    calibration.release()
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
    """G10-scan / G10.5 on one loaded model (models.loading.LoadedModel) and its corpora: per task at most two
    calibration passes (the first layer asked for, then every other cell layer; `calibration`) and one held-out
    capture, and each layer's fit, computed once.

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
        self._rules: dict[str, dict[int, Calibration]] = {}
        self._heldout: dict[str, dict[int, list[SequenceCapture]]] = {}
        self._scan: dict[tuple[int, str], ScanResult] = {}
        self._hybrid: dict[tuple[int, str], HybridResult] = {}

    @property
    def workspace(self) -> Workspace:
        """The model's execution device and the GPU working set beyond the weights (--ladder-gpu-workspace)."""
        from pytest_ladder.models.capture import model_device

        return Workspace.on(model_device(self.loaded.model), getattr(self.loaded.spec, "gpu_workspace", None))

    def _sequences(self, task: str, split: str, n_tokens: int) -> list[list[int]]:
        from pytest_ladder.models.corpora import token_sequences

        loaded = self.loaded
        return token_sequences(self.corpora[task].split(split), loaded.tokenizer, n_tokens, loaded.max_length,
                               loaded.prefix_token_id)

    def calibration(self, layer: int, task: str) -> Calibration:
        """The layer's calibration statistics for `task`. The first layer asked for a task is captured alone (the
        forward stops after it, and only its normal equations are folded: on OLMoE-1B-7B each G10.5 layer folds
        2.7 GB per flush, so a kill at the hardest cell pays for one layer, not four); a second layer of the task
        brings every cell layer not yet captured, in one more pass. Each layer's statistics are the same whichever
        pass folded them (the same sequences through the same layers)."""
        found = self._calibration.setdefault(task, {})
        if layer not in found:
            if layer not in self.layers:
                raise ValueError(f"AttentionStudy: layer {layer} is not one of the study's layers {self.layers}")
            layers = [layer] if not found else [k for k in self.layers if k not in found]
            share = 0.25 / len(layers)  # the layers' held sequences together fill at most a quarter
            stats = {k: Calibration(self.decays, workspace=self.workspace, share=share) for k in layers}
            attention_capture(self.loaded.model, self.loaded.adapter,
                              self._sequences(task, "calibration", self.calibration_tokens), layers,
                              sparse=self.sparse, on_record=lambda k, record: stats[k].add(record),
                              workspace=self.workspace,
                              desc=f"attention {task} calibration (layer{'s' if len(layers) > 1 else ''} "
                                   f"{', '.join(map(str, layers))})")
            for calibration in stats.values():
                calibration.flush()
            found.update(stats)
        return found[layer]

    def heldout(self, layer: int, task: str) -> list[SequenceCapture]:
        if task not in self._heldout:
            self._heldout[task] = attention_capture(self.loaded.model, self.loaded.adapter,
                                                    self._sequences(task, "heldout", self.n_points), self.layers,
                                                    sparse=self.sparse, workspace=self.workspace,
                                                    desc=f"attention {task} heldout")
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

    def rule(self, layer: int, task: str) -> Calibration:
        """Calibration statistics of (layer, task) holding at least the static rule's: the layer's full calibration
        if it was captured, else one pass that gathers the rule's statistics alone for every study layer without
        them (no scan features, no normal equations: what key_jaccard reads costs a forward, not a fit's folds)."""
        found = self._calibration.get(task, {})
        if layer in found:
            return found[layer]
        rules = self._rules.setdefault(task, {})
        if layer not in rules:
            layers = [k for k in self.layers if k not in rules and k not in found]
            stats = {k: Calibration(self.decays, workspace=self.workspace, fits=False) for k in layers}
            attention_capture(self.loaded.model, self.loaded.adapter,
                              self._sequences(task, "calibration", self.calibration_tokens), layers,
                              sparse=self.sparse, rule_only=True, on_record=lambda k, record: stats[k].add(record),
                              workspace=self.workspace,
                              desc=f"attention {task} static rule (layers {', '.join(map(str, layers))})")
            rules.update(stats)
        return rules[layer]

    def key_stability(self, layer: int, task: str) -> KeyStability:
        """G10.5's routing stability on (layer, task)."""
        self._need_sparse()
        return key_stability(self.rule(layer, task), self.heldout(layer, task))

    def trivial(self, layer: int, task: str) -> float:
        return trivial_scan_error(self.heldout(layer, task))

    def _need_sparse(self) -> None:
        if self.sparse is None:
            raise ValueError("AttentionStudy: built without a SparseSpec; G10.5 needs sparse=SparseSpec(top_k, seeds)")
