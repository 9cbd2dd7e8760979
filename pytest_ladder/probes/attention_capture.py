"""Attention capture for G10-scan and G10.5: one forward per token sequence, each sequence reduced on the fly.

Hooks on the layers' self-attention (input, output, weights) and value projection, with eager attention for G10.5
(so the attention weights exist); o_proj's weight is read meta-safe. Held-out sequences keep O(T·H) numbers; the
sparse parts (each query's top-k keys, k random visible keys per τ baseline, the static rule's statistics) are
computed per sequence, so long contexts never keep (heads, T, T). A forward stops after the last recorded layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from pytest_ladder.measure.errors import frobenius_relative_error
from pytest_ladder.measure.rng import cpu_generator
from pytest_ladder.measure.workspace import Workspace

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter

F64 = torch.float64
RECONSTRUCTION_TOLERANCE = 1e-2  # o_proj(A v) must reproduce the captured output to this relative error
REDUCTION_SHARE = 1 / 8  # of a bounded workspace: a sequence's attention reduction (the calibration's held
# sequences and their fold take a quarter each)


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


def _keep_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (heads, T, T), indices (heads, T, min(k, T))) of the k highest causal scores per query (every visible
    key, and some masked ones among the indices, when t + 1 ≤ k)."""
    t = scores.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
    index = scores.masked_fill(~causal, float("-inf")).topk(min(k, t), dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
    return keep & causal, index


def _draw_keys(seed: int, shape: tuple[int, ...], k: int) -> torch.Tensor:
    """Indices (heads, T, min(k, T)) of k uniformly random visible keys per (head, query): the top-k of uniform
    scores drawn on the CPU from `seed` (the same keys on every device)."""
    scores = torch.rand(shape, generator=cpu_generator(seed), dtype=torch.float32)
    return _keep_topk(scores, k)[1]


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
                 on_record: Callable[[int, SequenceCapture], None], rule_only: bool = False,
                 workspace: Workspace | None = None) -> None:
        from pytest_ladder.models.weights import read_parameter

        self.model, self.sparse, self.on_record, self.rule_only = model, sparse, on_record, rule_only
        self.workspace = workspace or Workspace.on("cpu", None)
        self.inputs: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.o_proj: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.random_index: dict[tuple[int, tuple[int, ...]], torch.Tensor | Future] = {}
        self._pool: ThreadPoolExecutor | None = None
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
            self._reduce_sparse(layer, module, record, weights[0].detach(), self.values.pop(layer).to(F64))
        self.on_record(layer, record)

    def prefetch(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """Start drawing the random keys of every seed for these attention shapes (heads, T, T), in order, on a pool
        of CPU threads: the draws of a sequence are ready when its forward reaches the reduction, instead of costing
        G10.5 a serial CPU draw per seed and sequence (on OLMoE-1B-7B ~10 s of its calibration). Each draw has its
        own generator, so the keys are the same whichever thread draws them and when."""
        if self.sparse is None or self.rule_only or not self.sparse.random_seeds:
            return
        if self._pool is None:
            workers = max(1, min(len(self.sparse.random_seeds), torch.get_num_threads()))
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ladder-random-keys")
        for shape in shapes:
            for seed in self.sparse.random_seeds:
                if (seed, shape) not in self.random_index:
                    self.random_index[(seed, shape)] = self._pool.submit(_draw_keys, seed, shape, self.sparse.top_k)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _random_keys(self, seed: int, shape: tuple[int, ...], k: int) -> torch.Tensor:
        """k uniformly random visible keys per (head, query), drawn on the CPU from `seed` (cached per shape)."""
        found = self.random_index.get((seed, shape))
        if found is None:
            found = _draw_keys(seed, shape, k)
        elif isinstance(found, Future):
            found = found.result()
        self.random_index[(seed, shape)] = found
        return found

    def _head_spans(self, heads: int, t: int) -> list[slice]:
        """Heads reduced at once: their float64 attention (T, T) and the four products made from it (the masked
        copies, the offset skew) fit REDUCTION_SHARE of the workspace; all heads at once without a bound."""
        return self.workspace.spans(heads, 5 * t * t * 8, share=REDUCTION_SHARE)

    def _reduce_sparse(self, layer: int, module: Any, record: SequenceCapture, attention: torch.Tensor,
                       v: torch.Tensor) -> None:
        """The sparse parts of one sequence from its attention weights (heads, T, T) and values, a chunk of heads at
        a time (`_head_spans`: G10.5 on OLMoE-1B-7B holds 16 heads × 2048² float64 = 537 MB per copy otherwise). Each
        head's products are its own; the heads' mixed values are gathered before one o_proj, as unchunked."""
        heads, t = attention.shape[0], attention.shape[-1]
        spans = self._head_spans(heads, t)
        offset_mass, sink_mass = [], []
        if self.rule_only:  # the static rule's statistics alone
            for span in spans:
                a = attention[span].to(F64)
                mass, record.offset_count = _offset_sums(a)
                offset_mass.append(mass)
                sink_mass.append(a[:, :, 0].sum(-1))
            record.offset_mass, record.sink_mass = torch.cat(offset_mass), torch.cat(sink_mass)
            return
        n_heads, kv_heads, head_dim = _attention_shape(module, self.model.config)
        v = _per_head(v, n_heads, kv_heads, head_dim)
        o_weight, o_bias = (w if w is None else w.to(attention.device) for w in self.o_proj[layer])
        k = self.sparse.top_k
        seeds = self.sparse.random_seeds
        random_index = {seed: self._random_keys(seed, tuple(attention.shape), k) for seed in seeds}
        full, sparse = (torch.empty(t, heads, head_dim, dtype=F64, device=attention.device) for _ in range(2))
        randoms = [torch.empty_like(full) for _ in seeds]
        topk, sparse_mass = [], []
        for span in spans:
            a = attention[span].to(F64)
            vh = v[span]
            full[:, span] = (a @ vh).transpose(0, 1)
            keep, index = _keep_topk(a, k)
            kept = a * keep
            sparse[:, span] = (kept @ vh).transpose(0, 1)
            sparse_mass.append(kept.sum(-1).float())
            topk.append(index)
            del keep, kept
            mass, record.offset_count = _offset_sums(a)
            offset_mass.append(mass)
            sink_mass.append(a[:, :, 0].sum(-1))
            for seed, mixed in zip(seeds, randoms):
                index = random_index[seed][span].to(a.device)
                random_keep = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, index, True).tril_()
                mixed[:, span] = ((a * random_keep) @ vh).transpose(0, 1)
                del random_keep
            del a
        out = [F.linear(m.reshape(t, -1), o_weight, o_bias) for m in (full, sparse, *randoms)]
        error = float(frobenius_relative_error(record.o, out[0]))
        if not error <= RECONSTRUCTION_TOLERANCE:
            raise RuntimeError(
                f"layer {layer}: o_proj(A v) reproduces the attention output only to relative error {error:.3g} "
                f"(> {RECONSTRUCTION_TOLERANCE}); this attention is not softmax(QKᵀ)V followed by o_proj (clipped "
                "values, sinks, a bias on V?) — G10.5's sparse part cannot be computed for this architecture")
        record.o_sparse = out[1].float()
        record.o_random = [o.float() for o in out[2:]]
        record.topk, record.sparse_mass = torch.cat(topk), torch.cat(sparse_mass)
        record.offset_mass, record.sink_mass = torch.cat(offset_mass), torch.cat(sink_mass)


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
                      *, sparse: SparseSpec | None = None, rule_only: bool = False,
                      on_record: Callable[[int, SequenceCapture], None] | None = None,
                      workspace: Workspace | None = None, desc: str = "attention capture",
                      progress: bool | None = None
                      ) -> dict[int, list[SequenceCapture]]:
    """Run each token sequence alone (no padding) through the model and reduce, per layer, its attention input and
    output (with `sparse` also the sparse parts and the static rule's statistics; with `rule_only` of those only the
    static rule's). Each SequenceCapture goes to `on_record(layer, record)` on the device it was computed on; without
    it they are kept on the CPU and returned. A bounded `workspace` bounds the float64 copies of the attention weights
    the sparse parts are computed from (a chunk of heads in REDUCTION_SHARE of it; None: all heads at once)."""
    from pytest_ladder.models.capture import model_device
    from pytest_ladder.models.sequential import stopping_after
    from pytest_ladder.progress import bar

    kept: dict[int, list[SequenceCapture]] = {layer: [] for layer in layers}
    if on_record is None:
        def on_record(layer: int, record: SequenceCapture) -> None:
            kept[layer].append(record.to("cpu"))

    if rule_only and sparse is None:
        raise ValueError("attention_capture: rule_only needs a SparseSpec (the static rule reads attention weights)")
    reducer = _Reducer(model, adapter, layers, sparse, on_record, rule_only, workspace)
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
        heads = int(model.config.num_attention_heads)
        reducer.prefetch([(heads, len(sequence), len(sequence)) for sequence in sequences])
        with torch.no_grad(), context, stopping_after(model, max(layers)) as forward:
            for sequence in bar(sequences, desc=desc, enabled=progress):
                ids = torch.as_tensor([list(sequence)], dtype=torch.long, device=device)
                forward(input_ids=ids, use_cache=False)
    finally:
        reducer.close()
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return kept
