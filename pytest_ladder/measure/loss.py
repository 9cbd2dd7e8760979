"""Gate 5: ΔNLL fraction per task, (NLL' − NLL) / NLL on summed nats over the same held-out tokens.

Both sums must cover the same tokens; token counts are passed in and checked, so a truncated or re-tokenized
evaluation cannot slip through as a loss change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NLLSum = tuple[float, int]  # (summed nats, number of scored tokens)


def delta_nll_fraction(nll_dense_nats: float, nll_comp_nats: float, *, tokens_dense: int, tokens_comp: int) -> float:
    """(NLL' − NLL) / NLL from summed nats of the dense and compressed model over the same `tokens` scored tokens."""
    if tokens_dense != tokens_comp:
        raise ValueError(
            f"delta_nll_fraction: dense NLL covers {tokens_dense} tokens but compressed covers {tokens_comp}; "
            "score both models on the same held-out corpus split with the same tokenizer and max_length"
        )
    if tokens_dense <= 0:
        raise ValueError("delta_nll_fraction: no scored tokens; the held-out split of this task is empty")
    if not (math.isfinite(nll_dense_nats) and nll_dense_nats > 0):
        raise ValueError(
            f"delta_nll_fraction: dense NLL must be a positive finite number of nats, got {nll_dense_nats}"
        )
    return (float(nll_comp_nats) - float(nll_dense_nats)) / float(nll_dense_nats)


def delta_nll_by_task(dense: Mapping[str, NLLSum], comp: Mapping[str, NLLSum]) -> dict[str, float]:
    """ΔNLL fraction for every task of `dense` from (summed nats, token count) pairs; every task must be in `comp`."""
    missing = sorted(set(dense) ^ set(comp))
    if missing:
        raise KeyError(f"delta_nll_by_task: tasks not scored on both models: {missing}")
    return {
        task: delta_nll_fraction(dense[task][0], comp[task][0], tokens_dense=dense[task][1], tokens_comp=comp[task][1])
        for task in dense
    }
