"""Kill-fast, measured (protocol §6.2): one rung that dies at its hardest cell, run with `-x` and without.

Both runs are real `pytest rungs/test_<rung>.py` sessions on the same model and sealed prereg (the repository's
`prereg/`, each run archiving into its own temporary folder), one after the other, timed wall-clock from process
start to exit. The `-x` run must be a KILL at the prereg's hardest cell (the script checks it and says so if not);
kill-fast order puts that cell right after the trivial-pass trap and the analytical prefilters, so `-x` skips every
other cell, trap and deploy. Prints both times, what each run decided, and last `ratio=<x>` (-x time / full time;
the protocol's target is <= 1/8, the seeds' "4 minutes instead of 60").

What the ratio can reach depends on where the time goes: fixed costs (interpreter and imports, model load, the
capture passes the hardest cell needs) are paid by both runs, so the ratio falls toward 1/cells only when cells are
expensive next to them — as on OLMoE-1B-7B. `--model` takes any model folder (or "embedded", the default);
`--synthetic H,E,I,L,K` builds (once, cached) a random-init OLMoE of hidden H, E experts (top-K), expert
intermediate I and L layers with the embedded model's tokenizer, a size at which the per-cell work dominates.

    python benchmarks/kill_fast.py                       # G4 on the embedded model
    python benchmarks/kill_fast.py --synthetic 1024,32,256,4,2
    python benchmarks/kill_fast.py --model /models/olmoe-7b-shaped -- --ladder-device cuda   # GPU, full scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_model(spec: str) -> Path:
    """A random-init OLMoE of the given shape with the embedded model's tokenizer, saved once under the cache."""
    import torch
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

    from pytest_ladder.models.embedded import cache_root, ensure_embedded_model

    hidden, experts, inter, layers, top_k = (int(v) for v in spec.split(","))
    folder = cache_root() / "benchmarks" / f"olmoe-random-h{hidden}-e{experts}-i{inter}-l{layers}-k{top_k}"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), num_experts=experts,
                         num_experts_per_tok=top_k, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    partial = folder.with_name(folder.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    OlmoeForCausalLM(config).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def run(rung: str, model: str, archive: Path, *extra: str) -> tuple[float, dict]:
    """Wall-clock seconds of one pytest session of the rung, and the decision it archived."""
    command = [sys.executable, "-m", "pytest", f"rungs/test_{rung}.py", "-q", "-p", "no:cacheprovider",
               "--ladder-model", model, "--ladder-archive-dir", str(archive), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    found = sorted(archive.glob(f"{rung}/*/decision.json"))
    if not found:
        raise SystemExit(f"pytest {' '.join(command[3:])} archived no decision:\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    return seconds, json.loads(found[-1].read_text())


def describe(record: dict) -> str:
    killed = record.get("killed_by") or {}
    ran = sum(1 for row in record["gates"] + record["traps"] if row["outcome"] != "not run")
    where = f" at {killed['kind']} {killed['name']} @ {killed['cell']}" if killed else ""
    return f"{record['verdict']}{where}; {ran} of {len(record['gates']) + len(record['traps'])} items ran"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rung", default="g4", help="the rung module to time (default g4)")
    parser.add_argument("--model", default="embedded", help="model folder or 'embedded' (default)")
    parser.add_argument("--synthetic", metavar="H,E,I,L,K", help="time on a random-init OLMoE of this shape instead")
    parser.add_argument("pytest_args", nargs="*", help="more pytest options for both runs, after `--` (e.g. "
                        "-- --ladder-device cuda --ladder-max-memory cuda:0=8GiB,cpu=100GiB)")
    args = parser.parse_args(argv)

    if args.synthetic:
        model = str(synthetic_model(args.synthetic))
    elif args.model == "embedded":
        from pytest_ladder.models.embedded import ensure_embedded_model

        model = str(ensure_embedded_model())  # build before timing, never inside a timed run
    else:
        model = args.model
    from pytest_ladder.prereg import load_prereg

    hardest = load_prereg(ROOT / "prereg" / args.rung / "tau.json").hardest_cell.id
    with tempfile.TemporaryDirectory(prefix="ladder-kill-fast-") as tmp:
        fast, fast_record = run(args.rung, model, Path(tmp) / "x", "-x", *args.pytest_args)
        full, full_record = run(args.rung, model, Path(tmp) / "full", *args.pytest_args)
    killed = fast_record.get("killed_by") or {}
    print(f"rung {args.rung} on {model} (hardest cell {hardest}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"with -x:    {fast:8.1f} s  {describe(fast_record)}")
    print(f"without -x: {full:8.1f} s  {describe(full_record)}")
    if fast_record["verdict"] != "KILL" or killed.get("cell") != hardest:
        print(f"note: the -x run did not die at the hardest cell {hardest}; this rung does not show kill-fast here")
    print(f"ratio={fast / full:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
