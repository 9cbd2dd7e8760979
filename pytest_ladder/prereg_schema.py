"""The prereg schema, published: `prereg.schema.json` (JSON Schema 2020-12, shipped in the package) states every
field of `tau.json` that the reader (prereg_reader.py) accepts; `ladder schema` prints it and `ladder schema
--markdown` the reference page generated from it (docs/prereg-reference.md). The reader stays the judge: it also
checks what a schema cannot state (expressions, the hardest cell among the cells, the module's declarations).
The standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import resources

SCHEMA_NAME = "prereg.schema.json"


def schema_text() -> str:
    """The schema file's text, as shipped in the package."""
    return resources.files("pytest_ladder").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")


def load_schema() -> dict:
    return json.loads(schema_text())


def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None


def describe_type(schema: dict) -> str:
    """A JSON Schema fragment as a short type in words: "integer ≥ 1", "list of strings", "string or null"."""
    name = _ref_name(schema)
    if name:
        return f"[{name}](#{name})"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(describe_type(option) for option in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = describe_type(schema.get("items", {}))
        words = f"list of {items if items.startswith('[') else _plural(items)}"
        if schema.get("minItems"):
            words = f"non-empty {words}"
        return words + (", no repeats" if schema.get("uniqueItems") else "")
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            words = f"object: name → {describe_type(values)}"
            return f"non-empty {words}" if schema.get("minProperties") else words
        return "object"
    if kind == "string":
        if schema.get("pattern") == "\\S":
            return "non-empty string"
        return f"string matching `{schema['pattern']}`" if "pattern" in schema else "string"
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "exclusiveMaximum" in schema:
        bounds.append(f"< {schema['exclusiveMaximum']}")
    return " ".join([kind, ", ".join(bounds)]).strip()


def _plural(words: str) -> str:
    """"non-empty string" -> "non-empty strings": the first type word in the plural."""
    return re.sub(r"\b(string|integer|number|object)\b", r"\1s", words, count=1)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(schema: dict) -> str:
    return f" Default: `{json.dumps(schema['default'], ensure_ascii=False)}`." if "default" in schema else ""


def _table(properties: dict, required: list[str]) -> list[str]:
    lines = ["| field | required | type | meaning |", "|---|---|---|---|"]
    for name, schema in properties.items():
        lines.append(f"| `{name}` | {'yes' if name in required else 'no'} | {_cell(describe_type(schema))} | "
                     f"{_cell(schema.get('description', '') + _default(schema))} |")
    return lines


def schema_markdown(schema: dict | None = None) -> str:
    """The prereg reference page: the schema's description, a table of its fields, and one section per definition
    (cell, gate, trap) with the forms it takes."""
    schema = load_schema() if schema is None else schema
    lines = [
        f"# {schema['title']} reference", "",
        f"<!-- generated from pytest_ladder/{SCHEMA_NAME} by `ladder schema --markdown`: edit the schema, then "
        "regenerate -->", "",
        schema["description"], "",
        "The schema itself: `ladder schema` prints it (JSON Schema 2020-12); editors that read JSON Schema can check "
        "a `tau.json` as you type. `ladder new NAME` writes a prereg with every field present and explained.", "",
        "## Fields", "",
        *_table(schema["properties"], schema.get("required", [])),
    ]
    for name, definition in schema.get("$defs", {}).items():
        lines += ["", f"## {name}", "", definition.get("description", ""), ""]
        forms = sorted(definition.get("oneOf", [definition]), key=lambda form: form.get("type") != "object")
        for form in forms:
            if form.get("type") == "object" and ("properties" in form or "additionalProperties" in form):
                extra = form.get("additionalProperties")
                if isinstance(extra, dict):
                    lines.append(f"An object; any other key is a parameter: {describe_type(extra)}.")
                    lines.append("")
                lines += [*_table(form.get("properties", {}), form.get("required", [])), ""]
            else:
                lines += [f"- Or, in short: {describe_type(form)}.", ""]
        while lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`ladder schema [--markdown]`."""
    parser = argparse.ArgumentParser(prog="ladder schema",
                                     description="Print the prereg (tau.json) JSON Schema, or its reference page.")
    parser.add_argument("--markdown", action="store_true",
                        help="print the reference page generated from the schema (docs/prereg-reference.md)")
    args = parser.parse_args(argv)
    print(schema_markdown() if args.markdown else schema_text(), end="")
    return 0


__all__ = ["SCHEMA_NAME", "schema_text", "load_schema", "describe_type", "schema_markdown", "main"]
