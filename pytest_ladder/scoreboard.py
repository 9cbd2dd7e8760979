"""`ladder scoreboard`: the ladder table generated from the archive, never typed by hand (protocol §7).

One row per rung (per rung and model when the archive holds several models and no --model is given): the rung's
original decision (the newest sealed decision, replications counted beside it), or when it has none its latest
non-decision run; "replications" counts the replications of that decision and how many agree with it (the same
verdict and, for a KILL, the same killing gate: verdict.agreement), e.g. "2: 1 agreeing, 1 differing". Status is the
human label when the prereg sets one, else the verdict (KILLED, PASSED, INVALID,
prefilter passed, aborted, partial); "seeds" is the seeds' own OLMoE-1B-7B verdict from the prereg and whether this
run agrees with it. Rows run in ladder order: G-rungs by number, then R-rungs (ordering.natural_key).

`--by-model` prints the transfer table instead (transfer_table): a row per rung, a column per model with the verdict
of its decision and the killing gate and value, and whether the verdict transfers (the same verdict, from the same
seal, on every model), differs, or is not comparable (INVALID somewhere, a model without a decision, or decisions of
different seals). It sits in the README between its own markers (TRANSFER_START, TRANSFER_END).
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
TRANSFER_START, TRANSFER_END = "<!-- transfer:start -->", "<!-- transfer:end -->"
TRANSFERS, DIFFERS, NOT_COMPARABLE = "transfers", "differs", "not comparable"
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


def update_readme(path: Path, text: str, markers: tuple[str, str] = (START, END), table: str = "scoreboard") -> None:
    """Replace what stands between the `markers` of `table` (default: the scoreboard's) in `path` with `text`
    (ValueError if a marker is missing)."""
    opening, closing = markers
    content = path.read_text(encoding="utf-8")
    start, end = content.find(opening), content.find(closing)
    if start < 0 or end < start:
        raise ValueError(
            f"{path}: the {table} markers are missing or out of order; put the two lines {opening} and {closing} "
            "where the table belongs"
        )
    updated = content[: start + len(opening)] + "\n" + text.rstrip("\n") + "\n" + content[end:]
    if updated != content:
        path.write_text(updated, encoding="utf-8")


# ------------------------------------------------------------------------------------------- transfer table ---


def model_decisions(archive_dir: Path) -> dict[str, dict[str, ArchivedRun]]:
    """rung -> model -> its original decision (kind "decision"; the newest seal's where there are several)."""
    found: dict[str, dict[str, ArchivedRun]] = {}
    for run in iter_runs(Path(archive_dir)):  # sorted by run id (time): a later decision is a newer seal's
        if run.is_decision and run.record.get("kind") == "decision" and _model(run):
            found.setdefault(run.rung, {})[_model(run)] = run
    return found


def transfer_cell(record: dict) -> dict:
    """One model's decision in the transfer table: verdict, status, killing gate (or INVALID cause) and value."""
    killed = record.get("killed_by") or {}
    return {"verdict": record.get("verdict"), "status": STATUS.get(record.get("verdict"), str(record.get("verdict"))),
            "label": record.get("label") or ((record.get("prereg") or {}).get("content") or {}).get("label"),
            "killed_by": killed_by_text(record), "gate": killed.get("name"), "cell": killed.get("cell"),
            "value": killed.get("value"), "run_id": record.get("run_id"),
            "seal": (record.get("prereg") or {}).get("seal")}


def transfer_verdict(cells: dict[str, dict | None]) -> tuple[str, str]:
    """(transfers / differs / not comparable, why) over one rung's cells, a model -> cell (None: no decision)."""
    missing = [model for model, cell in cells.items() if cell is None]
    invalid = [model for model, cell in cells.items() if cell is not None and cell["verdict"] == "INVALID"]
    if invalid:
        return NOT_COMPARABLE, f"INVALID on {', '.join(invalid)}"
    if missing:
        return NOT_COMPARABLE, f"no decision on {', '.join(missing)}"
    if len(cells) < 2:
        return NOT_COMPARABLE, "decided on one model only"
    if len({cell["seal"] for cell in cells.values()}) > 1:
        return NOT_COMPARABLE, "decided under different seals of the prereg"
    verdicts = {cell["verdict"] for cell in cells.values()}
    if len(verdicts) == 1:
        return TRANSFERS, f"{STATUS.get(next(iter(verdicts)), next(iter(verdicts)))} on every model"
    return DIFFERS, "; ".join(f"{cell['status']} on {model}" for model, cell in cells.items())


def transfer_table(archive_dir: Path, models: list[str] | None = None) -> dict:
    """{"models": [...], "rows": [{rung, claim, cells: {model: cell or None}, transfer, why}]}: the decisions of every
    rung on every model (all models holding a decision, sorted, unless `models` names them), in ladder order."""
    decisions = model_decisions(archive_dir)
    shown = list(models) if models else sorted({model for by_model in decisions.values() for model in by_model})
    rows = []
    for rung in sorted(decisions, key=natural_key):
        by_model = decisions[rung]
        cells = {model: transfer_cell(by_model[model].record) if model in by_model else None for model in shown}
        transfer, why = transfer_verdict(cells)
        claim = next((run.record.get("claim") for run in by_model.values()), None)
        rows.append({"rung": rung, "claim": claim, "cells": cells, "transfer": transfer, "why": why})
    return {"models": shown, "rows": rows}


def render_transfer_markdown(table: dict) -> str:
    """The transfer table as a GitHub markdown table: rung, a column per model, transfer (and why)."""
    def text(cell: dict | None) -> str:
        if cell is None:
            return "—"
        status = cell["status"] + (f" ({cell['label']})" if cell["label"] else "")
        return f"{status}: {cell['killed_by']}" if cell["killed_by"] else status

    headers = ["rung", *table["models"], "transfer"]
    rows = [[row["rung"], *(text(row["cells"][model]) for model in table["models"]),
             f"{row['transfer']} ({row['why']})"] for row in table["rows"]]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def main(argv: list[str]) -> int:
    """`ladder scoreboard [--archive DIR] [--format markdown|json] [--model NAME] [--by-model [--models A,B]]
    [--update-readme FILE]`."""
    parser = argparse.ArgumentParser(prog="ladder scoreboard", description="The ladder table, from the archive.")
    parser.add_argument("--archive", default="archive", metavar="DIR", help="archive folder (default: ./archive)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--model", default=None, metavar="NAME", help="only runs on this model")
    parser.add_argument("--lean-dir", default="lean", metavar="DIR",
                        help="Lean sources whose theorem status the theorems column shows (default: ./lean)")
    parser.add_argument("--by-model", action="store_true",
                        help="the transfer table: a column per model, and whether each rung's verdict transfers")
    parser.add_argument("--models", default=None, metavar="NAME,NAME",
                        help="with --by-model: the model columns, in this order (default: every model with a decision)")
    parser.add_argument("--update-readme", default=None, metavar="FILE",
                        help=f"write the markdown table into FILE between {START} and {END} (with --by-model: "
                             f"between {TRANSFER_START} and {TRANSFER_END})")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    archive = Path(args.archive)
    if not archive.is_dir():
        print(f"ladder scoreboard: no archive folder at {archive}; run a rung first or pass --archive DIR",
              file=sys.stderr)
        return 2
    if args.by_model:
        if args.model:
            print("ladder scoreboard: --by-model shows every model; pick and order its columns with --models A,B",
                  file=sys.stderr)
            return 2
        return _transfer_main(archive, args)
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


def _transfer_main(archive: Path, args: argparse.Namespace) -> int:
    """`ladder scoreboard --by-model`: print the transfer table, or write it into the README between its markers."""
    try:
        models = [name.strip() for name in (args.models or "").split(",") if name.strip()]
        table = transfer_table(archive, models=models or None)
    except ArchiveError as error:
        print(f"ladder scoreboard: {error}", file=sys.stderr)
        return 1
    if args.update_readme:
        try:
            update_readme(Path(args.update_readme), render_transfer_markdown(table), (TRANSFER_START, TRANSFER_END),
                          "transfer table")
        except (OSError, ValueError) as error:
            print(f"ladder scoreboard: {error}", file=sys.stderr)
            return 2
        n = len(table['models'])
        print(f"updated {args.update_readme} ({len(table['rows'])} rungs on {n} model{'s' * (n != 1)})")
        return 0
    print(json.dumps(table, indent=2, ensure_ascii=False) if args.format == "json" else render_transfer_markdown(table))
    return 0
