"""postmortem.md and its plots (protocol §7): the human-readable side of one archived run.

`render_postmortem(record)` turns a decision.json/run.json record into markdown: the claim, what killed it (or why it
survived, why it is invalid, why it decides nothing), one `### gate <name> @ <cell>` section per failing gate (replay
quotes it), the gate, trap and τ tables, and the identity of model, data, seeds, selection and software.
`render_plots(record)` draws the pictures that say more than numbers (matplotlib, imported lazily, Agg canvas).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_ladder.prereg_types import current_cell_id
from pytest_ladder.records import GateRecord, TrapRecord, fmt, killed_by_sentence

POSTMORTEM_FILE = "postmortem.md"


def rule_text(op: str | None, threshold: Any) -> str:
    """The locked rule of a gate row, e.g. "<= 0.2"."""
    return "" if op is None else f"{op} {fmt(threshold)}"


def gate_heading(name: str, cell: str | None) -> str:
    """The heading of a failing gate's section, the anchor `postmortem_lines_for` looks for."""
    return f"### gate {name}" + (f" @ {cell}" if cell else "")


def _gates(record: dict) -> list[GateRecord]:
    return [GateRecord.from_dict(row) for row in record.get("gates") or []]


def _traps(record: dict) -> list[TrapRecord]:
    return [TrapRecord.from_dict(row) for row in record.get("traps") or []]


def _failed(row: dict) -> bool:
    return GateRecord.from_dict(row).failed


def _tau_cell(tau: dict | None) -> str:
    return "" if not tau else fmt(tau.get("tau"))


def _first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _where(row: dict) -> str:
    return f"`{row['name']}`" + (f" @ `{row['cell']}`" if row.get("cell") else "")


def _verdict_section(record: dict) -> list[str]:
    verdict, killed, invalid = record.get("verdict"), record.get("killed_by"), record.get("invalid_because")
    gates, traps = record.get("gates") or [], record.get("traps") or []
    selection = record.get("selection") or {}
    if verdict == "KILL" and killed and killed.get("kind") == "requires":
        return [(f"**KILL by the ladder rule**: {killed.get('message') or 'a required rung was KILLED'}. "
                 "No forward pass was spent.")]
    if verdict == "KILL" and killed:
        line = (f"**KILL** at {killed.get('kind', 'gate')} {killed_by_sentence(killed)} (locked rule "
                f"`value {rule_text(killed.get('op'), killed.get('threshold'))}`)")
        tau = killed.get("tau")
        if tau:
            line += (f"; τ floor {fmt(tau.get('tau'))} (margin {fmt(tau.get('margin'))}, rule `{tau.get('rule')}`, "
                     f"beaten: {fmt(tau.get('beats'))})")
        return [line + ".", "", "A gate is conjunctive: one failure kills the claim."]
    if verdict == "INVALID" and invalid:
        what = "trap" if invalid.get("kind") == "trap" else "test"
        reason = "did not fire as declared" if invalid.get("kind") == "trap" else "raised an error (pipeline broken)"
        return [(f"**INVALID**: {what} {_where(invalid)} {reason}. The run is invalid, not the idea; nothing in it "
                 "counts."), "", f"> {_first_line(invalid.get('message'))}"]
    if verdict == "PASS":
        cells = {g.get("cell") for g in gates if g.get("cell")}
        return [(f"**PASS**: the claim survived every gate ({len(gates)} gate checks on {len(cells)} cells) and all "
                 f"{len(traps)} traps fired as declared. A claim that could not be killed might be real.")]
    if verdict == "ABORTED":
        return [(f"**ABORTED**: {selection.get('aborted') or 'the run was cut short'}. Recorded, never a decision; "
                 "the prereg may run again.")]
    if verdict == "PREFILTER_PASS":
        return ["**PREFILTER_PASS**: the analytical prefilters passed. Not a decision: the gates have not run yet."]
    if verdict == "PARTIAL":
        return [(f"**PARTIAL**: the selection (markexpr `{selection.get('markexpr') or ''}`, keyword "
                 f"`{selection.get('keyword') or ''}`) did not cover every gate, trap and cell of the rung, and "
                 "nothing failed. Not a decision.")]
    return [f"**{verdict}**"]


def _failing_sections(record: dict) -> list[str]:
    lines: list[str] = []
    for gate in _gates(record):
        if not gate.failed:
            continue
        lines += ["", gate_heading(gate.name, gate.cell), ""]
        lines.append(f"- {gate.kind} `{gate.name}`" + (f", cell `{gate.cell}`" if gate.cell else "")
                     + f": outcome {gate.outcome}")
        if gate.value is not None:
            lines.append(f"- value {fmt(gate.value)}, locked rule `value {rule_text(gate.op, gate.threshold)}`")
        if gate.tau:
            tau, spread = gate.tau, gate.tau.get("spread") or {}
            lines.append(
                f"- τ floor {fmt(tau.get('tau'))} over {len(tau.get('values') or [])} random baselines (spread "
                f"{fmt(spread.get('min'))}–{fmt(spread.get('max'))}, std {fmt(spread.get('std'))}), margin "
                f"{fmt(tau.get('margin'))}, rule `{tau.get('rule')}`: beaten {fmt(tau.get('beats'))}"
            )
        if gate.message:
            lines.append(f"- message: {_first_line(gate.message)}")
        if gate.series:
            lines.append(f"- series: {', '.join(sorted(gate.series))} (see the plots)")
    return lines


def _table(rows: list[list[Any]], headers: list[str]) -> list[str]:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True).splitlines()


def _gate_table(record: dict) -> list[str]:
    rows = [[g.kind, g.name, g.cell or "", fmt(g.value), rule_text(g.op, g.threshold), _tau_cell(g.tau), g.outcome]
            for g in _gates(record)]
    return _table(rows, ["kind", "gate", "cell", "value", "rule", "τ", "outcome"]) if rows else ["_no gates ran_"]


def _trap_table(record: dict) -> list[str]:
    rows = [
        [t.name, t.cell or "", t.expected or "", fmt(t.observed), ", ".join(f"{k}={fmt(v)}" for k, v in t.refs.items()),
         {True: "yes", False: "FIRED WRONG", None: ""}[t.fired_as_declared], t.outcome]
        for t in _traps(record)
    ]
    return (_table(rows, ["trap", "cell", "expected", "observed", "refs", "fired as declared", "outcome"])
            if rows else ["_no traps ran_"])


def _tau_table(record: dict) -> list[str]:
    rows = []
    for g in _gates(record):
        if g.tau:
            tau, spread = g.tau, g.tau.get("spread") or {}
            rows.append([g.name, g.cell or "", fmt(g.value), fmt(tau.get("tau")), len(tau.get("values") or []),
                         fmt(spread.get("min")), fmt(spread.get("max")), fmt(spread.get("std")),
                         fmt(tau.get("margin")), tau.get("rule"), fmt(tau.get("beats"))])
    if not rows:
        return []
    return ["", "## τ floor", ""] + _table(
        rows, ["gate", "cell", "value", "τ", "B", "min", "max", "std", "margin", "rule", "beaten"]
    )


def _mapping(title: str, data: Any) -> list[str]:
    if not data:
        return []
    if not isinstance(data, dict):
        return ["", f"## {title}", "", f"`{json.dumps(data)}`"]
    lines = ["", f"## {title}", ""]
    for key, value in data.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else fmt(value)
        lines.append(f"- {key}: {shown}")
    return lines


SEED_MODEL = "OLMoE-1B-7B"


def seed_agreement(record: dict) -> tuple[str, str] | None:
    """(the seeds' verdict on OLMoE-1B-7B, "agrees" / "differs" / "not comparable") for an archived record, or None
    where its prereg names no seeds' verdict (`params.seed_verdict`). A seeds' verdict starting with KILL counts as
    a kill, OPEN (the seeds decided nothing) compares with nothing, any other (PASS, MODEST CONSTRUCTIVE,
    DEEPEN-STRICT, ...) counts as the claim surviving."""
    content = (record.get("prereg") or {}).get("content") or {}
    seed = (content.get("params") or {}).get("seed_verdict")
    if not seed:
        return None
    verdict = record.get("verdict")
    if verdict not in ("KILL", "PASS") or str(seed).upper().startswith("OPEN"):
        return str(seed), "not comparable"
    return str(seed), "agrees" if str(seed).upper().startswith("KILL") == (verdict == "KILL") else "differs"


def _seed_section(record: dict) -> list[str]:
    """The seeds' verdict on OLMoE-1B-7B (prereg `params.seed_verdict`, numbers in `notes`) against this run's."""
    found = seed_agreement(record)
    if found is None:
        return []
    seed, agreement = found
    content = (record.get("prereg") or {}).get("content") or {}
    verdict, model = record.get("verdict"), (record.get("model") or {}).get("name")
    lines = ["", f"## Against the seeds' {SEED_MODEL} verdict", "", f"- seeds on {SEED_MODEL}: **{seed}**"]
    if content.get("notes"):
        lines.append(f"- seeds' numbers: {content['notes']}")
    lines.append(f"- this run on `{model}`: **{verdict}**")
    if agreement == "agrees":
        lines.append("- this run **agrees** with the seeds' verdict.")
    elif agreement == "differs":
        lines.append(
            f"- this run **differs** from the seeds: {seed} on {SEED_MODEL}, {verdict} on `{model}`. That is a "
            "finding about this model under the same locked rules, not a bug to tune away: the seeds' numbers "
            "come from one model family and claim no transfer."
        )
    else:
        lines.append("- not comparable: " + ("the seeds decided nothing about the claim." if verdict in ("KILL", "PASS")
                                             else "this run decided nothing about the claim."))
    return lines


def render_postmortem(record: dict, plots: Iterable[str] = ()) -> str:
    """Markdown postmortem of one archived run (see module docstring); `plots` are PNG names beside it."""
    prereg = record.get("prereg") or {}
    timings = record.get("timings") or {}
    kind = record.get("kind")
    about = f"Run `{record.get('run_id')}` · {kind}"
    if record.get("replication_of"):
        about += f" of `{record['replication_of']}`"
    about += f" · model `{(record.get('model') or {}).get('name')}`"
    if timings:
        about += f" · {timings.get('start')} → {timings.get('end')} ({fmt(timings.get('duration_s'))} s)"
    lines = [f"# {str(record.get('rung', '')).upper()} — {record.get('verdict')}", "", about, "", "## Claim", "",
             f"> {record.get('claim')}", "", f"- metric: {record.get('metric')}",
             f"- prereg: `{prereg.get('path')}`, seal `{prereg.get('seal')}`"]
    if record.get("label"):
        lines.append(f"- label: {record['label']}")
    theorems = (prereg.get("content") or {}).get("theorems")
    if theorems:
        lines.append(f"- Lean theorems: {', '.join(f'`{t}`' for t in theorems)}")
    lines += ["", "## Verdict", ""] + _verdict_section(record) + _failing_sections(record)
    lines += _seed_section(record)
    lines += ["", "## Gates", ""] + _gate_table(record)
    lines += ["", "## Traps", ""] + _trap_table(record)
    lines += _tau_table(record)
    lines += _mapping("Ladder rule (requires)", record.get("requires"))
    lines += _mapping("Model", record.get("model"))
    lines += _mapping("Data", record.get("data"))
    context = dict(record.get("context") or {})
    budget = context.pop("budget_table", None)
    if budget:
        lines += ["", "## Budget table (bytes per line at the model's dtype)", ""]
        lines += _table([[fmt(v) for v in row.values()] for row in budget], list(budget[0]))
    lines += _mapping("Context (cells resolved against the model, ...)", context)
    if record.get("seeds"):
        lines += ["", "## Seeds", "", ", ".join(str(s) for s in record["seeds"])]
    lines += _mapping("Selection", record.get("selection"))
    lines += _mapping("Software", record.get("software"))
    plots = list(plots)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def postmortem_lines_for(record_dir: Path, gate: str, cell: str | None) -> str:
    """The `### gate <gate> @ <cell>` section of record_dir/postmortem.md, else its gate-table line ("" if none)."""
    path = Path(record_dir) / POSTMORTEM_FILE
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = gate_heading(gate, cell and current_cell_id(cell))  # older postmortems spell cells "layer=3-task=text"
    headings = [current_cell_id(line) if line.startswith("### gate ") else line for line in lines]
    if heading in headings:
        start = headings.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
        return "\n".join(lines[start:end]).strip()
    for i, line in enumerate(lines):
        if line == "## Gates":
            table = [l for l in lines[i + 1:] if l.startswith("|")]
            for row in table[2:]:
                cells = [c.strip() for c in row.strip("|").split("|")]
                if len(cells) > 2 and cells[1] == gate and current_cell_id(cells[2]) == current_cell_id(cell or ""):
                    return "\n".join(table[:2] + [row])
            break
    return ""


# ------------------------------------------------------------------------------------------------ plots --------


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _file_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts)) + ".png"


def _gates_png(record: dict, rows: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    by_gate: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_gate.setdefault((row.get("kind", "gate"), row["name"]), []).append(row)
    figure = Figure(figsize=(max(5.5, 2.5 + 0.9 * max(len(v) for v in by_gate.values())), 2.6 * len(by_gate)),
                    layout="constrained")
    axes = figure.subplots(len(by_gate), 1, squeeze=False)[:, 0]
    for ax, ((kind, name), gate_rows) in zip(axes, by_gate.items()):
        labels = [r.get("cell") or "—" for r in gate_rows]
        values = [_number(r.get("value")) for r in gate_rows]
        colors = ["tab:red" if _failed(r) else "tab:blue" for r in gate_rows]
        positions = list(range(len(gate_rows)))
        ax.bar(positions, [0.0 if math.isnan(v) else v for v in values], color=colors)
        threshold, op = _number(gate_rows[0].get("threshold")), gate_rows[0].get("op") or ""
        if not math.isnan(threshold):
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1,
                       label=f"threshold {op} {fmt(threshold)}")
        taus = [_number((r.get("tau") or {}).get("tau")) for r in gate_rows]
        if any(not math.isnan(t) for t in taus):
            ax.scatter(positions, taus, marker="_", s=400, color="tab:orange", label="τ floor", zorder=3)
        crowded = len(labels) > 3
        ax.set_xticks(positions, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
        ax.set_title(f"{kind} {name}" + (" (red: failed)" if any(_failed(r) for r in gate_rows) else ""), fontsize=10)
        ax.set_ylabel("value")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"{record.get('rung')} — {record.get('verdict')}", fontsize=11)
    return _png(figure)


def _series_png(gate: str, series: str, curves: list[tuple[str, list[float]]]) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = figure.subplots()
    longest = max(len(values) for _, values in curves)
    for label, values in curves:
        if longest <= 12 and len(curves) == 1:
            ax.bar(range(len(values)), values, color="tab:blue")
        else:
            ax.plot(range(len(values)), values, marker="." if len(values) <= 64 else None, label=label or None)
    if len(curves) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{gate}: {series}", fontsize=10)
    ax.set_xlabel("index")
    return _png(figure)


def render_plots(record: dict) -> dict[str, bytes]:
    """PNGs for the postmortem: `gates.png` (value per cell vs threshold) and `<gate>-<series>.png` per series.

    Without matplotlib (a minimal GPU image) there are no pictures; the tables still carry every number.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    rows = [g for g in record.get("gates") or [] if not math.isnan(_number(g.get("value")))]
    plots: dict[str, bytes] = {}
    if rows:
        plots["gates.png"] = _gates_png(record, rows)
    curves: dict[tuple[str, str], list[tuple[str, list[float]]]] = {}
    for row in record.get("gates") or []:
        for series, values in (row.get("series") or {}).items():
            if isinstance(values, list) and values:
                curves.setdefault((row["name"], series), []).append(
                    (row.get("cell") or "", [_number(v) for v in values])
                )
    for (gate, series), found in curves.items():
        plots[_file_name(gate, series)] = _series_png(gate, series, found)
    return plots
