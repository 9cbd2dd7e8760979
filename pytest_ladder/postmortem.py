"""postmortem.md and its plots (protocol §7): the human-readable side of one archived run.

`render_postmortem(record)` turns a decision.json/run.json record into markdown: the claim, what killed it (or why it
survived, why it is invalid, why it decides nothing), one `### gate <name> @ <cell>` section per failing gate (replay
quotes it), the gate, trap and τ tables, and the identity of model, data, seeds, selection and software. A run on
another family than OLMoE, given the OLMoE decisions of the same seal (olmoe_decisions), says where it differs from
them ("Compared with the OLMoE run").
`render_plots(record)` draws the pictures that say more than numbers (matplotlib, imported lazily, Agg canvas).
"""

from __future__ import annotations

import importlib
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


def distance_to_passing(value: Any, op: str | None, threshold: Any) -> str:
    """How far a failed `value <op> threshold` was from passing, absolute and relative to the threshold, e.g.
    "0.334959 above the threshold 0.1 (+335% of it)"; "" when it passed or the numbers are missing."""
    value, threshold = _number(value), _number(threshold)
    if op not in NEEDS or math.isnan(value) or math.isnan(threshold):
        return ""
    side, sign = NEEDS[op]
    gap = sign * (value - threshold)
    if gap < 0 or (gap == 0 and op in ("<=", ">=")):
        return ""
    relative = f" ({sign * gap / abs(threshold):+.0%} of it)" if threshold else ""
    return f"{fmt(gap)} {side} the threshold {fmt(threshold)}{relative}; passing needs value {op} {fmt(threshold)}"


NEEDS = {"<": ("above", 1), "<=": ("above", 1), ">": ("below", -1), ">=": ("below", -1)}  # which side fails


def tau_bound(tau: dict) -> str:
    """The bound the τ rule puts on the value, e.g. "value < 0.870683 (τ 0.967425 · (1 − margin 0.1))", when the
    rule reads `value|error <op> <expression of tau and margin>`; "" otherwise."""
    from pytest_ladder.expr import ExprError, parse_expr

    found = re.fullmatch(r"\s*(value|error)\s*(<=|>=|<|>)\s*(.+)", str(tau.get("rule") or ""))
    if not found:
        return ""
    try:
        bound = parse_expr(found.group(3), allowed_names={"tau", "margin"}).evaluate(
            {"tau": _number(tau.get("tau")), "margin": _number(tau.get("margin"))})
    except ExprError:
        return ""
    return f"value {found.group(2)} {fmt(float(bound))}"


def passing_point(gate: GateRecord) -> str:
    """For a failed gate that measured a sweep (`extra.sweep`: the gate's value at other values of one parameter),
    the smallest parameter value at which the locked threshold holds, e.g. "would pass at rank 8 (value 3e-08 <= 0.1;
    measured at rank 1, 2, 4, 8, 128)"; "" without a sweep."""
    sweep = gate.extra.get("sweep") if isinstance(gate.extra, dict) else None
    if not sweep or gate.op not in NEEDS:
        return ""
    param, points = sweep.get("param"), list(zip(sweep.get("values") or [], sweep.get("results") or []))
    measured = f"measured at {param} {', '.join(fmt(x) for x, _ in points)}"
    threshold = _number(gate.threshold)
    passing = [(x, y) for x, y in points if _passes(_number(y), gate.op, threshold)]
    if not passing:
        return f"no measured {param} meets the threshold ({measured})"
    x, y = min(passing, key=lambda point: _number(point[0]))
    tau = f"; the τ floor was measured only at the claim's own {param}" if gate.tau else ""
    return f"would pass at {param} {fmt(x)} (value {fmt(y)} {gate.op} {fmt(gate.threshold)}{tau}); {measured}"


def _passes(value: float, op: str, threshold: float) -> bool:
    return {"<": value < threshold, "<=": value <= threshold, ">": value > threshold, ">=": value >= threshold}[op]


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
            distance = distance_to_passing(gate.value, gate.op, gate.threshold)
            if distance:
                lines.append(f"- how far from passing: {distance}")
        passing = passing_point(gate)
        if passing:
            lines.append(f"- {passing}")
        if gate.tau:
            tau, spread = gate.tau, gate.tau.get("spread") or {}
            bound = tau_bound(tau)
            lines.append(
                f"- τ floor {fmt(tau.get('tau'))} over {len(tau.get('values') or [])} random baselines (spread "
                f"{fmt(spread.get('min'))}–{fmt(spread.get('max'))}, std {fmt(spread.get('std'))}), margin "
                f"{fmt(tau.get('margin'))}, rule `{tau.get('rule')}`" + (f" (needs {bound})" if bound else "")
                + f": beaten {fmt(tau.get('beats'))}"
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


OLMOE = "OLMoE"


def is_olmoe(model: dict | None) -> bool:
    """Is the archived model record an OLMoE (its adapter's architecture; records without one: model_type, name)?"""
    model = model or {}
    if model.get("architecture"):
        return model["architecture"] == OLMOE
    model_type = (model.get("config") or {}).get("model_type")
    return model_type == "olmoe" if model_type else OLMOE.lower() in str(model.get("name") or "").lower()


def olmoe_decisions(archive_dir: Path, record: dict) -> list[dict]:
    """The archived OLMoE decisions (kind "decision") of `record`'s rung under the same prereg seal, oldest first;
    [] when `record` is itself on an OLMoE model or the archive holds none."""
    from pytest_ladder.archive import iter_runs

    if is_olmoe(record.get("model")):
        return []
    rung, seal = record.get("rung"), (record.get("prereg") or {}).get("seal")
    return [run.record for run in iter_runs(Path(archive_dir))
            if run.rung == rung and run.is_decision and run.record.get("kind") == "decision"
            and (run.record.get("prereg") or {}).get("seal") == seal and is_olmoe(run.record.get("model"))]


def _outcomes(record: dict) -> dict[tuple, tuple[Any, str]]:
    """(kind, name, cell) -> (value or observed, outcome) of every gate and trap that ran to an outcome."""
    found: dict[tuple, tuple[Any, str]] = {}
    for gate in _gates(record):
        if gate.outcome in ("passed", "failed"):
            found[(gate.kind, gate.name, current_cell_id(gate.cell) if gate.cell else "")] = (gate.value, gate.outcome)
    for trap in _traps(record):
        if trap.outcome in ("passed", "failed"):
            found[("trap", trap.name, current_cell_id(trap.cell) if trap.cell else "")] = (trap.observed, trap.outcome)
    return found


def _killing_gate(record: dict) -> tuple | None:
    """(kind, name, cell in the current spelling) of what killed `record`, None when nothing did."""
    killed = record.get("killed_by")
    if not killed:
        return None
    return killed.get("kind"), killed.get("name"), current_cell_id(killed["cell"]) if killed.get("cell") else None


def _comparison_section(record: dict, olmoe: list[dict]) -> list[str]:
    """Where this run differs from each OLMoE decision of the same seal: verdicts, killing gates, and the gates and
    traps that ran on both with different outcomes (values side by side)."""
    if not olmoe:
        return []
    model = (record.get("model") or {}).get("name")
    lines = ["", "## Compared with the OLMoE run", ""]
    for other in olmoe:
        other_model = (other.get("model") or {}).get("name")
        lines.append(f"- OLMoE run `{other.get('run_id')}` on `{other_model}` (same seal): **{other.get('verdict')}**"
                     + (f" — {killed_by_sentence(other['killed_by'])}" if other.get("killed_by") else ""))
        lines.append(f"- this run on `{model}`: **{record.get('verdict')}**"
                     + (f" — {killed_by_sentence(record['killed_by'])}" if record.get("killed_by") else ""))
        if "INVALID" in (record.get("verdict"), other.get("verdict")):
            lines.append("- not comparable: an INVALID run decided nothing about the claim.")
        elif record.get("verdict") == other.get("verdict") and _killing_gate(record) == _killing_gate(other):
            lines.append("- the verdict **transfers**: the same verdict" + (
                " and the same killing gate" if record.get("verdict") == "KILL" else "") + " on both families.")
        elif record.get("verdict") == other.get("verdict"):
            lines.append("- the verdict transfers but the killing gate **differs**.")
        else:
            lines.append(f"- the verdict **differs**: {other.get('verdict')} on OLMoE, {record.get('verdict')} here.")
        mine, theirs = _outcomes(record), _outcomes(other)
        differing = [key for key in theirs if key in mine and mine[key][1] != theirs[key][1]]
        if differing:
            lines += ["", "Gates and traps that ran on both with different outcomes:", ""]
            lines += _table([[kind, name, cell, fmt(theirs[(kind, name, cell)][0]), theirs[(kind, name, cell)][1],
                              fmt(mine[(kind, name, cell)][0]), mine[(kind, name, cell)][1]]
                             for kind, name, cell in differing],
                            ["kind", "gate", "cell", "OLMoE value", "OLMoE outcome", "value here", "outcome here"])
        else:
            shared = sum(1 for key in theirs if key in mine)
            lines.append(f"- the {shared} gates and traps that ran on both have the same outcome on both.")
    return lines


def _this_rung_cells(record: dict) -> dict:
    """What this rung recorded with record_cell (keys `rung` or `"<rung> <cell id>"`); older records hold every
    rung's of the session."""
    from pytest_ladder.rung import rung_context

    return rung_context(record.get("context") or {}, str(record.get("rung"))).get("cells") or {}


def _layer_line(layers: dict, record: dict) -> str:
    """"layer 0/16 → 0, 3/16 → 1 (of 8 layers)": the prereg's layers as resolved on the model."""
    from pytest_ladder.prereg_types import cell_id

    content = (record.get("prereg") or {}).get("content") or {}
    given: dict[str, Any] = {}
    for raw in content.get("cells") or []:
        if isinstance(raw, dict) and "layer" in raw:
            params = {k: v for k, v in raw.items() if k != "id"}
            given[current_cell_id(str(raw.get("id") or cell_id(params)))] = raw["layer"]
    resolved: dict[str, Any] = {}
    for cell, index in layers.items():
        resolved.setdefault(str(given.get(current_cell_id(cell), cell)), index)
    n_layers = ((record.get("model") or {}).get("config") or {}).get("num_hidden_layers")
    return ("layer " + ", ".join(f"{layer} → {index}" for layer, index in resolved.items())
            + (f" (of {n_layers} layers)" if n_layers else ""))


def _resolved_section(record: dict) -> list[str]:
    """The parameters as resolved on this model, first: "rank 2 of hidden_size 128 = rank_fraction 0.0117", the
    cells' layers, the other resolved values; then the prereg's locked params."""
    lines: list[str] = []
    for key, value in _this_rung_cells(record).items():
        where = key.split(" ", 1)[1] if " " in key else ""
        value = dict(value) if isinstance(value, dict) else {"value": value}
        for name, size in (value.pop("resolved", None) or {}).items():
            lines.append(f"- {name} {fmt(size.get('value'))} of {size.get('of')} {fmt(size.get('size'))} = "
                         f"{size.get('param')} {fmt(size.get('given'))}" + (f" ({where})" if where else ""))
        layers = value.pop("layers", None)
        if isinstance(layers, dict) and layers:
            lines.append(f"- {_layer_line(layers, record)}")
        shown = ", ".join(f"{name} {json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else fmt(v)}"
                          for name, v in value.items())
        if shown:
            lines.append(f"- {where + ': ' if where else ''}{shown}")
    params = ((record.get("prereg") or {}).get("content") or {}).get("params") or {}
    scalars = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool)) and k != "seed_verdict"}
    if scalars:
        lines.append("- locked in the prereg: " + ", ".join(f"{k} {fmt(v)}" for k, v in scalars.items()))
    return ["", "## Resolved parameters", ""] + lines if lines else []


_SKIP_REPR = re.compile(r"""\(['"].*?['"], \d+, ['"](?:Skipped: )?(.*)['"]\)""", re.DOTALL)


def plain_skip_reason(text: str) -> str:
    """A skip reason as plain text: older records hold pytest's (path, line, "Skipped: reason") tuple as its repr,
    with the machine's absolute path; only the reason is kept."""
    found = _SKIP_REPR.fullmatch(text.strip())
    return found.group(1) if found else text


def render_postmortem(record: dict, plots: Iterable[str] = (), olmoe: Iterable[dict] = ()) -> str:
    """Markdown postmortem of one archived run (see module docstring); `plots` are PNG names beside it; `olmoe` the
    OLMoE decisions of the same seal to compare a run on another family with (olmoe_decisions)."""
    prereg = record.get("prereg") or {}
    timings = record.get("timings") or {}
    kind = record.get("kind")
    about = f"Run `{record.get('run_id')}` · {kind}"
    if record.get("replication_of"):
        about += f" of `{record['replication_of']}`"
    about += f" · model `{(record.get('model') or {}).get('name')}`"
    if timings:
        about += f" · {timings.get('start')} → {timings.get('end')} ({fmt(timings.get('duration_s'))} s)"
    lines = [f"# {str(record.get('rung', '')).upper()} — {record.get('verdict')}", "", about]
    lines += _resolved_section(record)
    lines += ["", "## Claim", "",
             f"> {record.get('claim')}", "", f"- metric: {record.get('metric')}",
             f"- prereg: `{prereg.get('path')}`, seal `{prereg.get('seal')}`"]
    if record.get("label"):
        lines.append(f"- label: {record['label']}")
    theorems = (prereg.get("content") or {}).get("theorems")
    if theorems:
        lines.append(f"- Lean theorems: {', '.join(f'`{t}`' for t in theorems)}")
    lines += ["", "## Verdict", ""] + _verdict_section(record) + _failing_sections(record)
    lines += _seed_section(record)
    lines += _comparison_section(record, list(olmoe))
    lines += ["", "## Gates", ""] + _gate_table(record)
    lines += ["", "## Traps", ""] + _trap_table(record)
    lines += _tau_table(record)
    lines += _mapping("Ladder rule (requires)", record.get("requires"))
    lines += _mapping("Model", record.get("model"))
    lines += _mapping("Data", record.get("data"))
    from pytest_ladder.rung import rung_context

    context = rung_context(record.get("context") or {}, str(record.get("rung")))
    budget = context.pop("budget_table", None)
    if budget:
        lines += ["", "## Budget table (bytes per line at the model's dtype)", ""]
        lines += _table([[fmt(v) for v in row.values()] for row in budget], list(budget[0]))
    lines += _mapping("Context (cells resolved against the model, ...)", context)
    if record.get("seeds"):
        lines += ["", "## Seeds", "", ", ".join(str(s) for s in record["seeds"])]
    selection = dict(record.get("selection") or {})
    if isinstance(selection.get("skip_reasons"), list):
        selection["skip_reasons"] = [plain_skip_reason(str(r)) for r in selection["skip_reasons"]]
    lines += _mapping("Selection", selection)
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


def _threshold_line(ax: Any, op: str | None, threshold: Any) -> None:
    threshold = _number(threshold)
    if not math.isnan(threshold):
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1,
                   label=f"threshold: value {op} {fmt(threshold)}")


def _tau_values(row: dict) -> list:
    return list((row.get("tau") or {}).get("values") or [])


def _gates_figure(record: dict, rows: list[dict]) -> Any:
    """One panel per gate: its value on each cell (red: failed) against the threshold line, the τ floor and the B
    random baselines it was taken from (grey dots)."""
    from matplotlib.figure import Figure

    by_gate: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_gate.setdefault((row.get("kind", "gate"), row["name"]), []).append(row)
    figure = Figure(figsize=(max(5.5, 2.5 + 0.9 * max(len(v) for v in by_gate.values())), 2.8 * len(by_gate)),
                    layout="constrained")
    axes = figure.subplots(len(by_gate), 1, squeeze=False)[:, 0]
    for ax, ((kind, name), gate_rows) in zip(axes, by_gate.items()):
        labels = [r.get("cell") or "(no cell)" for r in gate_rows]
        values = [_number(r.get("value")) for r in gate_rows]
        colors = ["tab:red" if _failed(r) else "tab:blue" for r in gate_rows]
        positions = list(range(len(gate_rows)))
        ax.bar(positions, [0.0 if math.isnan(v) else v for v in values], color=colors, label=f"{name} value")
        _threshold_line(ax, gate_rows[0].get("op") or "", gate_rows[0].get("threshold"))
        baselines = [(p, _number(v)) for p, r in zip(positions, gate_rows) for v in _tau_values(r)]
        if baselines:
            b = max(len(_tau_values(r)) for r in gate_rows)
            ax.scatter([p for p, _ in baselines], [v for _, v in baselines], s=10, color="grey", alpha=0.7, zorder=3,
                       label=f"random baselines (B = {b})")
        taus = [_number((r.get("tau") or {}).get("tau")) for r in gate_rows]
        if any(not math.isnan(t) for t in taus):
            ax.scatter(positions, taus, marker="_", s=400, color="tab:orange", label="τ floor", zorder=4)
        crowded = len(labels) > 3
        ax.set_xticks(positions, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
        ax.set_title(f"{kind} {name}" + (" (red: failed)" if any(_failed(r) for r in gate_rows) else ""), fontsize=10)
        ax.set_xlabel("cell")
        ax.set_ylabel(f"{name} value")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"{record.get('rung')} — {record.get('verdict')}", fontsize=11)
    return figure


def _sweep_figure(gate: GateRecord) -> Any:
    """A failed gate's sweep: its value at each measured parameter value, the threshold, and the claim's own value."""
    from matplotlib.figure import Figure

    sweep = gate.extra["sweep"]
    param = str(sweep.get("param"))
    xs, ys = [_number(x) for x in sweep.get("values") or []], [_number(y) for y in sweep.get("results") or []]
    figure = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = figure.subplots()
    ax.plot(xs, ys, marker="o", color="tab:blue", label=f"{gate.name} by {param}")
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 16:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [fmt(x) for x in sweep.get("values") or []], fontsize=8)
    _threshold_line(ax, gate.op, gate.threshold)
    claimed = _number(gate.extra.get(param))
    if not math.isnan(claimed):
        ax.axvline(claimed, color="tab:red", linewidth=1, label=f"claimed {param} {fmt(claimed)}")
    ax.set_xlabel(param)
    ax.set_ylabel(f"{gate.name} value")
    ax.set_title(f"{gate.name}" + (f" @ {gate.cell}" if gate.cell else "") + f": by {param}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def series_axis(row: dict, series: str, length: int, tasks: list[str]) -> tuple[str, list[Any] | None]:
    """(x label, x values) of a series of a gate row. A series named "<y>_by_<x>", "<y>_per_<x>" or "<y>_vs_<x>" has
    its x values in a list of the same length among the row's other series or extras whose name starts with <x>
    or ends with "<last word of x>s" (G6's "flip_rate_by_rank" with "curve_ranks"), or, for x "task", the prereg's
    tasks; other series are plotted against their position (1 = first)."""
    found = re.fullmatch(r"(.+?)_(?:by|per|vs)_(.+)", series)
    if found:
        x = found.group(2)
        word = x.split("_")[-1] + "s"
        lists = {**(row.get("extra") or {}), **(row.get("series") or {})}
        for name, values in lists.items():
            if (name != series and isinstance(values, list) and len(values) == length
                    and (name.startswith(x) or name.split("_")[-1] == word)):
                return x, values
        if x == "task" and len(tasks) == length:
            return x, list(tasks)
    return f"position in {series} (1 = first)", None


def _series_figure(gate: str, series: str, curves: list[tuple[dict, list[float]]], tasks: list[str]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = figure.subplots()
    x_label = ""
    for row, values in curves:
        x_label, xs = series_axis(row, series, len(values), tasks)
        label = row.get("cell") or None
        if xs is not None and any(isinstance(x, str) for x in xs):
            positions = list(range(len(values)))
            ax.bar(positions, values, color="tab:blue", label=label)
            ax.set_xticks(positions, [str(x) for x in xs], fontsize=8)
        else:
            xs = xs if xs is not None else list(range(1, len(values) + 1))
            ax.plot(xs, values, marker="." if len(values) <= 64 else None, label=label)
            if len(xs) <= 16:
                ax.set_xticks(xs, [fmt(x) for x in xs], fontsize=8)
        if series.startswith(gate):  # the gate's own value per task, layer, ...: the threshold applies to each
            _threshold_line(ax, row.get("op"), row.get("threshold"))
    if len(curves) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{gate}: {series}", fontsize=10)
    ax.set_xlabel(x_label)
    ax.set_ylabel(series.split("_by_")[0].split("_per_")[0].split("_vs_")[0])
    return figure


def plot_figures(record: dict) -> dict[str, Any]:
    """The postmortem's matplotlib figures by file name: `gates.png` (value per cell vs threshold, τ floor and the
    random baselines), `<gate>-<cell>-sweep.png` per failed gate that measured a sweep, `<gate>-<series>.png` per
    series. Raises ImportError without matplotlib."""
    importlib.import_module("matplotlib")  # ImportError here, before any figure is half drawn

    rows = [g for g in record.get("gates") or [] if not math.isnan(_number(g.get("value")))]
    figures: dict[str, Any] = {}
    if rows:
        figures["gates.png"] = _gates_figure(record, rows)
    for gate in _gates(record):
        if gate.failed and isinstance(gate.extra, dict) and gate.extra.get("sweep"):
            figures[_file_name(gate.name, current_cell_id(gate.cell or ""), "sweep")] = _sweep_figure(gate)
    tasks = list(((record.get("prereg") or {}).get("content") or {}).get("tasks") or [])
    curves: dict[tuple[str, str], list[tuple[dict, list[float]]]] = {}
    for row in record.get("gates") or []:
        for series, values in (row.get("series") or {}).items():
            if isinstance(values, list) and values:
                curves.setdefault((row["name"], series), []).append((row, [_number(v) for v in values]))
    for (gate, series), found in curves.items():
        figures[_file_name(gate, series)] = _series_figure(gate, series, found, tasks)
    return figures


def render_plots(record: dict) -> dict[str, bytes]:
    """PNGs of `plot_figures` by file name. Without matplotlib (a minimal GPU image) there are no pictures; the
    tables still carry every number."""
    try:
        figures = plot_figures(record)
    except ImportError:
        return {}
    return {name: _png(figure) for name, figure in figures.items()}
