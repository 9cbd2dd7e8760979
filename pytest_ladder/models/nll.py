"""Held-out negative log-likelihood per task (protocol §3, gate 5: ΔNLL = (NLL' − NLL) / NLL).

Windowing is lm-evaluation-harness's `loglikelihood_rolling` (0.4.x), exactly:
- a document is tokenised without special tokens into t_1..t_n;
- the first window feeds [p, t_1, ..., t_{L-1}] and scores t_1..t_L (L = min(max_length, n)), so the first token
  is conditioned on the prefix token p alone (p = BOS, or EOS when the tokenizer has no BOS);
- each further window scores the next max_length tokens (fewer in the last one), disjoint from all earlier ones,
  feeding the max_length tokens that end just before its last target (so a short last window keeps as much
  earlier context as fits);
- NLL(document) = Σ over windows Σ over scored tokens −log p(t_i | inputs before it), in nats; a task's NLL is the
  sum over its documents, reported with the token count (nats per token = nats / tokens).
Log-probabilities are taken in float32 (lm-eval uses the model dtype: identical for float32 models) and summed in
float64. Windows are batched longest first with right padding, which leaves every real position unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from pytest_ladder.models.capture import model_device, pad_batch

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when neither config nor tokenizer says
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length


@dataclass
class NLLResult:
    """Summed NLL over documents: `nats` = Σ −log p, `tokens` scored; per-document sums kept for paired tests."""

    nats: float
    tokens: int
    documents: int
    windows: int
    max_length: int
    prefix_token_id: int
    per_document: list[float] = field(default_factory=list)
    per_document_tokens: list[int] = field(default_factory=list)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    def as_dict(self) -> dict:
        return {"nats": self.nats, "tokens": self.tokens, "nats_per_token": self.nats_per_token,
                "documents": self.documents, "windows": self.windows, "max_length": self.max_length,
                "prefix_token_id": self.prefix_token_id}


def rolling_windows(tokens: Sequence[int], prefix_token_id: int, max_length: int
                    ) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window: (context, continuation) pairs
    whose continuations partition `tokens`; the model input of a pair is (context + continuation)[:-1]."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token_id], tokens[:first])]  # disjoint form of ([p] + t[:first-1], t[:first])
    predicted = first
    while predicted < len(tokens):
        length = min(len(tokens) - predicted, max_length)
        end = predicted + length
        inputs = tokens[max(end - max_length - 1, 0):end - 1]
        continuation = tokens[end - length:end]
        windows.append((inputs[:len(inputs) - (length - 1)], continuation))
        predicted += length
    return windows


def prefix_token_id(tokenizer: Any) -> int:
    """The token the first one is conditioned on: BOS, else EOS (lm-eval's HFLM.prefix_token_id)."""
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; pass prefix_token_id explicitly")


def default_max_length(model: nn.Module, tokenizer: Any = None) -> int:
    """lm-eval's resolve_max_length: the (text_config or top-level) config's n_positions, max_position_embeddings
    or n_ctx, then tokenizer.model_max_length unless it is the "infinite" sentinel, else 2048."""
    config = getattr(model.config, "text_config", None) or model.config
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attribute, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def rolling_nll(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int | None = None,
                prefix: int | None = None, batch_size: int = 8, desc: str = "nll",
                progress: bool | None = None, sequential: bool | None = None) -> NLLResult:
    """Summed rolling NLL (nats) of `texts`, windowed as lm-eval's loglikelihood_rolling (module docstring). An
    offloaded model runs layer by layer (models.sequential); `sequential` forces either path."""
    from pytest_ladder.models.sequential import forward_batches

    max_length = max_length or default_max_length(model, tokenizer)
    prefix = prefix_token_id(tokenizer) if prefix is None else int(prefix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    windows = [(doc, context, continuation) for doc, ids in enumerate(encoded)
               for context, continuation in rolling_windows(ids, prefix, max_length)]
    order = sorted(range(len(windows)), key=lambda i: -(len(windows[i][1]) + len(windows[i][2])))
    per_document = [0.0] * len(encoded)
    device = model_device(model)
    chunks = [[windows[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
    padded = [pad_batch([(context + continuation)[:-1] for _, context, continuation in chunk], pad, device)
              for chunk in chunks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, logits in forward_batches(model, padded, sequential=sequential, desc=desc, progress=progress):
                chunk = chunks[index]
                for row, (doc, context, continuation) in enumerate(chunk):
                    first = len(context) - 1  # position whose logits predict continuation[0]
                    scored = logits[row, first:first + len(continuation)].float()
                    target = torch.as_tensor(continuation, device=scored.device).unsqueeze(-1)
                    nll = torch.logsumexp(scored, dim=-1) - scored.gather(-1, target).squeeze(-1)
                    per_document[doc] += float(nll.double().sum())
    finally:
        model.train(was_training)
    tokens = [len(ids) for ids in encoded]
    return NLLResult(nats=float(sum(per_document)), tokens=sum(tokens), documents=len(encoded),
                     windows=len(windows), max_length=max_length, prefix_token_id=prefix,
                     per_document=per_document, per_document_tokens=tokens)


def task_nll(model: nn.Module, tokenizer: Any, corpora: dict[str, Any], *, split: str = "heldout",
             n_documents: int | None = None, **options: Any) -> dict[str, NLLResult]:
    """Rolling NLL of the first `n_documents` (all when None) of each task's split (corpora: task -> Corpus)."""
    return {task: rolling_nll(model, tokenizer, corpus.texts(split)[:n_documents], desc=f"nll {task}", **options)
            for task, corpus in corpora.items()}


__all__ = ["NLLResult", "rolling_windows", "rolling_nll", "task_nll", "prefix_token_id", "default_max_length"]
