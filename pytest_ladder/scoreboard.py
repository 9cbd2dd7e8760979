"""`ladder scoreboard`: the ladder table generated from the archive, never typed by hand (protocol §7).

One row per rung (per rung and model when the archive holds several models and no --model is given): the rung's
original decision (the newest sealed decision, replications counted beside it), or when it has none its latest
non-decision run; "replications" counts the replications of that decision and how many agree with it (the same
verdict and, for a KILL, the same killing gate: verdict.agreement), e.g. "2: 1 agreeing, 1 differing". Status is the
human label when the prereg sets one, else the verdict (KILLED, PASSED, INVALID,
prefilter passed, aborted, partial); "seeds" is the seeds' own OLMoE-1B-7B verdict from the prereg and whether this
run agrees with it. Rows run in ladder order: G-rungs by number, then R-rungs (ordering.natural_key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_ladder.archive import ArchivedRun, ArchiveError, damaged_runs, iter_runs
from pytest_ladder.ordering import natural_key
from pytest_ladder.postmortem import seed_agreement
from pytest_ladder.records import killed_by_sentence, where
from pytest_ladder.verdict import agreement

STATUS = {
    "KILL": "KILLED",
    "PASS": "PASSED",
    "INVALID": "INVALID",
    "PREFILTER_PASS": "prefilter passed",
    "ABORTED": "aborted",
    "PARTIAL": "partial",
}
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"
COLUMNS = ("rung", "claim", "status", "verdict", "killed_by", "seeds", "model", "date", "run_id", "replications",
           "theorems")


def _model(run: ArchivedRun) -> str | None:
    return (run.record.get("model") or {}).get("name")


def killed_by_text(record: dict) -> str:
    """What decided against the claim, e.g. "activation_error @ layer=3-task=text: 0.31 > 0.2"."""
    killed, invalid = record.get("killed_by"), record.get("invalid_because")
    if killed:
        return killed_by_sentence(killed)
    if invalid:
        what = "trap" if invalid.get("kind") == "trap" else "error in"
        return f"{what} {where(str(invalid.get('name')), invalid.get('cell'))}" + (
            " fired wrong" if invalid.get("kind") == "trap" else "")
    return ""


def theorem_status(lean_dir: Path | None) -> dict[str, str]:
    """Theorem name -> tracker status (proved / sorry / axiom-dependent / not checked) from the Lean sources."""
    if lean_dir is None or not Path(lean_dir).is_dir():
        return {}
    from pytest_ladder.theorems import theorem_rows

    return {row["theorem"]: row["status"] for row in theorem_rows(lean_dir)}


def _seeds(record: dict) -> str:
    """The seeds' OLMoE-1B-7B verdict and whether this run agrees, e.g. "KILLED at 0.687 (differs)"; "" if none."""
    found = seed_agreement(record)
    return f"{found[0]} ({found[1]})" if found else ""


def replications_text(decision: dict, replications: list[dict]) -> str:
    """ "0", or "2: 1 agreeing, 1 differing": the replications of `decision` and whether each agrees with it."""
    if not replications:
        return "0"
    agreeing = sum(1 for r in replications if agreement(r, decision)["agrees"])
    parts = [f"{n} {word}" for n, word in ((agreeing, "agreeing"), (len(replications) - agreeing, "differing")) if n]
    return f"{len(replications)}: {', '.join(parts)}"


def _row(shown: ArchivedRun, replications: str, statuses: dict[str, str]) -> dict:
    record = shown.record
    content = (record.get("prereg") or {}).get("content") or {}
    verdict = record.get("verdict")
    label = record.get("label") or content.get("label")
    return {
        "rung": record.get("rung") or shown.rung,
        "claim": record.get("claim") or content.get("claim"),
        "status": label or STATUS.get(verdict, str(verdict)),
        "verdict": verdict,
        "killed_by": killed_by_text(record),
        "seeds": _seeds(record),
        "model": _model(shown),
        "date": str((record.get("timings") or {}).get("end") or "")[:10],
        "run_id": record.get("run_id") or shown.run_id,
        "replications": replications,
        "theorems": [
            {"theorem": name, "status": statuses.get(name, "missing" if statuses else "not read")}
            for name in content.get("theorems") or []
        ],
    }


def scoreboard_rows(archive_dir: Path, *, model: str | None = None, lean_dir: Path | None = None) -> list[dict]:
    """One row per rung (and model) in ladder order; see the module docstring for which run each row shows.

    With `lean_dir`, each theorem a rung's prereg names carries its status from the theorem tracker.
    """
    statuses = theorem_status(lean_dir)
    groups: dict[tuple[str, str | None], list[ArchivedRun]] = {}
    for run in iter_runs(Path(archive_dir)):
        if model is not None and _model(run) != model:
            continue
        groups.setdefault((run.rung, _model(run)), []).append(run)
    rows = []
    for runs in groups.values():
        decisions = [r for r in runs if r.is_decision and r.record.get("kind") == "decision"]
        if decisions:
            shown = decisions[-1]  # the decision of the newest seal; runs are sorted by run id (time)
            replications = replications_text(shown.record, [
                r.record for r in runs
                if r.record.get("kind") == "replication" and r.record.get("replication_of") == shown.run_id
            ])
        else:
            shown, replications = runs[-1], "0"
        rows.append(_row(shown, replications, statuses))
    for damaged in damaged_runs(Path(archive_dir)):  # a row each, so a damaged record is seen, never skipped silently
        rows.append({"rung": damaged.path.parent.parent.name, "claim": None, "status": "damaged", "verdict": None,
                     "killed_by": damaged.reason, "seeds": "", "model": None, "date": "",
                     "run_id": damaged.path.parent.name, "replications": "0", "theorems": []})
    return sorted(rows, key=lambda row: (natural_key(row["rung"]), row["model"] or ""))


def render_markdown(rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (tabulate)."""
    headers = ["rung", "claim", "status", "killed by", "seeds (OLMoE-1B-7B)", "model", "date", "run", "replications",
               "theorems"]
    table = [
        [r["rung"], r["claim"] or "", r["status"], r["killed_by"], r.get("seeds", ""), r["model"] or "", r["date"],
         f"`{r['run_id']}`", r["replications"], ", ".join(f"{t['theorem']} ({t['status']})" for t in r["theorems"])]
        for r in rows
    ]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def update_readme(path: Path, text: str) -> None:
    """Replace what stands between the scoreboard markers in `path` with `text` (ValueError if a marker is missing)."""
    content = path.read_text(encoding="utf-8")
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        raise ValueError(
            f"{path}: the scoreboard markers are missing or out of order; put the two lines {START} and {END} "
            "where the table belongs"
        )
    updated = content[: start + len(START)] + "\n" + text.rstrip("\n") + "\n" + content[end:]
    if updated != content:
        path.write_text(updated, encoding="utf-8")


def main(argv: list[str]) -> int:
    """`ladder scoreboard [--archive DIR] [--format markdown|json] [--model NAME] [--update-readme FILE]`."""
    parser = argparse.ArgumentParser(prog="ladder scoreboard", description="The ladder table, from the archive.")
    parser.add_argument("--archive", default="archive", metavar="DIR", help="archive folder (default: ./archive)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--model", default=None, metavar="NAME", help="only runs on this model")
    parser.add_argument("--lean-dir", default="lean", metavar="DIR",
                        help="Lean sources whose theorem status the theorems column shows (default: ./lean)")
    parser.add_argument("--update-readme", default=None, metavar="FILE",
                        help=f"write the markdown table into FILE between {START} and {END}")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    archive = Path(args.archive)
    if not archive.is_dir():
        print(f"ladder scoreboard: no archive folder at {archive}; run a rung first or pass --archive DIR",
              file=sys.stderr)
        return 2
    try:
        rows = scoreboard_rows(archive, model=args.model, lean_dir=Path(args.lean_dir))
    except ArchiveError as error:
        print(f"ladder scoreboard: {error}", file=sys.stderr)
        return 1
    output: Any = json.dumps(rows, indent=2, ensure_ascii=False) if args.format == "json" else render_markdown(rows)
    if args.update_readme:
        try:
            update_readme(Path(args.update_readme), render_markdown(rows))
        except (OSError, ValueError) as error:
            print(f"ladder scoreboard: {error}", file=sys.stderr)
            return 2
        print(f"updated {args.update_readme} ({len(rows)} rungs)")
        return 0
    print(output)
    return 0
