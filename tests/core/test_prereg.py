"""The prereg schema: a good G4-like file parses to exact values; every bad case names the file, the field, the fix."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest

from pytest_ladder.expr import ExprError, NonFiniteError
from pytest_ladder.prereg import Cell, GateSpec, PreregError, load_prereg, validate_against_rung

SHOWN = "prereg/g4/tau.json"
RESEAL = f"re-seal with: ladder seal {SHOWN}"


def test_good_prereg_parses_to_exact_values(tmp_path, g4, write_prereg):
    path = write_prereg(g4)
    prereg = load_prereg(path, root=tmp_path)
    assert prereg.path == path and prereg.display_path == SHOWN and prereg.rung == "g4"
    assert (prereg.claim, prereg.model, prereg.data_points) == (g4["claim"], g4["model"], 1000)
    assert prereg.seeds is None and prereg.n_seeds == 10
    assert prereg.tasks == ("code", "math", "text")
    assert prereg.cells == (
        Cell("layer:3-task:text", {"layer": 3, "task": "text"}),
        Cell("layer:3-task:code", {"layer": 3, "task": "code"}),
        Cell("deep", {"layer": 7, "task": "math"}),
    )
    # hardest_cell is spelled "layer=3-task=text", as preregs sealed before ids were -k selectable spell it
    assert prereg.hardest_cell is prereg.cells[0] and prereg.cell("deep") is prereg.cells[2]
    assert prereg.gates == {
        "activation_error": GateSpec("activation_error", "<=", 0.2, True, None),
        "route_flip_rate": GateSpec("route_flip_rate", "<=", 0.1, False, None),
    }
    assert prereg.prefilters == {"bytes": GateSpec("bytes", "<", 0.0, False, "global_delta_bytes")}
    assert set(prereg.traps) == {"trivial_pass", "random_basis"}
    assert prereg.traps["random_basis"].note == "must lose"
    assert prereg.traps["random_basis"].expect.text == "observed > method"
    assert prereg.requires == ("g0",) and prereg.theorems == ("task_union_basis_contains_task_basis",)
    assert prereg.params == {"rank": 16, "scope": {"layers": [3, 7]}}
    assert prereg.tau_margin == 0.1 and prereg.label is None and prereg.notes is None
    assert prereg.seal == json.loads(path.read_text())["seal"] and prereg.raw == json.loads(path.read_text())


def test_beats_tau_and_gate_rules(tmp_path, g4, write_prereg):
    prereg = load_prereg(write_prereg(g4))
    assert prereg.beats_tau(0.3, 0.35) is True  # 0.3 < 0.35 * 0.9 = 0.315
    assert prereg.beats_tau(0.315, 0.35) is False
    with pytest.raises(NonFiniteError) as error:
        prereg.beats_tau(math.nan, 0.35)  # a non-finite value never decides silently
    assert str(error.value) == "'error < tau * (1 - margin)': 'error' is nan, not a finite number"
    gate = prereg.gates["activation_error"]
    assert gate.passes(0.2) and not gate.passes(0.2000001) and not gate.passes(math.nan)
    assert gate.describe() == "value <= 0.2"
    bytes_gate = prereg.prefilters["bytes"]
    assert bytes_gate.passes(-1) and not bytes_gate.passes(0) and bytes_gate.describe() == "value < 0"
    assert GateSpec("ratio", ">=", 2.0).passes(2.0) and not GateSpec("ratio", ">", 2.0).passes(2.0)


def test_traps_check_observed_and_refs(tmp_path, g4, write_prereg):
    traps = load_prereg(write_prereg(g4)).traps
    assert traps["trivial_pass"].check(0.0, {}) is True
    assert traps["trivial_pass"].check(1e-12, {}) is False
    assert traps["random_basis"].check(0.9, {"method": 0.31}) is True
    assert traps["random_basis"].check(0.2, {"method": 0.31}) is False
    with pytest.raises(ExprError, match="no value for 'method'"):
        traps["random_basis"].check(0.9, {})


def test_explicit_seed_list_hardest_cell_object_and_optional_fields(tmp_path, g4, write_prereg):
    g4.update(random_seeds=[7, 0, 123], hardest_cell={"id": "deep", "layer": 7, "task": "math"}, rung="g4",
              label="KILLED", notes="seed G4", prefilters={})
    prereg = load_prereg(write_prereg(g4))
    assert prereg.seeds == [7, 0, 123] and prereg.n_seeds == 3
    assert prereg.hardest_cell.id == "deep" and prereg.label == "KILLED" and prereg.notes == "seed G4"
    g4["hardest_cell"] = {"layer": 3, "task": "code"}
    assert load_prereg(write_prereg(g4)).hardest_cell.id == "layer:3-task:code"


def test_optional_fields_default(tmp_path, g4, write_prereg):
    for key in ("prefilters", "requires", "params", "theorems"):
        del g4[key]
    prereg = load_prereg(write_prereg(g4, seal=False))
    assert prereg.prefilters == {} and prereg.requires == () and prereg.params == {} and prereg.theorems == ()
    assert prereg.seal is None


def test_display_path_without_root_is_the_path(tmp_path, g4, write_prereg):
    path = write_prereg(g4)
    assert load_prereg(path).display_path == str(path)


def test_cache_reuses_until_the_file_changes(tmp_path, g4, write_prereg):
    path = write_prereg(g4)
    first = load_prereg(path, root=tmp_path)
    assert load_prereg(path, root=tmp_path) is first
    g4["data_points"] = 2000
    write_prereg(g4)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_prereg(path, root=tmp_path).data_points == 2000


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


DELETE = object()

# (change: dotted path -> new value, field named in the message, what the message says)
BAD = [
    ("claim", DELETE, "claim", "is missing (required). Add it"),
    ("gates", DELETE, "gates", "is missing (required)"),
    ("claim", "", "claim", "must be a non-empty string"),
    ("claim", 3, "claim", "must be a non-empty string (got 3)"),
    ("data_points", "1000", "data_points", 'must be a whole number >= 1 (got "1000", a string)'),
    ("data_points", 0, "data_points", "must be a whole number >= 1 (got 0)"),
    ("data_points", True, "data_points", "(got true, a boolean)"),
    ("data_points", 1000.0, "data_points", "must be a whole number >= 1 (got 1000.0)"),
    ("random_seeds", 0, "random_seeds", "must be a whole number >= 1 (got 0)"),
    ("random_seeds", [], "random_seeds", "non-empty list of seeds (got [])"),
    ("random_seeds", [1, True], "random_seeds[1]", "(got true, a boolean)"),
    ("random_seeds", [1, -2], "random_seeds[1]", "must be a whole number >= 0 (got -2)"),
    ("random_seeds", "10", "random_seeds", "whole number > 0 or a non-empty list"),
    ("random_seeds", [4, 5, 4], "random_seeds[2]", "repeats seed 4: each random baseline needs its own"),
    ("tau_margin", 1.0, "tau_margin", "must be a number with 0 <= margin < 1 (got 1.0)"),
    ("tau_margin", -0.1, "tau_margin", "(got -0.1)"),
    ("tau_margin", float("nan"), "tau_margin", "(got NaN)"),
    ("tau_margin", False, "tau_margin", "(got false, a boolean)"),
    ("model", None, "model", "must be a non-empty string (got null"),
    ("tasks", [], "tasks", "must be a non-empty list of strings"),
    ("tasks", "text", "tasks", 'must be a list of strings (got "text", a string)'),
    ("tasks", ["code", "code"], "tasks[1]", "repeats 'code'. Remove the duplicate"),
    ("cells", [], "cells", "must be a non-empty list of objects"),
    ("cells.0", [3, "text"], "cells[0]", "must be an object"),
    ("cells.0.layer", [1, 2], "cells[0].layer", "must be a scalar"),
    ("cells.0.layer", float("inf"), "cells[0].layer", "must be a finite number (got Infinity): strict JSON has no"),
    ("cells.0", {}, "cells[0]", "is empty. Give the cell its parameters"),
    ("cells.1", {"layer": 3, "task": "text"}, "cells[1]", "has the same id 'layer:3-task:text' as cells[0]"),
    ("hardest_cell", "layer=9-task=text", "hardest_cell", "names 'layer=9-task=text', which is not among the cells"),
    ("hardest_cell", {"layer": 9}, "hardest_cell", 'is {"layer": 9}, which is not among the cells'),
    ("hardest_cell", 3, "hardest_cell", "must be a cell id string or a cell object"),
    ("gates", {}, "gates", "must not be empty"),
    ("gates", [0.1], "gates", "must be an object"),
    ("gates.activation_error.threshold", -0.1, "gates.activation_error.threshold",
     "must be a finite number >= 0 (got -0.1)"),
    ("gates.activation_error.threshold", float("inf"), "gates.activation_error.threshold", "(got Infinity)"),
    ("gates.activation_error.threshold", "0.2", "gates.activation_error.threshold", '(got "0.2", a string)'),
    ("gates.activation_error.threshold", True, "gates.activation_error.threshold", "(got true, a boolean)"),
    ("gates.activation_error.threshold", DELETE, "gates.activation_error.threshold", "is missing (required)"),
    ("gates.route_flip_rate", True, "gates.route_flip_rate", "(got true, a boolean)"),
    ("gates.route_flip_rate", -1, "gates.route_flip_rate",
     'must be a finite number >= 0 (the threshold) or an object {"op": ..., "threshold": ...} (got -1)'),
    ("gates.route_flip_rate", float("nan"), "gates.route_flip_rate", "(got NaN)"),
    ("gates.activation_error.op", "=<", "gates.activation_error.op",
     'must be one of <, <=, >, >= (got "=<", a string) (did you mean \'<=\'?). Fix the value'),
    ("gates.activation_error.treshold", 0.2, "gates.activation_error.treshold",
     "is not a gate field (did you mean 'threshold'?); allowed: op, threshold, note, vs_tau. Remove or rename it"),
    ("gates.activation_error.vs_tau", "yes", "gates.activation_error.vs_tau", "must be true or false"),
    ("prefilters.bytes.threshold", -1, "prefilters.bytes.threshold", "must be a finite number >= 0 (got -1)"),
    ("traps.trivial_pass", "observed", "traps.trivial_pass", "must be a comparison over 'observed'"),
    ("traps.trivial_pass", "1 < 2", "traps.trivial_pass", "must be a comparison over 'observed'"),
    ("traps.trivial_pass", "open('x') == 0", "traps.trivial_pass", "a call of 'open'"),
    ("traps.trivial_pass", 0, "traps.trivial_pass", "must be an expectation such as"),
    ("traps.random_basis.expect", DELETE, "traps.random_basis.expect", "is missing (required)"),
    ("traps.random_basis.expected", "observed > 1", "traps.random_basis.expected", "is not a trap field"),
    ("decision_threshold", "error <", "decision_threshold", "is not a valid rule: 'error <' does not parse"),
    ("decision_threshold", "__import__('os').system('rm -rf /') < tau", "decision_threshold",
     "a call of \"__import__('os').system\""),
    ("decision_threshold", "eval('error') < tau", "decision_threshold", "a call of 'eval'"),
    ("decision_threshold", "error.real < tau", "decision_threshold", "attribute access"),
    ("decision_threshold", "error * tau", "decision_threshold", "must be a comparison"),
    ("decision_threshold", "loss < tau", "decision_threshold", "unknown name 'loss'"),
    ("decision_threshold", "error < 0.1", "decision_threshold", "must compare the candidate (value or error) with"),
    ("decision_threshold", 0.1, "decision_threshold", "must be a rule as a string"),
    ("requires", ["g4"], "requires", "lists the rung itself ('g4'). Remove it"),
    ("requires", "g0", "requires", "must be a list of strings"),
    ("params", [1], "params", "must be an object"),
    ("params.scope.layers.1", float("nan"), "params.scope.layers[1]", "must be a finite number (got NaN)"),
    ("requires", ["../../../x"], "requires[0]", 'must be a rung name of lowercase letters, digits and _ only (got '
     '"../../../x", a string). Use the rung\'s folder name under prereg/'),
    ("requires", ["g0", "G1"], "requires[1]", 'must be a rung name of lowercase letters, digits and _ only'),
    ("rung", "../g4", "rung", 'must be a rung name of lowercase letters, digits and _ only (got "../g4", a string)'),
    ("theorems", [""], "theorems[0]", "must be a non-empty string"),
    ("label", 3, "label", "must be a non-empty string"),
    ("gate", {"x": 1}, "gate", "is not a prereg field (did you mean 'gates'?); allowed fields: claim, metric"),
    ("tau", 0.1, "tau", "is not a prereg field"),
]


@pytest.mark.parametrize(("change", "value", "field", "says"), BAD, ids=[(f"{b[0]}=<deleted>" if b[1] is DELETE else f"{b[0]}={b[1]!r}")[:60] for b in BAD])
def test_bad_prereg_names_file_field_and_fix(tmp_path, g4, write_prereg, change, value, field, says):
    data = copy.deepcopy(g4)
    _set(data, change, value)
    path = write_prereg(data, seal=False)
    with pytest.raises(PreregError) as error:
        load_prereg(path, root=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{SHOWN}: field '{field}' "), message
    assert says in message, message
    assert message.endswith(f"and {RESEAL}"), message


def test_nan_threshold_message_is_exact(tmp_path, g4, write_prereg):
    g4["gates"]["activation_error"]["threshold"] = float("nan")
    path = write_prereg(g4, seal=False)
    assert "NaN" in path.read_text()
    with pytest.raises(PreregError) as error:
        load_prereg(path, root=tmp_path)
    assert str(error.value) == (
        "prereg/g4/tau.json: field 'gates.activation_error.threshold' must be a finite number (got NaN): strict JSON "
        "has no NaN or Infinity. Fix the value and re-seal with: ladder seal prereg/g4/tau.json"
    )


@pytest.mark.parametrize("module", ["prereg", "expr", "files", "archive", "postmortem", "scoreboard", "records", "prereg_types"])
def test_the_data_layer_imports_no_pytest(module):
    """PreregError is a plain exception (the plugin shows it as a usage error), so the prereg, archive and report
    modules stand without pytest."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec(f"pytest_ladder.{module}").origin).read_text()
    imported = {alias.name.split(".")[0] for node in ast.parse(source).body if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.parse(source).body
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"pytest", "_pytest"}
    assert not issubclass(PreregError, pytest.UsageError)


def test_bad_seal_field(tmp_path, g4, write_prereg):
    path = write_prereg({**g4, "seal": "not-hex"}, seal=False)
    with pytest.raises(PreregError, match=r"field 'seal' must be 64 lowercase hex digits \(got \"not-hex\"\)"):
        load_prereg(path, root=tmp_path)


@pytest.mark.parametrize(
    ("text", "says"),
    [('{"claim": "x",}', "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 15"),
     ("[1, 2]", "the top level must be a JSON object")],
)
def test_unreadable_prereg(tmp_path, g4, write_prereg, text, says):
    path = write_prereg(g4, text=text)
    with pytest.raises(PreregError) as error:
        load_prereg(path, root=tmp_path)
    assert str(error.value).startswith(f"{SHOWN}: {says}")


def test_missing_file(tmp_path):
    with pytest.raises(PreregError, match=r"prereg/g9/tau.json: no such prereg file.*ladder seal prereg/g9/tau.json"):
        load_prereg(tmp_path / "prereg" / "g9" / "tau.json", root=tmp_path)


def test_validate_against_rung(tmp_path, g4, write_prereg):
    prereg = load_prereg(write_prereg(g4), root=tmp_path)
    gates, traps, prefilters = {"activation_error", "route_flip_rate"}, {"trivial_pass", "random_basis"}, {"bytes"}
    validate_against_rung(prereg, gates, traps, prefilters)
    with pytest.raises(PreregError) as error:
        validate_against_rung(prereg, {"activation_error", "flip_rate"}, traps, prefilters)
    assert str(error.value).startswith(
        f"{SHOWN}: unknown gate 'route_flip_rate' in field 'gates': the rung module declares: activation_error, "
        "flip_rate."
    )
    assert str(error.value).endswith(RESEAL)
    with pytest.raises(PreregError) as error:
        validate_against_rung(prereg, gates | {"loss"}, traps, prefilters)
    assert str(error.value) == (
        f"{SHOWN}: field 'gates' lacks the gate 'loss' that the rung module declares. Add its threshold and {RESEAL}"
    )
    with pytest.raises(PreregError, match=r"unknown trap 'random_basis' in field 'traps': the rung module declares: "
                                          r"trivial_pass\."):
        validate_against_rung(prereg, gates, {"trivial_pass"}, prefilters)
    with pytest.raises(PreregError, match=r"unknown prefilter 'bytes' in field 'prefilters': the rung module "
                                          r"declares: \(none\)"):
        validate_against_rung(prereg, gates, traps, set())
    with pytest.raises(PreregError, match=r"field 'traps' lacks the trap 'task_swap'.*Add its expectation"):
        validate_against_rung(prereg, gates, traps | {"task_swap"}, prefilters)
