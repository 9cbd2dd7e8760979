"""The ladder's user properties on test reports: JSON text, so JUnit XML and every other consumer can parse them.

Ladder tests carry plain data on their reports (`report.user_properties`, the way `record_property` does): the item
(`ladder_item`), what a check measured (`ladder_record`), the rung's plan and guard, the run context. pytest's
junitxml writes a property as `str(value)`, which for a dict is a Python repr; so the plugin turns every `ladder_*`
value into JSON text when the report is made (`encode`), and the controller reads them back (`live_properties`).

`ladder_verdict` is the rung's verdict (verdict, run, and the killing gate with its value, threshold and τ floor). It
is known only when the rung is archived, so it goes on the report that settled the rung and on every report of that
rung after it (junitxml reads a test case's properties from its teardown report, when that report is logged); items
replayed from the archive (`pytest archive/`) carry it on every item. Only the standard library and pytest here;
the plugin loads this module as a pytest plugin for its `pytest_runtest_makereport` hook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import pytest

PREFIX = "ladder_"
ITEM_KEY = "ladder_item"  # rung.ITEM_KEY
RECORD_KEY = "ladder_record"  # rung.RECORD_KEY
VERDICT_KEY = "ladder_verdict"


def _strict(value: Any) -> Any:
    """JSON has no NaN or inf: they become the strings "nan", "inf", "-inf" (as in decision.json)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """A property value as strict JSON text (non-JSON values such as paths as their str)."""
    return json.dumps(_strict(value), ensure_ascii=False, allow_nan=False, default=str)


def encode(properties: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`properties` with every `ladder_*` value turned into JSON text; other properties (the user's own
    record_property calls) untouched."""
    return [(key, to_json(value) if str(key).startswith(PREFIX) else value) for key, value in properties]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Outermost: after every other hook added to the report, its `ladder_*` properties become JSON text (on the
    report only; the item keeps its data, and an xdist worker sends the text)."""
    report = yield
    report.user_properties = encode(report.user_properties)
    return report


def decode(properties: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The `ladder_*` properties of a report with their JSON text read back into data (other keys left out)."""
    return [(key, json.loads(value) if isinstance(value, str) else value)
            for key, value in properties if str(key).startswith(PREFIX)]


def live_properties(report: Any) -> dict[str, Any]:
    """{key: data} of the ladder properties of a live ladder test's report (the last value of a key wins); {} for
    any other report, including items replayed from the archive (their `ladder_item` names the archived run)."""
    props = dict(decode(report.user_properties))
    item = props.get(ITEM_KEY)
    if not isinstance(item, dict) or "run_id" in item:
        return {}
    return props


def measurements(report: Any) -> list[dict]:
    """Every measurement a gate or trap check put on the report, in order."""
    return [value for key, value in decode(report.user_properties) if key == RECORD_KEY]


def verdict_property(record: dict) -> dict:
    """The `ladder_verdict` value of an archived record: the rung, the run, its verdict and what decided it (the
    killing gate with value, locked rule and τ floor, or what made the run invalid); None where nothing did."""
    killed, invalid = record.get("killed_by"), record.get("invalid_because")
    tau = (killed or {}).get("tau") or {}
    return {
        "rung": record.get("rung"),
        "run_id": record.get("run_id"),
        "kind": record.get("kind"),
        "verdict": record.get("verdict"),
        "killed_by": None if not killed else {
            "kind": killed.get("kind"), "name": killed.get("name"), "cell": killed.get("cell"),
            "value": killed.get("value"), "op": killed.get("op"), "threshold": killed.get("threshold"),
            "tau": tau.get("tau"), "tau_rule": tau.get("rule"), "beats_tau": tau.get("beats"),
        },
        "invalid_because": None if not invalid else {
            "kind": invalid.get("kind"), "name": invalid.get("name"), "cell": invalid.get("cell"),
            "message": ((invalid.get("message") or "").strip().splitlines() or [""])[0],
        },
    }


def attach_verdict(report: Any, record: dict) -> None:
    """Put the rung's `ladder_verdict` on `report` (once), as JSON text."""
    if not any(key == VERDICT_KEY for key, _ in report.user_properties):
        report.user_properties.append((VERDICT_KEY, to_json(verdict_property(record))))


def add_verdicts_to_junit(config: pytest.Config, records: dict[str, dict], nodeids: dict[str, list[str]]) -> None:
    """Give every item of each rung archived this session its `ladder_verdict` in the JUnit XML, also the items
    logged before the verdict was known and those of rungs archived at session end (`records`: rung -> archived
    record, `nodeids`: rung -> its items). junitxml freezes a test case's XML element when its teardown is logged
    and writes the file at session end; the property is added to those elements before it does."""
    from _pytest.junitxml import mangle_test_address, xml_key

    xml = config.stash.get(xml_key, None)
    if xml is None or not records:
        return
    cases = {}
    for reporter in getattr(xml, "node_reporters_ordered", []):
        element = reporter.to_xml()
        cases.setdefault((element.get("classname"), element.get("name")), element)
    for rung, record in records.items():
        value = to_json(verdict_property(record))
        for nodeid in nodeids.get(rung, []):
            names = mangle_test_address(nodeid)
            classnames = ([xml.prefix] if xml.prefix else []) + names[:-1]
            element = cases.get((".".join(classnames), names[-1]))
            if element is None:
                continue
            properties = element.find("properties")
            if properties is None:
                properties = element.makeelement("properties", {})
                element.insert(0, properties)
            if not any(p.get("name") == VERDICT_KEY for p in properties.findall("property")):
                properties.append(properties.makeelement("property", {"name": VERDICT_KEY, "value": value}))
