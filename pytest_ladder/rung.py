"""The rung API: how a test module binds to its sealed prereg and declares gates, traps and prefilters.

A rung module reads like the protocol::

    from pytest_ladder import rung

    ladder = rung("g4")                     # binds to <prereg dir>/g4/tau.json

    @ladder.trap("trivial_pass")
    def test_trivial_pass(trap, ...):
        trap.check(observed)                 # compared with the prereg's declared expectation

    @ladder.prefilter("spectrum_floor")     # analytical: no forward pass, selected by `-m analytical`
    def test_spectrum_floor(cell, gate, ...):
        gate.check(value)

    @ladder.gate("activation_error")        # parametrized over the prereg's cells when it takes `cell`
    def test_activation_error(cell, gate, ...):
        gate.check(value, tau=floor)         # threshold and tau rule come from the prereg, never from the test

`gate.check` and `trap.check` record the value, threshold and cell for the verdict (as plain data on the test
report, so it crosses xdist) and fail the test when the locked rule says so. Only the standard library and pytest
are imported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from pytest_ladder import properties
from pytest_ladder.records import GateRecord, TrapRecord

RECORD_KEY = properties.RECORD_KEY  # user_properties key of a gate/trap measurement
ITEM_KEY = properties.ITEM_KEY  # user_properties key describing the item (rung, kind, name, cell)
CONTEXT_KEY = "ladder_context"  # user_properties key carrying model/data identity recorded by fixtures

KINDS = ("gate", "prefilter", "trap")

_context_key = pytest.StashKey[dict]()


@dataclass
class Rung:
    """One claim: a name bound to `<prereg dir>/<name>/tau.json` and the gates/traps/prefilters its module declares.

    A rung module's own `Rung` is named after the module (`rung("g4")`); every other prereg whose "rung" field names
    that module (e.g. prereg/g4_rank4x/tau.json with "rung": "g4") is tested by the same module as a claim of its own:
    `claim("g4_rank4x")`, the same declarations under the prereg's name, with its own decision and archive folder.
    """

    name: str
    prereg: str | None = None  # explicit path to tau.json (relative to rootdir); default <prereg dir>/<name>/tau.json
    gates: set[str] = field(default_factory=set)
    traps: set[str] = field(default_factory=set)
    prefilters: set[str] = field(default_factory=set)
    module: str | None = None  # the rung module testing this claim when it is another prereg bound to it
    own_prereg: bool = True  # False: the module has no prereg of its own and tests only the preregs bound to it
    check: Callable[[Any, Any], None] | None = None  # check(prereg, rootdir) at collection: PreregError if unusable
    prepare: Callable[..., None] | None = None  # the same, before any rung runs (may import heavy code)

    @property
    def module_name(self) -> str:
        """The name of the rung module whose tests run this claim (`rung("<name>")`)."""
        return self.module or self.name

    def claim(self, name: str) -> Rung:
        """The claim of the prereg `<prereg dir>/<name>/tau.json` bound to this module (its "rung" field): the
        module's declarations under the prereg's name."""
        return Rung(name=name, gates=self.gates, traps=self.traps, prefilters=self.prefilters, module=self.name,
                    check=self.check, prepare=self.prepare)

    def _declare(self, kind: str, name: str, extra_marks: tuple) -> Callable:
        if not name or not isinstance(name, str):
            raise TypeError(f"rung {self.name!r}: {kind} name must be a non-empty string")
        {"gate": self.gates, "prefilter": self.prefilters, "trap": self.traps}[kind].add(name)

        def decorate(function: Callable) -> Callable:
            function = pytest.mark.ladder(rung=self, kind=kind, name=name)(function)
            for mark in extra_marks:
                function = mark(function)
            return function

        return decorate

    def gate(self, name: str) -> Callable:
        """Declare a gate test; its threshold lives in the prereg's `gates[name]`."""
        return self._declare("gate", name, (pytest.mark.gate,))

    def prefilter(self, name: str) -> Callable:
        """Declare an analytical prefilter (a gate with no forward pass); threshold in `prefilters[name]`."""
        return self._declare("prefilter", name, (pytest.mark.gate, pytest.mark.analytical))

    def trap(self, name: str) -> Callable:
        """Declare a trap; its expected outcome lives in the prereg's `traps[name]`."""
        return self._declare("trap", name, (pytest.mark.trap,))


def rung(name: str, *, prereg: str | None = None, own_prereg: bool = True,
         check: Callable[[Any, Any], None] | None = None, prepare: Callable[..., None] | None = None) -> Rung:
    """Bind the calling test module to the rung `name` (its prereg is `<prereg dir>/<name>/tau.json`).

    The module also tests, each as a claim of its own, every prereg in the prereg folder whose "rung" field is `name`
    (parameter variants: no code copied). `own_prereg=False` declares a generic module with no prereg of its own
    (e.g. `rung("expert_weights", own_prereg=False)`): it runs only the preregs bound to it, and none when there are
    none. `check(prereg, rootdir)` runs at collection on every prereg the module binds and raises
    `prereg.PreregError` (naming file, field and fix) for content it cannot run, e.g. a compressor module that does
    not exist (compressors.find_compressor): the session ends as a usage error before anything is spent. Collection
    stays light (no torch); `prepare(prereg, rootdir)` runs the checks that import heavy code once per session
    before any rung (compressors.check_expert_weights), with the same outcome; a `prepare` that takes a third
    argument is called again once the session model is in place, with its checkpoint view (models.checkpoint), for
    checks that need the model's shapes (a compressor's declared storage)."""
    return Rung(name=name, prereg=prereg, own_prereg=own_prereg, check=check, prepare=prepare)


def record_context(config: pytest.Config, key: str, value: dict) -> None:
    """Fixtures call this to carry identity (model, data, cells) into decision.json of every rung that runs after."""
    context = config.stash.setdefault(_context_key, {})
    context[key] = value


def run_context(config: pytest.Config) -> dict:
    return dict(config.stash.get(_context_key, {}))


def record_cell(config: pytest.Config, key: str, value: dict) -> None:
    """Record how a rung resolved its cells on this model (layers, ranks, sizes) under context["cells"][key]."""
    record_context(config, "cells", {**run_context(config).get("cells", {}), key: value})


def rung_context(context: dict, rung: str) -> dict:
    """The part of a session's run context that belongs to `rung`: its cells (record_cell keys `rung` or
    `"<rung> <cell id>"`), its budget deltas (and the budget table only when it has some), and every other key
    (model, data, ...). A rung's record holds this, not what the session's other rungs resolved."""
    found = {key: value for key, value in context.items() if key not in ("cells", "budget_deltas", "budget_table")}
    cells = {key: value for key, value in (context.get("cells") or {}).items()
             if key == rung or key.startswith(f"{rung} ")}
    if cells:
        found["cells"] = cells
    deltas = (context.get("budget_deltas") or {}).get(rung)
    if deltas is not None:
        found["budget_deltas"] = {rung: deltas}
        if "budget_table" in context:
            found["budget_table"] = context["budget_table"]
    return found


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}") from None
    return number


def _tau_record(tau: Any, prereg: Any, value: float) -> dict:
    """Normalise a τ floor (a number, a mapping, or an object with .tau/.values) into the archive's tau row."""
    if isinstance(tau, (int, float)):
        tau_value, values = float(tau), [float(tau)]
    elif isinstance(tau, dict):
        tau_value, values = float(tau["tau"]), [float(v) for v in tau.get("values", [tau["tau"]])]
    else:
        tau_value, values = float(tau.tau), [float(v) for v in getattr(tau, "values", [tau.tau])]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {
        "tau": tau_value,
        "values": values,
        "spread": {"min": min(values), "max": max(values), "std": std},
        "margin": prereg.tau_margin,
        "rule": prereg.decision_threshold.text,
        "beats": bool(prereg.beats_tau(value, tau_value)),
    }


class GateCheck:
    """Handed to a gate or prefilter test as the `gate` fixture: `check(value)` applies the locked threshold."""

    def __init__(self, item: pytest.Item, prereg: Any, kind: str, name: str, cell: Any) -> None:
        self._item, self.prereg, self.kind, self.name, self.cell = item, prereg, kind, name, cell
        self.spec = (prereg.prefilters if kind == "prefilter" else prereg.gates)[name]
        self.checked = False

    @property
    def threshold(self) -> float:
        return self.spec.threshold

    def passes(self, value: float) -> bool:
        """Whether `value` meets the locked `value <op> threshold` (the τ floor aside): a probe may measure more
        (a sweep) only when its claim is about to be killed."""
        return bool(self.spec.passes(_finite(value, f"{self.kind} {self.name!r} value")))

    def check(self, value: float, *, tau: Any = None, series: dict | None = None,
              sweep: tuple[str, dict] | None = None, **extra: Any) -> None:
        """Record `value` for this gate and cell; fail the test (a kill) if the prereg's rule rejects it.

        `tau`: the τ floor (number, mapping or TauFloor) — required when the gate is declared `vs_tau`; the gate then
        also needs `decision_threshold` (e.g. `value < tau * (1 - margin)`) to hold. `series`: named number lists
        for postmortem plots (a spectrum, per-task inflation). `sweep`: (parameter, {parameter value: gate value})
        measured around the claim's own parameter (e.g. ("rank", {1: 0.6, 2: 0.43, 4: 0.2, 8: 0.04})), so the
        postmortem names the value at which the claim would have passed. `extra`: any JSON-able detail worth
        archiving.
        """
        __tracebackhide__ = True
        if self.checked:
            raise RuntimeError(f"{self.kind} {self.name!r} checked twice in {self._item.nodeid}: check once per test")
        value = _finite(value, f"{self.kind} {self.name!r} value")
        if self.spec.vs_tau and tau is None:
            raise TypeError(
                f"{self.kind} {self.name!r} is declared vs_tau in {self.prereg.display_path}: pass tau=<τ floor>"
            )
        tau_row = None if tau is None else _tau_record(tau, self.prereg, value)
        if sweep is not None:
            parameter, measured = sweep
            extra["sweep"] = {"param": parameter, "values": list(measured),
                              "results": [_finite(v, f"{self.name!r} sweep value") for v in measured.values()]}
        passed = bool(self.spec.passes(value)) and (tau_row is None or tau_row["beats"])
        cell_id = getattr(self.cell, "id", None)
        record = GateRecord(self.name, cell_id, self.kind, value, self.spec.op, self.spec.threshold, passed, tau_row,
                            series, extra or {})
        self.checked = True
        self._item.user_properties.append((RECORD_KEY, record.measurement()))
        if not passed:
            where = f" @ {cell_id}" if cell_id else ""
            reason = f"value {value:.6g} fails {self.spec.describe()}"
            if tau_row is not None and not tau_row["beats"]:
                reason = (
                    f"value {value:.6g} vs tau {tau_row['tau']:.6g} (margin {tau_row['margin']}) "
                    f"fails {tau_row['rule']}"
                    + ("" if self.spec.passes(value) else f"; and {self.spec.describe()}")
                )
            pytest.fail(f"KILL {self.prereg.rung} {self.kind} {self.name}{where}: {reason}", pytrace=False)


class TrapCheck:
    """Handed to a trap test as the `trap` fixture: `check(observed, **refs)` compares with the declared outcome."""

    def __init__(self, item: pytest.Item, prereg: Any, name: str, cell: Any) -> None:
        self._item, self.prereg, self.name, self.cell = item, prereg, name, cell
        self.spec = prereg.traps[name]
        self.checked = False

    def check(self, observed: float, **refs: float) -> None:
        """Record the trap's observation; fail (the run becomes INVALID) unless it fired as the prereg declared."""
        __tracebackhide__ = True
        if self.checked:
            raise RuntimeError(f"trap {self.name!r} checked twice in {self._item.nodeid}: check once per test")
        observed = _finite(observed, f"trap {self.name!r} observed value")
        refs = {key: _finite(v, f"trap {self.name!r} reference {key!r}") for key, v in refs.items()}
        fired = bool(self.spec.check(observed, refs))
        cell_id = getattr(self.cell, "id", None)
        record = TrapRecord(self.name, cell_id, self.spec.expect.text, observed, refs, fired)
        self.checked = True
        self._item.user_properties.append((RECORD_KEY, record.measurement()))
        if not fired:
            where = f" @ {cell_id}" if cell_id else ""
            shown = ", ".join(f"{k}={v:.6g}" for k, v in refs.items())
            pytest.fail(
                f"INVALID {self.prereg.rung}: trap {self.name}{where} did not fire as declared: expected "
                f"{self.spec.expect.text}, observed {observed:.6g}" + (f" ({shown})" if shown else ""),
                pytrace=False,
            )
