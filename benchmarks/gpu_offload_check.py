"""Offload behind a real GPU, once: the embedded model and an OLMoE-1B-7B-shaped bf16 model.

    python benchmarks/gpu_offload_check.py --out $OUT [--work /tmp/ladder-gpu] [--skip-big]

Needs CUDA and no hub. Steps, each a subprocess (GPU memory is freed between them), each timed:
1. the embedded model (built on first use, ~2-3 min on CPU; `--embedded DIR` reuses a built folder);
2. benchmarks/offload_at_scale.py on it with --max-memory small enough to put layers on CPU and disk:
   weight reads bit-exact against the safetensors file, captures (Grams, top-k) equal to an in-memory run,
   preflight, forward times;
3. benchmarks/make_olmoe_shaped.py: OlmoeConfig(intermediate_size=1024), 16 layers, hidden 2048, 64 experts top-8,
   vocab 50304, random init on the GPU, bf16, saved with save_pretrained (~14 GB in --work);
4. offload_at_scale.py on it with --max-memory cuda:0=8GiB,cpu=100GiB (layers behind the GPU), 4x2048 tokens.
Writes each step's log and summary.json under --out and prints a summary table; exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(name: str, command: list[str], out: Path, timeout: int) -> dict:
    """Run one step, keep its log, and parse its last line's key=value pairs."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        stdout, code = _text(error.stdout), 124
        stderr = _text(error.stderr) + f"\nTIMEOUT after {timeout} s"
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    lines = [line for line in stdout.splitlines() if line.strip()] or stderr.splitlines()[-5:]
    print("\n".join(lines[-14:]), flush=True)
    last = lines[-1] if lines else ""
    values = dict(part.split("=", 1) for part in last.split() if "=" in part) if code == 0 else {}
    return {"step": name, "exit": code, "seconds": round(seconds, 1), "values": values,
            "tail": "\n".join(lines[-14:])}


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ladder-gpu"))
    parser.add_argument("--embedded", help="an already built embedded model folder (default: build or find it)")
    parser.add_argument("--embedded-max-memory", default="cuda:0=12MiB,cpu=10MiB")
    parser.add_argument("--big-max-memory", default="cuda:0=8GiB,cpu=100GiB")
    parser.add_argument("--skip-big", action="store_true", help="only the embedded model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    steps = []
    started = time.perf_counter()

    if args.embedded:
        embedded = args.embedded
    else:
        step = run("embedded_build", [python, "-c", "from pytest_ladder.models.embedded import "
                                      "ensure_embedded_model as e; print('path=' + str(e()))"], args.out, 900)
        steps.append(step)
        embedded = step["values"].get("path")
    if embedded:
        steps.append(run("embedded_offload", [python, str(HERE / "offload_at_scale.py"), embedded, "--max-memory",
                                              args.embedded_max_memory, "--offload-dir",
                                              str(args.work / "offload-embedded"), "--tokens", "256"], args.out, 600))
    if not args.skip_big:
        big = args.work / "olmoe-1b-7b-random"
        if not (big / "config.json").is_file():
            steps.append(run("olmoe_1b_7b_make", [python, str(HERE / "make_olmoe_shaped.py"), str(big), "--device",
                                                  "cuda"], args.out, 900))
        offload = args.work / "offload-olmoe"
        shutil.rmtree(offload, ignore_errors=True)
        steps.append(run("olmoe_1b_7b_offload", [python, str(HERE / "offload_at_scale.py"), str(big),
                                                 "--max-memory", args.big_max_memory, "--offload-dir", str(offload),
                                                 "--tokens", "2048", "--batch", "4"], args.out, 1200))

    ok = all(s["exit"] == 0 for s in steps) and all(
        s["values"].get("weights_exact") == "True" and s["values"].get("captures_equal") == "True"
        for s in steps if s["step"].endswith("_offload"))
    summary = {"ok": ok, "seconds": round(time.perf_counter() - started, 1), "steps": steps,
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nstep                   exit   seconds  results")
    for s in steps:
        results = " ".join(f"{k}={v}" for k, v in s["values"].items())
        print(f"{s['step']:<22} {s['exit']:>4} {s['seconds']:>9.1f}  {results}")
    print(f"gpu_offload_check ok={ok} total_s={summary['seconds']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
