"""The seed ladder at OLMoE-1B-7B scale on one GPU: in GPU memory, and offloaded under a weight cap, side by side.

    python benchmarks/scale_check.py --out OUT [--model DIR] [--phase memory|offload|both] [--cap 8GiB]
                                     [--workspace 4GiB] [--offload-workspace 2GiB] [--rungs g4,g6] [--deadline S]
                                     [--profile] [-- PYTEST ARGS]

Makes the OLMoE-1B-7B-shaped bf16 model with benchmarks/make_olmoe_shaped.py when `--model` does not exist yet,
then runs every rung kill-fast in one pytest session per phase (`pytest rungs/ --ladder-kill-fast --ladder-device
cuda`, a scratch archive): `memory` with the whole model on the GPU and `--ladder-gpu-workspace <workspace>`;
`offload` with `--ladder-max-memory cuda:0=<cap>,cpu=<cpu-cap>` and `--ladder-gpu-workspace <offload-workspace>`.
Per rung it prints wall time, GPU peaks (torch.cuda.max_memory_allocated / max_memory_reserved, nvidia-smi) and the
verdict (benchmarks/scale_probe.py measures; the archive says the verdict). Each phase's rows are kept in
OUT/scale_<phase>.json, so the phases may run in separate calls. Last line:
`ladder_wall_s=<in memory> offload_wall_ratio=<offloaded/in memory> peak_over_cap_gib=<worst offloaded peak − cap>`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SEED_LADDER = ("g0", "g1_0", "g2", "g3", "g4", "g5", "g6", "g7", "g10", "g10_5", "g10_scan", "r1", "r2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_gib(text: str) -> float:
    from pytest_ladder.models.loading import parse_size

    return parse_size(text) / 1024**3


def ensure_model(folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    start = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "make_olmoe_shaped.py"), str(folder)], check=True)
    print(f"made {folder} in {time.perf_counter() - start:.1f} s", flush=True)


def verdicts(archive: Path) -> dict[str, str]:
    found = {}
    for path in sorted(archive.glob("*/*/*.json")):
        if path.name not in ("decision.json", "run.json"):
            continue
        record = json.loads(path.read_text())
        text = record["verdict"]
        killed, invalid = record.get("killed_by"), record.get("invalid_because")
        if killed and killed.get("value") is not None:
            text += f" {killed['name']} {killed['value']:.4g} {killed.get('op') or ''} {killed.get('threshold')}"
        elif invalid:
            text += f" ({invalid.get('kind')} {invalid.get('name')}: {(invalid.get('message') or '')[:80]})"
        found[record["rung"]] = text
    return found


def run_phase(phase: str, args: argparse.Namespace, extra: list[str]) -> list[dict]:
    archive = args.out / f"archive_{phase}"
    probe = args.out / f"probe_{phase}.json"
    runner = ["-m", "cProfile", "-o", str(args.out / f"profile_{phase}.out")] if args.profile else []
    command = [sys.executable, *runner, "-m", "pytest", *args.rungs, "--ladder-kill-fast", "--ladder-device", "cuda",
               "--ladder-model", str(args.model), "--ladder-archive-dir", str(archive), "-p", "scale_probe",
               "-p", "no:cacheprovider", "-q", "-rN"]
    if phase == "memory":
        command += ["--ladder-gpu-workspace", args.workspace]
    else:
        command += ["--ladder-max-memory", f"cuda:0={args.cap},cpu={args.cpu_cap}",
                    "--ladder-gpu-workspace", args.offload_workspace]
        if args.offload_dir:
            command += ["--ladder-offload-dir", args.offload_dir]
    command += extra
    env = {**os.environ, "SCALE_PROBE_OUT": str(probe),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    print(f"[{phase}] {' '.join(command)}", flush=True)
    start, started_at = time.perf_counter(), time.time()
    with open(args.out / f"log_{phase}.txt", "w") as log:
        session = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            session.wait(timeout=args.deadline)
        except subprocess.TimeoutExpired:  # the ladder's own SIGTERM handling: decided rungs kept, ABORTED in flight
            print(f"[{phase}] deadline {args.deadline} s: SIGTERM", flush=True)
            session.send_signal(signal.SIGTERM)
            try:
                session.wait(timeout=60)
            except subprocess.TimeoutExpired:
                session.kill()
                session.wait()
    completed = session
    if args.profile and (args.out / f"profile_{phase}.out").is_file():
        print_profile(args.out / f"profile_{phase}.out", args.out / f"profile_{phase}.txt")
    wall = time.perf_counter() - start
    rows = json.loads(probe.read_text()) if probe.is_file() else []
    found = verdicts(archive)
    for row in rows:
        row["rung"] = Path(row["module"]).stem.removeprefix("test_")
        row["verdict"] = found.get(row["rung"], "(nothing archived)")
        print(f"[{phase}] {row['rung']}: {row['wall_s']} s, {row.get('allocated_gib')} / {row.get('reserved_gib')} GiB, "
              f"{row['verdict']}", flush=True)
    summary = {"phase": phase, "session_wall_s": round(wall, 1), "exit": completed.returncode, "rows": rows}
    stamps_file = Path(str(probe) + ".stamps.json")
    if stamps_file.is_file():  # where the session's time went outside the rungs
        stamps = json.loads(stamps_file.read_text())
        marks = [("start", started_at), *((k, stamps[k]) for k in ("configure", "first_rung", "last_rung_end",
                                                                     "unconfigure") if k in stamps),
                 ("exit", started_at + wall)]
        summary["phases_s"] = {f"{a}->{b}": round(tb - ta, 1) for (a, ta), (b, tb) in zip(marks, marks[1:])}
        print(f"[{phase}] " + ", ".join(f"{k} {v} s" for k, v in summary["phases_s"].items()), flush=True)
    (args.out / f"scale_{phase}.json").write_text(json.dumps(summary, indent=1))
    print(f"[{phase}] session {wall:.1f} s, pytest exit {completed.returncode}", flush=True)
    return rows


def print_profile(raw: Path, text: Path) -> None:
    """The session's hottest functions (cProfile: own time, then cumulative) as text beside the raw profile. CUDA work
    is asynchronous: its time lands on the call that waits for it (a .item(), an eigensolver, a copy to the CPU), so
    the callers of the calls that wait close the listing."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(raw), stream=out)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(90)
    stats.sort_stats("tottime").print_callers(r"method 'to' of|method 'cpu' of|method 'item' of|method 'tolist' of")
    text.write_text(out.getvalue())


def table(summaries: dict[str, dict]) -> None:
    from tabulate import tabulate

    for phase, summary in summaries.items():
        rows = [[r["rung"], r["wall_s"], r.get("allocated_gib"), r.get("reserved_gib"), r.get("nvidia_smi_mib"),
                 r["verdict"]] for r in summary["rows"]]
        print(f"\n{phase}: session {summary['session_wall_s']} s")
        print(tabulate(rows, headers=["rung", "wall s", "alloc GiB", "reserved GiB", "nvidia-smi MiB", "verdict"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("/tmp/olmoe-1b-7b-random"))
    parser.add_argument("--phase", choices=["memory", "offload", "both"], default="both")
    parser.add_argument("--cap", default="8GiB", help="the GPU weight cap of the offload phase")
    parser.add_argument("--cpu-cap", default="100GiB")
    parser.add_argument("--offload-dir", default=None)
    parser.add_argument("--workspace", default="4GiB", help="--ladder-gpu-workspace in memory")
    parser.add_argument("--offload-workspace", default="2GiB", help="--ladder-gpu-workspace offloaded")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which a phase's session gets SIGTERM (what it decided is kept)")
    parser.add_argument("--profile", action="store_true",
                        help="run each session under cProfile; OUT/profile_<phase>.txt lists the hottest functions")
    parser.add_argument("--rungs", default=",".join(SEED_LADDER),
                        help="comma-separated rung names (default: the seed ladder, the 13 rungs of protocol.md)")
    args = parser.parse_args(argv)
    args.rungs = [f"rungs/test_{r}.py" for r in args.rungs.split(",") if r]
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_model(args.model)
    for phase in (["memory", "offload"] if args.phase == "both" else [args.phase]):
        run_phase(phase, args, extra)
    summaries = {p: json.loads((args.out / f"scale_{p}.json").read_text()) for p in ("memory", "offload")
                 if (args.out / f"scale_{p}.json").is_file()}
    table(summaries)
    if "memory" in summaries:
        memory = summaries["memory"]["session_wall_s"]
        line = f"ladder_wall_s={memory}"
        if "offload" in summaries:
            offload = summaries["offload"]
            walls = {p: {r["rung"]: r["wall_s"] for r in summaries[p]["rows"]} for p in ("memory", "offload")}
            common = sorted(set(walls["memory"]) & set(walls["offload"]))
            if set(walls["memory"]) == set(walls["offload"]):
                ratio = offload["session_wall_s"] / memory
            else:  # the offload phase ran fewer rungs: compare the same rungs (the first one carries the model load)
                ratio = sum(walls["offload"][r] for r in common) / sum(walls["memory"][r] for r in common)
                print(f"offload ratio over the rungs of both phases: {', '.join(common)}")
            peak = max([r.get("reserved_gib") or 0 for r in offload["rows"]] +
                       [(r.get("nvidia_smi_mib") or 0) / 1024 for r in offload["rows"]])
            line += f" offload_wall_ratio={ratio:.3f} peak_over_cap_gib={peak - parse_gib(args.cap):.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
