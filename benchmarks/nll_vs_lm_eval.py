"""Our rolling NLL vs lm-evaluation-harness's HFLM.loglikelihood_rolling, on one model and the same texts.

    pip install lm-eval        # (a separate venv with --system-site-packages keeps the project's environment)
    python benchmarks/nll_vs_lm_eval.py [--model embedded] [--task text] [--documents 64] [--batch 8]

Both score the first `--documents` held-out documents of `--task` with the same model folder (HFLM is pointed at it;
same max_length from the config, same BOS/EOS prefix, no special tokens added), on the same device and threads;
model loading is not timed. Prints per-document agreement, both times, and last
`relative_difference=<x> speed_ratio=<y>`: x = |ours − lm-eval| / lm-eval over the summed nats (target ≤ 1e-4),
y = lm-eval time / our time (target ≥ 1).
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_ladder.models.corpora import load_corpus
from pytest_ladder.models.loading import ModelSpec, load_model
from pytest_ladder.models.nll import rolling_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--task", default="text")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SystemExit("lm-eval is not installed: `pip install lm-eval` (it is not a pytest-ladder dependency)")

    loaded = load_model(ModelSpec(source=args.model, device=args.device))
    texts = load_corpus(args.task).texts("heldout")[:args.documents]
    lm = HFLM(pretrained=str(loaded.path), batch_size=args.batch, device=args.device, dtype="float32")
    assert lm.max_length == loaded.max_length and lm.prefix_token_id == loaded.prefix_token_id, (
        f"settings differ: lm-eval max_length {lm.max_length}, prefix {lm.prefix_token_id}; ours "
        f"{loaded.max_length}, {loaded.prefix_token_id}")
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
                for i, text in enumerate(texts)]
    for run in range(2):  # the first round warms both up; the second is timed
        start = time.perf_counter()
        ours = rolling_nll(loaded.model, loaded.tokenizer, texts, batch_size=args.batch, progress=False)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
        theirs_s = time.perf_counter() - start
    theirs_nats = -float(sum(theirs))
    per_document = max(abs(a + b) / abs(b) for a, b in zip(ours.per_document, theirs))
    relative = abs(ours.nats - theirs_nats) / abs(theirs_nats)
    print(f"model {loaded.identity['name']} ({loaded.path}), task {args.task}: {ours.documents} documents, "
          f"{ours.tokens} tokens, {ours.windows} windows of max_length {ours.max_length}, batch {args.batch}, "
          f"device {args.device}, {torch.get_num_threads()} threads")
    print(f"pytest-ladder rolling_nll:        {ours.nats:.6f} nats  ({ours.nats_per_token:.6f}/token)  {ours_s:.3f} s")
    print(f"lm-eval loglikelihood_rolling:    {theirs_nats:.6f} nats  {theirs_s:.3f} s")
    print(f"largest per-document relative difference: {per_document:.3g}")
    print(f"relative_difference={relative:.3g} speed_ratio={theirs_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
