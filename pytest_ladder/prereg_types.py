"""The validated pre-registration as frozen dataclasses: its cells, the locked rule of each gate and trap, and the
`Prereg` itself; `PreregError` for bad content. prereg.py reads `tau.json` into these; the plugin, the rung API and
the verdict read them. The standard library and expr.py only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pytest_ladder.expr import Expr

REQUIRED = (
    "claim", "metric", "data_points", "random_seeds", "decision_threshold", "tau_margin", "model", "tasks", "cells",
    "hardest_cell", "gates", "traps",
)
OPTIONAL = ("rung", "prefilters", "requires", "params", "theorems", "label", "notes", "field_notes", "seal")
ALLOWED = REQUIRED + OPTIONAL
GATE_OPS = ("<", "<=", ">", ">=")
GATE_KEYS = ("op", "threshold", "note", "vs_tau")
TRAP_KEYS = ("expect", "note")
RULE_NAMES = frozenset({"value", "error", "tau", "margin"})  # `error` is an alias of `value`
TRAP_OBSERVED = "observed"
RUNG_NAME = re.compile(r"[a-z0-9_]+")  # rung names become folder names: nothing that can leave a folder


class PreregError(Exception):
    """Bad prereg content; the message names the file, the field and the fix."""


def cell_id(params: dict) -> str:
    """The id of a cell without an explicit "id": "key:value" pairs joined with "-" in the prereg's key order, e.g.
    "layer:3/16-task:text" (characters pytest's -k grammar accepts, so `-k "layer:3/16"` selects the cell)."""
    return "-".join(f"{key}:{value}" for key, value in params.items())


def current_cell_id(text: str) -> str:
    """A cell id as this version spells it. Records and preregs written before ids were -k selectable spell them
    "layer=3/16-task=text" (`=` in an id is rejected by -k): "=" reads as ":", so those still name their cell."""
    return text.replace("=", ":")


@dataclass(frozen=True)
class Cell:
    """One unit of evaluation; `id` is the explicit "id" or `cell_id(params)` ("layer:3/16-task:text")."""

    id: str
    params: dict

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class GateSpec:
    """A gate's locked rule: `value <op> threshold`; `vs_tau` gates must also beat the τ floor by the margin."""

    name: str
    op: str
    threshold: float
    vs_tau: bool = False
    note: str | None = None

    def passes(self, value: float) -> bool:
        """`value <op> threshold`; NaN never passes."""
        value = float(value)
        if math.isnan(value):
            return False
        return {
            "<": value < self.threshold,
            "<=": value <= self.threshold,
            ">": value > self.threshold,
            ">=": value >= self.threshold,
        }[self.op]

    def describe(self) -> str:
        """The rule as text, e.g. "value <= 0.1"."""
        return f"value {self.op} {format_number(self.threshold)}"


@dataclass(frozen=True)
class TrapSpec:
    """A trap's declared outcome: a comparison over `observed` and the references the trap test supplies."""

    name: str
    expect: Expr
    note: str | None = None

    def check(self, observed: float, refs: dict[str, float]) -> bool:
        """True when the trap fired as declared (ExprError if the expectation names a reference not given)."""
        return bool(self.expect.evaluate({**refs, TRAP_OBSERVED: observed}))


@dataclass(frozen=True)
class Prereg:
    """A validated prereg. Treat `raw`, `params` and the dicts as read-only: load_prereg caches and shares them."""

    path: Path
    display_path: str
    rung: str
    claim: str
    metric: str
    data_points: int
    seeds: list[int] | None  # the explicit seed list, or None: derive n_seeds seeds from the seal
    n_seeds: int
    decision_threshold: Expr
    tau_margin: float
    model: str
    tasks: tuple[str, ...]
    cells: tuple[Cell, ...]
    hardest_cell: Cell
    gates: dict[str, GateSpec]
    traps: dict[str, TrapSpec]
    prefilters: dict[str, GateSpec]
    requires: tuple[str, ...]
    params: dict
    theorems: tuple[str, ...]
    label: str | None
    seal: str | None
    raw: dict
    notes: str | None = None
    module: str | None = None  # the rung module that tests this claim (field "rung"; default: the claim's own name)

    @property
    def rung_module(self) -> str:
        """The name of the rung module (`rung("<name>")`) that tests this prereg: its "rung" field, else its own."""
        return self.module or self.rung

    def cell(self, id: str) -> Cell:
        """The cell with this id (KeyError listing the cells otherwise)."""
        for cell in self.cells:
            if cell.id == id:
                return cell
        raise KeyError(f"no cell {id!r} in {self.display_path}; its cells are: {', '.join(c.id for c in self.cells)}")

    def beats_tau(self, value: float, tau: float) -> bool:
        """Evaluate the locked decision_threshold with value (alias error), tau and margin = tau_margin."""
        env = {"value": value, "error": value, "tau": tau, "margin": self.tau_margin}
        return bool(self.decision_threshold.evaluate(env))


def format_number(value: float) -> str:
    """Short exact-enough text for a threshold: 0 -> "0", 0.1 -> "0.1", 1e-07 -> "1e-07"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
