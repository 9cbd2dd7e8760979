"""Routing and activation capture (protocol §3: gates 2-4 need each expert's routed inputs X_e).

Hooks sit on the modules, not on F.linear (fused experts run grouped_mm, which bypasses linear hooks):
- a forward pre-hook on each MoE layer's experts module sees exactly what the experts compute on: the router
  input x_t (T, H) and the chosen top-k indices and weights. Expert e's routed inputs are the rows x_t with
  e ∈ topk(t); their Gram matrix G_e = Σ_t x_t x_tᵀ (= X_eᵀX_e for rows x_t) is accumulated in float64 (the
  products too, unless gram_products="float32") so that ‖(W − W')X_e‖²_F = tr(Δ G_e Δᵀ) can decide a gate. A
  layer keeps its routed inputs over batches and takes them in a pass of per-expert products (`gram_pass_bytes`
  at a time); on a GPU only the upper triangle is computed (the Grams are symmetric) and mirrored at the end: by
  cuBLAS DSYRK (models.cublas, half the float64 work in one launch per expert), else the column blocks on and
  above the diagonal (5/8 of the work in 4 blocks); a layer's last pass runs on a side stream while the layers
  after it compute (`gram_overlap`; such a capture runs layer by layer, see `capture`);
- a forward hook on the router keeps its logits; a pre-hook on self-attention gives the attention input Gram;
- expert outputs need the per-expert loop of weights.transformed_expert_outputs (a recording transform).

Only *points* are captured: non-padding positions, minus position 0 when `skip_prefix` (sequences start with the
BOS/EOS prefix token; see corpora.token_sequences). Points are numbered in sequence order, then position. Hooks
see tensors wherever accelerate runs the layer, so capture works under offload; Grams accumulate on `gram_device`
(default: where the activations are).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from pytest_ladder.models.adapters import MoEAdapter
from pytest_ladder.models.cublas import add_upper_gram
from pytest_ladder.models.weights import transformed_expert_outputs


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture. `layers` None: every MoE layer."""

    layers: tuple[int, ...] | None = None
    gram: bool = True  # per-expert Gram of routed inputs, float64 (E, H, H)
    topk: bool = True  # top-k indices (N, k) and weights (N, k) per point
    router_logits: bool = False  # (N, E)
    inputs: bool = False  # the MoE block input per point (N, H), float32; X_e = inputs[(topk_index == e).any(-1)]
    input_gram: bool = False  # Gram of the MoE block (router) input over all points (H, H), float64
    attention_input_gram: bool = False  # Gram of the self-attention input over all points (H, H), float64
    expert_outputs: bool = False  # each routed expert's output before its routing weight (per expert)
    gram_device: str | None = None
    gram_products: str = "float64"  # each pass's X_eᵀX_e in float64, or "float32" (then added to the float64 sum)
    gram_blocks: int | None = None  # column blocks of the symmetric expert Grams' upper half; None: by device
    gram_syrk: bool = True  # the upper half by cuBLAS DSYRK where it applies (float64 on a GPU), else the blocks
    gram_overlap: bool = True  # on a GPU: Gram passes on a side stream while later layers compute (see `capture`)
    gram_pass_bytes: int = 64 * 2**20  # routed inputs a layer keeps (at their dtype) before its Grams take them in
    skip_prefix: bool = True


@dataclass
class LayerCapture:
    """What one MoE layer saw over all points. `expert_tokens[e]` = number of points routed to expert e."""

    layer: int
    n_points: int = 0
    expert_tokens: torch.Tensor | None = None
    expert_gram: torch.Tensor | None = None
    topk_index: torch.Tensor | None = None
    topk_weight: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    input_gram: torch.Tensor | None = None
    attention_input_gram: torch.Tensor | None = None
    expert_outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # e -> (point index (n,), (n, H))

    def expert_usage(self) -> torch.Tensor:
        """Fraction of routed slots per expert: expert_tokens / (n_points · k), float64 (E,)."""
        counts = self.expert_tokens.to(torch.float64)
        return counts / counts.sum()


@dataclass
class Capture:
    """One capture run: per-layer results, the number of points and a hash of the token sequences used."""

    layers: dict[int, LayerCapture]
    n_points: int
    tokens_sha256: str
    spec: CaptureSpec = field(default_factory=CaptureSpec)

    def __getitem__(self, layer: int) -> LayerCapture:
        return self.layers[layer]


def tokens_sha256(sequences: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(torch.tensor(list(sequence), dtype=torch.int64).numpy().tobytes())
        digest.update(b"\xff" * 8)
    return digest.hexdigest()


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int, device: Any = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) for a batch of token lists (right padding leaves real positions
    and their causal context unchanged)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
        mask[row, :len(sequence)] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the embedding's execution device (accelerate) or the first real parameter's device."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def batches(sequences: Sequence[Sequence[int]], batch_size: int) -> Iterator[Sequence[Sequence[int]]]:
    for start in range(0, len(sequences), batch_size):
        yield sequences[start:start + batch_size]


CUDA_GRAM_BLOCKS = 4  # column blocks of the expert Grams' upper half on a GPU (benchmarks/capture_overhead.py)
GATHER_BYTES = 256 * 2**20  # routed rows converted for the products at a time


def gram_blocks(spec: CaptureSpec, device: torch.device) -> int:
    """How many column blocks the expert Grams' upper half is computed in: the spec's, else CUDA_GRAM_BLOCKS on a
    GPU and 1 (the whole product) elsewhere."""
    if spec.gram_blocks is not None:
        if spec.gram_blocks < 1:
            raise ValueError(f"CaptureSpec.gram_blocks must be >= 1, got {spec.gram_blocks}")
        return spec.gram_blocks
    return CUDA_GRAM_BLOCKS if device.type == "cuda" else 1


def column_spans(size: int, blocks: int) -> list[slice]:
    """`blocks` contiguous column ranges covering range(size), as equal as integers allow."""
    edges = [round(i * size / blocks) for i in range(blocks + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def add_upper_products(total: torch.Tensor, rows: torch.Tensor, spans: list[slice], *, syrk: bool = True) -> None:
    """total (H, H) += rowsᵀ rows (rows (n, H)) on the column blocks on and above the diagonal only, one product
    per row panel (block row i times the columns from span i's start on), summed into `total` by the product itself
    where the dtypes agree; with several spans and `syrk`, the upper triangle in one cuBLAS DSYRK where it applies
    (models.cublas: float64 on a GPU). With one span this is the whole product; `mirror_lower` fills the rest."""
    if syrk and len(spans) > 1 and add_upper_gram(total, rows):
        return
    for span in spans:
        target, left, right = total[span, span.start:], rows[:, span].T, rows[:, span.start:]
        if rows.dtype == total.dtype:
            target.addmm_(left, right)
        else:
            target += (left @ right).to(total.dtype)


def mirror_lower(total: torch.Tensor, spans: list[slice]) -> None:
    """Make the symmetric (E, H, H) matrices whose column blocks on and above the diagonal (`add_upper_products`)
    hold the sums exactly symmetric: the blocks below the diagonal become the transposes of those above, and each
    diagonal block its upper triangle mirrored. One span: whole products were summed, left as they are."""
    if len(spans) == 1:
        return
    for i, upper in enumerate(spans):
        diagonal = total[:, upper, upper]
        diagonal.copy_(diagonal.triu() + diagonal.triu(1).mT)
        for lower in spans[i + 1:]:
            total[:, lower, upper] = total[:, upper, lower].mT


def points_by_expert(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The point of every route in `index` (N, k), the routes sorted by expert (stably: by point, then slot)."""
    order = torch.argsort(index.reshape(-1).to(device), stable=True)
    return torch.div(order, index.shape[-1], rounding_mode="floor")


def add_expert_grams(total: torch.Tensor, x: torch.Tensor, index: torch.Tensor, counts: Sequence[int],
                     spans: list[slice], dtype: torch.dtype, gather_bytes: int = GATHER_BYTES, *,
                     syrk: bool = True) -> None:
    """total[e] (E, H, H) += X_eᵀX_e for every expert e, X_e the rows of x (N, H) that `index` (N, k) routes to e;
    `counts` the number of rows per expert (a list read back once). The routed rows are sorted by expert (stably: by
    point, then slot) and gathered at most `gather_bytes` of `dtype` at a time, converted (exactly, from bf16 or
    float32) on `total`'s device; each expert's rows go through `add_upper_products` (`syrk` passed on).
    (Zero-padded stacks of several experts in one batched product measured no faster on an H200 in
    benchmarks/gram_products.py and capture_overhead.py.)"""
    points = points_by_expert(index, x.device)
    bounds = [0]
    for count in counts:
        bounds.append(bounds[-1] + int(count))
    step = max(1, gather_bytes // (x.shape[1] * torch.finfo(dtype).bits // 8))
    for first in range(0, bounds[-1], step):
        last = min(first + step, bounds[-1])
        rows = x.index_select(0, points[first:last]).to(device=total.device, dtype=dtype)
        for expert in range(len(counts)):
            lo, hi = max(bounds[expert], first), min(bounds[expert + 1], last)
            if hi > lo:
                add_upper_products(total[expert], rows[lo - first:hi - first], spans, syrk=syrk)


class _Recorder:
    """Hook state of one capture run."""

    def __init__(self, adapter: MoEAdapter, spec: CaptureSpec, layers: list[int]) -> None:
        self.adapter = adapter
        self.spec = spec
        self.results = {layer: LayerCapture(layer) for layer in layers}
        self.lists: dict[int, dict[str, list]] = {layer: {} for layer in layers}
        self.outputs: dict[int, dict[int, list]] = {layer: {} for layer in layers}
        self.pending: dict[int, torch.Tensor] = {}  # layer -> top_k_index of the current call (expert outputs)
        self.valid: torch.Tensor | None = None  # flattened point mask of the current batch (B*T,)
        self.point_of: torch.Tensor | None = None  # flattened position -> global point index
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.offset = 0
        self.spans: dict[int, list[slice]] = {}  # layer -> column blocks of its expert Grams' products
        self.kept: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}  # layer -> routed inputs,
        # routes and per-expert counts (on the CPU) not yet summed
        self.current = 0  # the batch the hooks see
        self.side: torch.cuda.Stream | None = None  # where Gram passes run when they overlap the forward

    def prepare(self, valids: Sequence[torch.Tensor]) -> None:
        """The point masks (B, T) of every batch, in order: points are numbered across batches."""
        self.batches = []
        for valid in valids:
            flat = valid.reshape(-1)
            self.batches.append((flat, torch.cumsum(flat.long(), 0) - 1 + self.offset))
            self.offset += int(flat.sum())

    def select(self, index: int) -> None:
        """The hooks that fire next see batch `index` (a plain forward, or one layer's call in layer order)."""
        self.valid, self.point_of = self.batches[index]
        self.current = index

    def _mask(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[self.valid.to(tensor.device)]

    def _accumulate(self, result: LayerCapture, attribute: str, gram: torch.Tensor) -> None:
        gram = gram.double()
        current = getattr(result, attribute)
        setattr(result, attribute, gram if current is None else current + gram)

    def _gram_input(self, x: torch.Tensor) -> torch.Tensor:
        device = self.spec.gram_device or x.device
        dtype = torch.float64 if self.spec.gram_products == "float64" else torch.float32
        return x.detach().to(device=device, dtype=dtype)

    def _expert_grams(self, result: LayerCapture, x: torch.Tensor, index: torch.Tensor, counts: torch.Tensor
                      ) -> None:
        """Keep this call's routed inputs (N, H), routes (N, k) and counts per expert (E,) until the layer has
        `gram_pass_bytes` of them or sees its last batch, then add their per-expert Grams in one pass (`_flush`):
        few large products, not one small one per batch."""
        device = torch.device(self.spec.gram_device or x.device)
        if result.expert_gram is None:
            n_experts, h = self.adapter.n_experts, x.shape[1]
            result.expert_gram = torch.zeros((n_experts, h, h), dtype=torch.float64, device=device)
            self.spans[result.layer] = column_spans(h, gram_blocks(self.spec, device))
        if index.numel() == 0:
            return
        kept = self.kept.setdefault(result.layer, [])
        kept.append((x.detach().to(device), index.detach().to(device), counts))
        if (self.current == len(self.batches) - 1
                or sum(part.numel() * part.element_size() for part, _, _ in kept) >= self.spec.gram_pass_bytes):
            self._flush(result)

    def _stream(self, device: torch.device) -> torch.cuda.Stream | None:
        """The side stream Gram passes run on (GPU, `gram_overlap`), else None (they run in line)."""
        if device.type != "cuda" or not self.spec.gram_overlap:
            return None
        if self.side is None or self.side.device != device:
            self.side = torch.cuda.Stream(device)
        return self.side

    def _flush(self, result: LayerCapture) -> None:
        """One Gram pass over what the layer kept. On a GPU it is queued on a side stream that first waits for
        everything queued so far (the kept tensors are complete), so the layers after this one compute while the
        products run; the host reads nothing back from it (the counts came from the hook), and `finish` waits for
        it before the Grams are read."""
        kept = self.kept.pop(result.layer, [])
        if not kept:
            return
        counts = sum(part for _, _, part in kept).tolist()
        dtype = torch.float64 if self.spec.gram_products == "float64" else torch.float32
        total, spans = result.expert_gram, self.spans[result.layer]
        stream = self._stream(total.device)
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(total.device))
            for tensor in [total] + [t for x, index, _ in kept for t in (x, index)]:
                tensor.record_stream(stream)  # kept from the main stream's next allocations until the pass is done
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            x, index = torch.cat([part for part, _, _ in kept]), torch.cat([part for _, part, _ in kept])
            add_expert_grams(total, x, index, counts, spans, dtype, syrk=self.spec.gram_syrk)

    def experts_pre(self, layer: int, args: tuple, kwargs: dict) -> None:
        """Reads back what goes to the CPU (counts, top-k, inputs: one wait for the GPU), then keeps the routed
        inputs for the layer's next Gram pass."""
        names = ("hidden_states", "top_k_index", "top_k_weights")
        values = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
        hidden, top_k_index, top_k_weights = values
        if top_k_index is None:  # GPT-OSS spells them router_indices / routing_weights
            top_k_index, top_k_weights = kwargs.get("router_indices"), kwargs.get("routing_weights")
        result, lists = self.results[layer], self.lists[layer]
        x, index, weight = self._mask(hidden), self._mask(top_k_index), self._mask(top_k_weights)
        result.n_points += x.shape[0]
        counts = torch.bincount(index.reshape(-1), minlength=self.adapter.n_experts)
        on_cpu = counts.cpu()
        result.expert_tokens = on_cpu if result.expert_tokens is None else result.expert_tokens + on_cpu
        if self.spec.topk:
            lists.setdefault("topk_index", []).append(index.detach().cpu())
            lists.setdefault("topk_weight", []).append(weight.detach().float().cpu())
        if self.spec.inputs:
            lists.setdefault("inputs", []).append(x.detach().float().cpu())
        if self.spec.expert_outputs:
            self.pending[layer] = top_k_index.detach()
        if self.spec.input_gram:
            x_gram = self._gram_input(x)
            self._accumulate(result, "input_gram", (x_gram.T @ x_gram).double())
        if self.spec.gram:
            self._expert_grams(result, x, index, on_cpu)

    def router_post(self, layer: int, output: Any) -> None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        self.lists[layer].setdefault("router_logits", []).append(self._mask(logits).detach().float().cpu())

    def attention_pre(self, layer: int, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        x = self._gram_input(self._mask(hidden.reshape(-1, hidden.shape[-1])))
        self._accumulate(self.results[layer], "attention_input_gram", x.T @ x)

    def expert_output(self, layer: int, expert: int, output: torch.Tensor) -> torch.Tensor:
        """Recording transform (identity): rows are in the eager loop's order, torch.where(top_k_index.T == e)."""
        index = self.pending[layer]
        _, token = torch.where(index.T == expert)
        keep = self.valid.to(token.device)[token]
        points = self.point_of.to(token.device)[token[keep]]
        self.outputs[layer].setdefault(expert, []).append((points.cpu(), output[keep].detach().float().cpu()))
        return output

    def finish(self) -> dict[int, LayerCapture]:
        for layer, result in self.results.items():
            if result.expert_gram is not None:
                self._flush(result)
                if self.side is not None:
                    torch.cuda.current_stream(result.expert_gram.device).wait_stream(self.side)
                mirror_lower(result.expert_gram, self.spans[layer])
            for name, parts in self.lists[layer].items():
                setattr(result, name, torch.cat(parts) if parts else None)
            if self.spec.expert_outputs:
                result.expert_outputs = {}
                for expert, parts in sorted(self.outputs[layer].items()):
                    points = torch.cat([p for p, _ in parts])
                    values = torch.cat([v for _, v in parts])
                    order = torch.argsort(points, stable=True)
                    result.expert_outputs[expert] = (points[order], values[order])
            if result.expert_tokens is None:
                result.expert_tokens = torch.zeros(self.adapter.n_experts, dtype=torch.long)
        return self.results


@contextlib.contextmanager
def _hooks(recorder: _Recorder, adapter: MoEAdapter, layers: list[int]) -> Iterator[None]:
    handles = []
    spec = recorder.spec
    try:
        for layer in layers:
            handles.append(adapter.experts_module(layer).register_forward_pre_hook(
                lambda module, args, kwargs, layer=layer: recorder.experts_pre(layer, args, kwargs),
                with_kwargs=True))
            if spec.router_logits:
                handles.append(adapter.router_module(layer).register_forward_hook(
                    lambda module, args, output, layer=layer: recorder.router_post(layer, output)))
            if spec.attention_input_gram:
                handles.append(adapter.decoder_layers()[layer].self_attn.register_forward_pre_hook(
                    lambda module, args, kwargs, layer=layer: recorder.attention_pre(layer, args, kwargs),
                    with_kwargs=True))
        if spec.expert_outputs:
            with transformed_expert_outputs(adapter, recorder.expert_output, layers):
                yield
        else:
            yield
    finally:
        for handle in handles:
            handle.remove()


def capture(model: nn.Module, adapter: MoEAdapter, sequences: Sequence[Sequence[int]],
            spec: CaptureSpec = CaptureSpec(), *, batch_size: int = 8, pad_token_id: int = 0,
            desc: str = "capture", progress: bool | None = None, sequential: bool | None = None) -> Capture:
    """Run `sequences` (token lists, each starting with the prefix token) through the model in batches and record
    what `spec` asks for at its MoE layers (see the module docstring for what a point is). Layers after the last
    recorded one are not run; an offloaded model runs layer by layer (models.sequential), and so does a capture of
    expert Grams on a GPU with `gram_overlap`: each layer's Gram pass, queued on a side stream after the layer's
    last batch, then runs while every batch goes through the layers after it. `sequential` forces either path."""
    if not sequences:
        raise ValueError("capture needs at least one sequence")
    from pytest_ladder.models.sequential import forward_batches, supports_sequential

    layers = list(spec.layers) if spec.layers is not None else adapter.moe_layers()
    recorder = _Recorder(adapter, spec, layers)
    device = model_device(model)
    padded = [pad_batch(batch, pad_token_id, device) for batch in batches(sequences, batch_size)]
    valids = []
    for _, mask in padded:
        valid = mask.bool().clone()
        if spec.skip_prefix:
            valid[:, 0] = False
        valids.append(valid)
    recorder.prepare(valids)
    if sequential is None and spec.gram and spec.gram_overlap and device.type == "cuda" and supports_sequential(model):
        sequential = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(recorder, adapter, layers):
            for _ in forward_batches(model, padded, logits=False, sequential=sequential,
                                     last_layer=max(layers) if layers else None, before_batch=recorder.select,
                                     desc=desc, progress=progress):
                pass
    finally:
        model.train(was_training)
    return Capture(recorder.finish(), recorder.offset, tokens_sha256(sequences), spec)


def capture_tasks(model: nn.Module, adapter: MoEAdapter, sequences: dict[str, Sequence[Sequence[int]]],
                  spec: CaptureSpec = CaptureSpec(), **options: Any) -> dict[str, Capture]:
    """One capture per task (same spec), e.g. the calibration or held-out token sequences of code, math, text."""
    return {task: capture(model, adapter, seqs, spec, desc=f"capture {task}", **options)
            for task, seqs in sequences.items()}


__all__ = ["CaptureSpec", "Capture", "LayerCapture", "capture", "capture_tasks", "pad_batch", "model_device",
           "tokens_sha256"]
