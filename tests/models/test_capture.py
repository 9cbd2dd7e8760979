"""Capture: per-expert Grams equal X_eᵀX_e of the routed tokens computed by hand; padding and the prefix are not
points; captures are the same with and without disk offload and across batch sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytest_ladder.models.adapters import adapter_for
from pytest_ladder.models.capture import (CUDA_GRAM_BLOCKS, GATHER_BYTES, CaptureSpec, _Recorder, add_expert_grams,
                                          add_upper_products, capture, column_spans, gram_blocks, mirror_lower,
                                          pad_batch)
from pytest_ladder.models.cublas import add_upper_gram
from pytest_ladder.models.cublas import available as cublas_available

FULL = CaptureSpec(router_logits=True, inputs=True, input_gram=True, attention_input_gram=True)


@pytest.fixture(scope="module")
def model(tiny_folder, load_tiny):
    return load_tiny(tiny_folder)


@pytest.fixture(scope="module")
def captured(model, sequences):
    """Unbatched, like the hand computation (same shapes, same float32 sums)."""
    return capture(model, adapter_for(model), sequences, FULL, batch_size=1, pad_token_id=1, progress=False)


@pytest.fixture(scope="module")
def by_hand(model, sequences):
    """MoE and attention inputs per point from norm-output hooks, one unpadded sequence at a time; routing by the
    OLMoE rule written out: softmax(x Wᵀ), top-2."""
    moe_in: dict[int, list] = {i: [] for i in range(4)}
    attn_in: dict[int, list] = {i: [] for i in range(4)}
    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.post_attention_layernorm.register_forward_hook(
            lambda m, a, out, i=i: moe_in[i].append(out[0, 1:].detach())))
        handles.append(layer.input_layernorm.register_forward_hook(
            lambda m, a, out, i=i: attn_in[i].append(out[0, 1:].detach())))
    with torch.no_grad():
        for sequence in sequences:
            model(input_ids=torch.tensor([sequence]))
    for handle in handles:
        handle.remove()
    return {i: torch.cat(moe_in[i]) for i in range(4)}, {i: torch.cat(attn_in[i]) for i in range(4)}


def test_points_exclude_padding_and_prefix(captured, sequences):
    n_points = sum(len(s) - 1 for s in sequences)
    assert captured.n_points == n_points
    for layer in range(4):
        result = captured[layer]
        assert result.n_points == n_points
        assert result.topk_index.shape == (n_points, 2) and result.inputs.shape == (n_points, 32)
        assert int(result.expert_tokens.sum()) == 2 * n_points


def test_expert_grams_equal_routed_inputs_by_hand(model, captured, by_hand):
    moe_in, _ = by_hand
    for layer in range(4):
        x = moe_in[layer]
        assert torch.equal(captured[layer].inputs, x)
        weight = model.model.layers[layer].mlp.gate.weight.detach()
        chosen = torch.topk(F.softmax(x @ weight.T, dim=-1), 2, dim=-1).indices
        assert torch.equal(chosen, captured[layer].topk_index)
        for expert in range(8):
            rows = x[(chosen == expert).any(dim=-1)].double()
            assert int(captured[layer].expert_tokens[expert]) == rows.shape[0]
            torch.testing.assert_close(captured[layer].expert_gram[expert], rows.T @ rows, rtol=1e-9, atol=1e-9)
        x64 = x.double()
        torch.testing.assert_close(captured[layer].input_gram, x64.T @ x64, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("routing", ["balanced", "skewed"])
@pytest.mark.parametrize("pass_bytes", [10**9, 1])
def test_expert_grams_by_hand(model, routing, blocks, pass_bytes):
    """Grams of balanced routing and of skewed routing (every point on expert 0 and one other) equal X_eᵀX_e by hand,
    whole or as upper column blocks mirrored at the end (then exactly symmetric), taken in one pass at the layer's
    last batch or a pass per batch; an expert nobody chose keeps an exact 0."""
    recorder = _Recorder(adapter_for(model), CaptureSpec(gram_blocks=blocks, gram_pass_bytes=pass_bytes), [0])
    recorder.prepare([torch.ones(1, 32, dtype=torch.bool)] * 2)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if routing == "balanced":  # 16 rows per expert of the 8 (every expert but 7), 128 routed rows
        index = torch.stack([torch.arange(64) % 7, (torch.arange(64) + 3) % 7], dim=1)
    else:
        index = torch.stack([torch.zeros(64, dtype=torch.long), 1 + torch.arange(64) % 6], dim=1)
    result = recorder.results[0]
    for batch, half in enumerate((slice(0, 32), slice(32, 64))):  # two batches accumulate
        recorder.select(batch)
        recorder._expert_grams(result, x[half], index[half], torch.bincount(index[half].reshape(-1), minlength=8))
        assert (0 in recorder.kept) == (pass_bytes > 1 and batch == 0)  # the last batch takes the pass
    recorder.finish()
    for expert in range(8):
        rows = x[(index == expert).any(dim=-1)]
        torch.testing.assert_close(result.expert_gram[expert], rows.T @ rows, rtol=1e-12, atol=1e-12)
    if blocks > 1:
        assert torch.equal(result.expert_gram, result.expert_gram.transpose(1, 2))
    assert torch.equal(result.expert_gram[7], torch.zeros(32, 32, dtype=torch.float64))


@pytest.mark.parametrize("gather_bytes", [GATHER_BYTES, 8 * 10 * 7])
def test_expert_grams_gathered_in_pieces(gather_bytes):
    """Grams from bf16 inputs converted exactly are the same gathered all at once or 7 rows at a time (pieces that
    split experts); float32 products of exact inputs added to float64 sums agree to float32 rounding."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 10, generator=g).to(torch.bfloat16)
    index = torch.argsort(torch.rand(40, 5, generator=g), dim=1)[:, :2]
    counts = torch.bincount(index.reshape(-1), minlength=5).tolist()
    spans = column_spans(10, 3)
    total = torch.zeros(5, 10, 10, dtype=torch.float64)
    add_expert_grams(total, x, index, counts, spans, torch.float64, gather_bytes)
    mirror_lower(total, spans)
    total32 = torch.zeros(5, 10, 10, dtype=torch.float64)
    add_expert_grams(total32, x, index, counts, spans, torch.float32, gather_bytes)
    mirror_lower(total32, spans)
    for expert in range(5):
        rows = x[(index == expert).any(dim=-1)].double()
        torch.testing.assert_close(total[expert], rows.T @ rows, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(total32[expert], rows.T @ rows, rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("syrk", [True, False])
def test_expert_grams_on_cuda_upper_blocks_equal_the_cpu_sums(syrk):
    """On a GPU the default upper half (cuBLAS DSYRK, or CUDA_GRAM_BLOCKS upper column blocks), mirrored, gives the
    CPU's whole float64 products to float64 rounding, exactly symmetric, from bf16 routed inputs as OLMoE's."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=g).to(torch.bfloat16)
    index = torch.argsort(torch.rand(300, 8, generator=g), dim=1)[:, :2]
    counts = torch.bincount(index.reshape(-1), minlength=8).tolist()
    spans = column_spans(64, gram_blocks(CaptureSpec(), torch.device("cuda")))
    assert len(spans) == CUDA_GRAM_BLOCKS > 1
    on_gpu = torch.zeros(8, 64, 64, dtype=torch.float64, device="cuda")
    add_expert_grams(on_gpu, x.cuda(), index.cuda(), counts, spans, torch.float64, syrk=syrk)
    mirror_lower(on_gpu, spans)
    on_cpu = torch.zeros(8, 64, 64, dtype=torch.float64)
    add_expert_grams(on_cpu, x, index, counts, column_spans(64, 1), torch.float64)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-12, atol=1e-12)
    assert torch.equal(on_gpu, on_gpu.mT)


def test_dsyrk_applies_only_to_float64_on_a_gpu():
    """On the CPU (or for other dtypes) models.cublas does nothing and says so: the block products run instead."""
    rows = torch.randn(5, 4, dtype=torch.float64)
    total = torch.full((4, 4), 7.0, dtype=torch.float64)
    assert not add_upper_gram(total, rows) and torch.equal(total, torch.full((4, 4), 7.0, dtype=torch.float64))
    assert not add_upper_gram(total.float(), rows.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dsyrk_adds_the_upper_triangle_and_leaves_the_rest():
    """cuBLAS DSYRK through torch's handle: on and above the diagonal total += rowsᵀrows (the same sums as torch's
    float64 product to float64 rounding), below it untouched; a row-strided view of rows is refused, not misread."""
    assert cublas_available()
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(37, 24, generator=g, dtype=torch.float64).cuda()
    start = torch.randn(24, 24, generator=g, dtype=torch.float64).cuda()
    total = start.clone()
    assert add_upper_gram(total, rows)
    upper = torch.ones(24, 24, dtype=torch.bool, device="cuda").triu()
    torch.testing.assert_close(total[upper], (start + rows.T @ rows)[upper], rtol=1e-14, atol=1e-14)
    assert torch.equal(total[~upper], start[~upper])
    assert not add_upper_gram(total, rows.T.contiguous().T) and not add_upper_gram(total, rows[::2])


@pytest.mark.parametrize("blocks", [1, 2, 4, 7])
def test_upper_panels_mirrored_equal_the_whole_product(blocks):
    """add_upper_products then mirror_lower gives rowsᵀrows per matrix to float64 rounding, for spans of unequal
    widths."""
    stack = torch.randn(3, 11, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    spans = column_spans(10, blocks)
    assert spans[0].start == 0 and spans[-1].stop == 10 and len(spans) == blocks
    total = torch.zeros(3, 10, 10, dtype=torch.float64)
    for _ in range(2):
        for matrix, rows in zip(total, stack):
            add_upper_products(matrix, rows, spans)
    mirror_lower(total, spans)
    torch.testing.assert_close(total, 2 * torch.bmm(stack.transpose(1, 2), stack), rtol=1e-14, atol=1e-14)
    if blocks > 1:
        assert torch.equal(total, total.transpose(1, 2))


def test_gram_blocks_by_device_and_spec():
    assert gram_blocks(CaptureSpec(), torch.device("cpu")) == 1
    assert gram_blocks(CaptureSpec(), torch.device("cuda")) == CUDA_GRAM_BLOCKS
    assert gram_blocks(CaptureSpec(gram_blocks=2), torch.device("cpu")) == 2
    with pytest.raises(ValueError, match="gram_blocks must be >= 1, got 0"):
        gram_blocks(CaptureSpec(gram_blocks=0), torch.device("cpu"))


def test_attention_input_gram_by_hand(captured, by_hand):
    _, attn_in = by_hand
    for layer in range(4):
        x = attn_in[layer].double()
        torch.testing.assert_close(captured[layer].attention_input_gram, x.T @ x, rtol=1e-9, atol=1e-9)


def test_router_logits_and_route_rule(model, captured):
    adapter = adapter_for(model)
    for layer in range(4):
        result = captured[layer]
        torch.testing.assert_close(result.router_logits, adapter.router_logits(layer, result.inputs), rtol=1e-5,
                                   atol=1e-5)
        index, weight = adapter.route(result.router_logits, layer)
        assert torch.equal(index, result.topk_index)
        torch.testing.assert_close(weight, result.topk_weight, rtol=1e-6, atol=1e-7)


def test_expert_outputs_match_the_expert_on_its_routed_points(model, sequences):
    """Expert outputs come from the per-expert loop (weights.transformed_expert_outputs), whose sums differ from
    grouped_mm by rounding, so inputs and outputs are compared within this one capture."""
    adapter = adapter_for(model)
    spec = CaptureSpec(gram=False, inputs=True, expert_outputs=True, layers=(0, 3))
    captured = capture(model, adapter, sequences, spec, batch_size=4, pad_token_id=1, progress=False)
    for layer in (0, 3):
        result = captured[layer]
        for expert, (points, outputs) in result.expert_outputs.items():
            routed = torch.nonzero((result.topk_index == expert).any(dim=-1)).squeeze(-1)
            assert torch.equal(points, routed)
            torch.testing.assert_close(outputs, adapter.expert_forward(layer, expert, result.inputs[points]),
                                       rtol=1e-5, atol=1e-6)
        assert sum(len(p) for p, _ in result.expert_outputs.values()) == 2 * result.n_points


def test_capture_is_the_same_with_disk_offload_and_batching(tiny_folder, load_tiny, tmp_path, captured,
                                                                  sequences):
    offloaded = load_tiny(tiny_folder, tmp_path / "offload")
    assert any(p.device.type == "meta" for p in offloaded.parameters())
    other = capture(offloaded, adapter_for(offloaded), sequences, FULL, batch_size=5, pad_token_id=1,
                    progress=False)
    assert other.tokens_sha256 == captured.tokens_sha256 and other.n_points == captured.n_points
    for layer in range(4):
        a, b = captured[layer], other[layer]
        assert torch.equal(a.topk_index, b.topk_index) and torch.equal(a.expert_tokens, b.expert_tokens)
        # padded batches of 5 sum in another order than single sequences: float32 rounding only
        torch.testing.assert_close(a.expert_gram, b.expert_gram, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.attention_input_gram, b.attention_input_gram, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pass_bytes", [64 * 2**20, 1])
def test_gram_passes_on_a_side_stream_equal_those_in_line(tiny_folder, load_tiny, sequences, pass_bytes):
    """On a GPU the default capture runs layer by layer with each Gram pass on a side stream, overlapping the layers
    after it: the same Grams (to float64 rounding, exactly symmetric) and top-k as passes in line with a plain
    forward, for one pass per layer and a pass per batch."""
    gpu = load_tiny(tiny_folder, device_map={"": "cuda"})
    adapter = adapter_for(gpu)
    runs = [capture(gpu, adapter, sequences, CaptureSpec(gram_pass_bytes=pass_bytes, gram_overlap=overlap),
                    batch_size=3, pad_token_id=1, progress=False, sequential=None if overlap else False)
            for overlap in (True, False)]
    for layer in range(4):
        side, in_line = runs[0][layer], runs[1][layer]
        assert torch.equal(side.topk_index, in_line.topk_index) and torch.equal(side.expert_tokens,
                                                                                 in_line.expert_tokens)
        torch.testing.assert_close(side.expert_gram, in_line.expert_gram, rtol=1e-12, atol=1e-12)
        assert torch.equal(side.expert_gram, side.expert_gram.mT)


def test_selected_layers_and_prefix_points(model, sequences):
    spec = CaptureSpec(layers=(2,), skip_prefix=False)
    result = capture(model, adapter_for(model), sequences[:3], spec, pad_token_id=1, progress=False)
    assert list(result.layers) == [2]
    assert result.n_points == sum(len(s) for s in sequences[:3])
    assert result[2].router_logits is None and result[2].inputs is None


def test_pad_batch_right_pads():
    ids, mask = pad_batch([[0, 5, 6], [0]], pad_token_id=1)
    assert ids.tolist() == [[0, 5, 6], [0, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
