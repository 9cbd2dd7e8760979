"""The published prereg schema agrees with the reader: its fields, types and enums are the reader's constants;
every seed prereg and every `ladder new` prereg validates; files the reader refuses, the schema refuses too; the
reference page is the one the schema generates; `ladder schema` prints the file shipped in the package.

`jsonschema` is not a dependency, so `conforms` below checks the subset of JSON Schema 2020-12 the file uses.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from pytest_ladder.cli import main as ladder
from pytest_ladder.new_claim import own_prereg, variant_prereg
from pytest_ladder.prereg import load_prereg
from pytest_ladder.prereg_schema import load_schema, schema_markdown, schema_text
from pytest_ladder.prereg_types import ALLOWED, GATE_KEYS, GATE_OPS, REQUIRED, RUNG_NAME, TRAP_KEYS
from pytest_ladder.seal import read_json_object

REPO = Path(__file__).resolve().parents[2]
SEED_PREREGS = sorted((REPO / "prereg").glob("*/tau.json"))
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(kind: str, value) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[kind])


def conforms(value, schema: dict, root: dict) -> bool:
    """Whether `value` satisfies `schema` (the keywords prereg.schema.json uses)."""
    if "$ref" in schema:
        return conforms(value, root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
    if "oneOf" in schema:
        return sum(conforms(value, option, root) for option in schema["oneOf"]) == 1
    kinds = schema.get("type")
    if kinds is not None and not any(_is(kind, value) for kind in ([kinds] if isinstance(kinds, str) else kinds)):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if _is("number", value):
        if value < schema.get("minimum", value) or value >= schema.get("exclusiveMaximum", float("inf")):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        if schema.get("uniqueItems") and len({json.dumps(item) for item in value}) < len(value):
            return False
        return all(conforms(item, schema.get("items", {}), root) for item in value)
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0) or not set(schema.get("required", ())) <= set(value):
            return False
        names = schema.get("propertyNames")
        if names is not None and not all(conforms(key, names, root) for key in value):
            return False
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            rule = properties.get(key, extra)
            if rule is False or (isinstance(rule, dict) and not conforms(item, rule, root)):
                return False
    return True


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def test_schema_fields_are_the_readers(schema):
    assert schema["required"] == list(REQUIRED)
    assert list(schema["properties"]) == list(REQUIRED) + [f for f in ALLOWED if f not in REQUIRED]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["rung"]["pattern"] == f"^{RUNG_NAME.pattern}$"
    assert schema["properties"]["requires"]["items"]["pattern"] == f"^{RUNG_NAME.pattern}$"
    assert schema["properties"]["field_notes"]["propertyNames"]["enum"] == list(ALLOWED)
    gate = next(form for form in schema["$defs"]["gate"]["oneOf"] if form["type"] == "object")
    trap = next(form for form in schema["$defs"]["trap"]["oneOf"] if form["type"] == "object")
    assert set(gate["properties"]) == set(GATE_KEYS) and gate["properties"]["op"]["enum"] == list(GATE_OPS)
    assert set(trap["properties"]) == set(TRAP_KEYS)
    assert all(spec.get("description") for spec in schema["properties"].values())


@pytest.mark.parametrize("path", SEED_PREREGS, ids=[p.parent.name for p in SEED_PREREGS])
def test_every_seed_prereg_validates(schema, path):
    load_prereg(path)  # the reader accepts it ...
    assert conforms(read_json_object(path), schema, schema)  # ... and so does the schema


def test_ladder_new_preregs_validate(schema):
    assert conforms(own_prereg("mine", "embedded", 8), schema, schema)
    assert conforms(variant_prereg(read_json_object(REPO / "prereg" / "g4" / "tau.json"), "g4"), schema, schema)


REFUSED = [
    ("tau_margin", 1.5), ("tau_margin", -0.1), ("data_points", 0), ("data_points", "1000"), ("claim", ""),
    ("claim", "  "), ("random_seeds", []), ("random_seeds", [1, 1]), ("random_seeds", True), ("tasks", []),
    ("tasks", ["code", "code"]), ("cells", []), ("rung", "../g4"), ("requires", ["G1"]), ("seal", "abc"),
    ("gates", {}), ("gates", {"activation_error": {"op": "=<", "threshold": 0.1}}),
    ("gates", {"activation_error": {"op": "<=", "threshold": -1}}),
    ("gates", {"activation_error": {"op": "<=", "threshold": 0.1, "vs_tau": "yes"}}),
    ("gates", {"activation_error": {"op": "<="}}), ("gates", {"activation_error": {"threshold": 1, "thresh": 2}}),
    ("traps", {"trivial_pass": {"note": "no expect"}}), ("traps", {"trivial_pass": 3}),
    ("params", []), ("label", 3), ("field_notes", {"gate": "typo"}), ("field_notes", {"claim": ""}),
    ("claims", "a typo of claim"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f"{f}={v!r}"[:50] for f, v in REFUSED])
def test_what_the_reader_refuses_the_schema_refuses(schema, tmp_path, field, value):
    data = read_json_object(REPO / "prereg" / "g4" / "tau.json")
    data = {**{k: copy.deepcopy(v) for k, v in data.items() if k != "seal"}, field: value}
    path = tmp_path / "g4" / "tau.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match=f"field '{field}"):
        load_prereg(path)
    assert not conforms(data, schema, schema)


def test_a_missing_required_field_is_refused_by_both(schema):
    data = read_json_object(REPO / "prereg" / "g4" / "tau.json")
    for field in REQUIRED:
        assert not conforms({k: v for k, v in data.items() if k != field}, schema, schema), field


def test_ladder_schema_prints_the_shipped_file(capsys):
    assert ladder(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == schema_text() == (REPO / "pytest_ladder" / "prereg.schema.json").read_text(encoding="utf-8")
    assert json.loads(out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_pyproject_ships_the_schema():
    assert '"prereg.schema.json"' in (REPO / "pyproject.toml").read_text()


def test_the_reference_page_is_generated_from_the_schema(capsys):
    assert ladder(["schema", "--markdown"]) == 0
    generated = capsys.readouterr().out
    assert generated == schema_markdown()
    assert (REPO / "docs" / "prereg-reference.md").read_text(encoding="utf-8") == generated, (
        "docs/prereg-reference.md is stale: regenerate it with `ladder schema --markdown > docs/prereg-reference.md`")
    for field in ALLOWED:
        assert f"| `{field}` |" in generated
