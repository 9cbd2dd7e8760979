"""Rolling NLL: lm-eval's windows (checked by hand), sums equal to transformers' own loss on the same windows,
independent of batching."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.models.corpora import Document, SourceFile, build_corpus, document_id
from pytest_ladder.models.nll import default_max_length, prefix_token_id, rolling_nll, rolling_windows, task_nll


@pytest.fixture(scope="module")
def model(tiny_folder, load_tiny):
    return load_tiny(tiny_folder)


def test_rolling_windows_by_hand():
    t = list(range(101, 111))  # t1..t10
    assert rolling_windows(t, 0, 4) == [
        ([0], [101, 102, 103, 104]),  # first token conditioned on the prefix alone
        ([104], [105, 106, 107, 108]),  # disjoint targets; inputs t4..t7
        ([106, 107, 108], [109, 110]),  # short last window keeps max_length inputs: t6..t9
    ]
    assert rolling_windows(t, 7, 10) == [([7], t)]
    assert rolling_windows(t, 7, 20) == [([7], t)]
    assert rolling_windows([], 7, 4) == []
    assert rolling_windows([5], 7, 1) == [([7], [5])]


@pytest.mark.parametrize("n", [1, 2, 5, 9, 16, 17, 33])
@pytest.mark.parametrize("max_length", [1, 2, 4, 16])
def test_windows_partition_the_document_and_fit(n, max_length):
    tokens = list(range(1000, 1000 + n))
    windows = rolling_windows(tokens, 0, max_length)
    assert [token for _, continuation in windows for token in continuation] == tokens
    for context, continuation in windows:
        inputs = (context + continuation)[:-1]
        assert 1 <= len(continuation) <= max_length and len(inputs) <= max_length
        # every window after the first feeds max_length inputs (full context), the first one the prefix + its span
        assert len(inputs) == (len(continuation) if context == [0] else max_length)


def reference_nll(model, windows) -> float:
    """Σ over windows of transformers' own mean cross-entropy × count, with the context positions ignored (-100)."""
    total = 0.0
    with torch.no_grad():
        for context, continuation in windows:
            ids = torch.tensor([context + continuation])
            labels = torch.tensor([[-100] * len(context) + continuation])
            total += float(model(input_ids=ids, labels=labels).loss) * len(continuation)
    return total


def test_nll_equals_transformers_loss_on_hand_written_windows(model, tiny_tokenizer, texts):
    ids = tiny_tokenizer(texts["text"][0], add_special_tokens=False)["input_ids"][:10]
    text = tiny_tokenizer.decode(ids)
    assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    t = ids
    windows = [([0], t[0:4]), ([t[3]], t[4:8]), (t[5:8], t[8:10])]  # max_length 4, prefix 0 (BOS = EOS)
    result = rolling_nll(model, tiny_tokenizer, [text], max_length=4, progress=False)
    assert (result.tokens, result.documents, result.windows, result.prefix_token_id) == (10, 1, 3, 0)
    assert result.nats == pytest.approx(reference_nll(model, windows), rel=1e-5)
    assert result.per_document == [result.nats] and result.nats_per_token == result.nats / 10


def test_whole_document_in_one_window_equals_the_plain_loss(model, tiny_tokenizer, texts):
    text = texts["math"][1]
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"][:40]
    text = tiny_tokenizer.decode(ids)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    result = rolling_nll(model, tiny_tokenizer, [text], progress=False)  # max_length 64 from the config
    assert result.max_length == 64 and result.windows == 1
    with torch.no_grad():
        loss = float(model(input_ids=torch.tensor([[0, *ids]]), labels=torch.tensor([[0, *ids]])).loss)
    assert result.nats == pytest.approx(loss * len(ids), rel=1e-5)


def test_batching_does_not_change_the_sums(model, tiny_tokenizer, texts):
    documents = [t[:300] for task in ("code", "math", "text") for t in texts[task][:4]]
    one = rolling_nll(model, tiny_tokenizer, documents, max_length=16, batch_size=1, progress=False)
    many = rolling_nll(model, tiny_tokenizer, documents, max_length=16, batch_size=7, progress=False)
    assert (one.tokens, one.windows) == (many.tokens, many.windows)
    assert many.per_document == pytest.approx(one.per_document, rel=1e-5)
    assert one.tokens == sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in documents)
    reference = sum(reference_nll(model, rolling_windows(
        tiny_tokenizer(d, add_special_tokens=False)["input_ids"], 0, 16)) for d in documents)
    assert one.nats == pytest.approx(reference, rel=1e-5)


def test_task_nll_over_a_split(model, tiny_tokenizer, texts):
    lines = [f"{i}: {t}" for i, t in enumerate(texts["code"][:30])]  # fresh texts: both splits get some
    docs = [Document(document_id(t), t, "test") for t in lines]
    corpus = build_corpus("code", docs, [SourceFile("inline", "0" * 64, len(docs))])
    results = task_nll(model, tiny_tokenizer, {"code": corpus}, n_documents=3, max_length=32, progress=False)
    direct = rolling_nll(model, tiny_tokenizer, corpus.texts("heldout")[:3], max_length=32, progress=False)
    assert results["code"].documents == 3 and results["code"].nats == pytest.approx(direct.nats, rel=1e-6)


def test_prefix_and_max_length_rules(model, tiny_tokenizer):
    assert prefix_token_id(tiny_tokenizer) == tiny_tokenizer.bos_token_id == 0
    assert default_max_length(model, tiny_tokenizer) == 64
