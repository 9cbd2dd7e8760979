"""Layer-sequential execution (models.sequential) equals the plain forward: captures (Grams, top-k, inputs, expert
outputs) exactly and NLL to float64 rounding, in memory and with layers on disk; a capture of early layers stops
after the last one; every adapter architecture whose layers share one attention type gives the same logits."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.models.adapters import adapter_for
from pytest_ladder.models.capture import CaptureSpec, capture, pad_batch
from pytest_ladder.models.nll import rolling_nll
from pytest_ladder.models.sequential import forward_batches, is_offloaded, resident, supports_sequential

SPEC = CaptureSpec(router_logits=True, inputs=True, input_gram=True, attention_input_gram=True)


@pytest.fixture(scope="module")
def model(tiny_folder, load_tiny):
    return load_tiny(tiny_folder)


@pytest.fixture(scope="module")
def offloaded(tiny_folder, load_tiny, tmp_path_factory):
    loaded = load_tiny(tiny_folder, tmp_path_factory.mktemp("offload"))
    assert is_offloaded(loaded)
    return loaded


def _capture(model, sequences, sequential, spec=SPEC):
    return capture(model, adapter_for(model), sequences, spec, batch_size=5, pad_token_id=1, progress=False,
                   sequential=sequential)


def _assert_same(a, b, layers):
    assert a.n_points == b.n_points and a.tokens_sha256 == b.tokens_sha256
    for layer in layers:
        x, y = a[layer], b[layer]
        for name in ("topk_index", "topk_weight", "inputs", "router_logits", "expert_tokens", "expert_gram",
                     "input_gram", "attention_input_gram"):
            left, right = getattr(x, name), getattr(y, name)
            assert (left is None) == (right is None), name
            if left is not None:
                assert torch.equal(left, right), f"layer {layer} {name}"


def test_sequential_capture_equals_plain_in_memory(model, sequences):
    _assert_same(_capture(model, sequences, False), _capture(model, sequences, True), range(4))


def test_offloaded_capture_runs_layer_by_layer_and_equals_in_memory(model, offloaded, sequences):
    """The offloaded model picks the sequential path by itself; its weights are the same bits, so is the capture."""
    _assert_same(_capture(model, sequences, False), _capture(offloaded, sequences, None), range(4))
    _assert_same(_capture(offloaded, sequences, False), _capture(offloaded, sequences, True), range(4))
    assert all(p.device.type == "meta" for n, p in offloaded.named_parameters() if ".layers.1." in n)


def test_expert_outputs_are_the_same_layer_by_layer(model, sequences):
    spec = CaptureSpec(gram=False, expert_outputs=True, layers=(0, 3))
    plain, sequential = _capture(model, sequences, False, spec), _capture(model, sequences, True, spec)
    for layer in (0, 3):
        a, b = plain[layer].expert_outputs, sequential[layer].expert_outputs
        assert a.keys() == b.keys()
        for expert in a:
            assert torch.equal(a[expert][0], b[expert][0]) and torch.equal(a[expert][1], b[expert][1])


def test_capture_of_early_layers_runs_no_later_layer(model, sequences):
    full = _capture(model, sequences, False)
    calls = []
    handle = model.model.layers[2].register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        for sequential in (False, True):
            _assert_same(_capture(model, sequences, sequential, CaptureSpec(**{**SPEC.__dict__, "layers": (0, 1)})),
                         full, (0, 1))
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("which", ["memory", "offloaded"])
def test_nll_layer_by_layer_equals_plain(model, offloaded, tiny_tokenizer, texts, which):
    chosen = model if which == "memory" else offloaded
    docs = texts["text"][:6] + texts["code"][:3]
    plain = rolling_nll(model, tiny_tokenizer, docs, max_length=32, batch_size=4, progress=False, sequential=False)
    layered = rolling_nll(chosen, tiny_tokenizer, docs, max_length=32, batch_size=4, progress=False,
                          sequential=True)
    assert (layered.tokens, layered.windows) == (plain.tokens, plain.windows)
    assert layered.nats == pytest.approx(plain.nats, rel=1e-12, abs=0)
    assert layered.per_document == pytest.approx(plain.per_document, rel=1e-12, abs=0)


def test_resident_loads_once_and_puts_placeholders_back(offloaded):
    layer = offloaded.model.layers[1]
    assert all(p.device.type == "meta" for p in layer.parameters())
    with resident(layer):
        assert all(p.device.type == "cpu" for p in layer.parameters())
    assert all(p.device.type == "meta" for p in layer.parameters())


def test_every_architecture_gives_plain_logits_layer_by_layer():
    from test_adapters import configs

    for name, config in configs().items():
        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config).eval()
        ids, mask = pad_batch([[1, 5, 9, 3, 7, 11], [1, 4, 4]], pad_token_id=0)
        with torch.no_grad():
            plain = [lg for _, lg in forward_batches(model, [(ids, mask)], sequential=False, progress=False)]
            if not supports_sequential(model):
                assert name == "gpt_oss"
                continue
            layered = [lg for _, lg in forward_batches(model, [(ids, mask)], sequential=True, progress=False)]
        real = mask.bool()
        torch.testing.assert_close(layered[0][real], plain[0][real], rtol=0, atol=0, msg=name)
