"""Kill-fast ordering (protocol §6): the cheapest, most decisive tests of each rung run first.

Inside a rung: trivial-pass trap -> analytical prefilters -> the hardest cell's gates -> the other traps -> the other
cells' gates (cell by cell, in prereg order). Rung modules run in ladder order (a rung after the rungs it `requires`,
then natural order of names: g2 before g10). The sort is a pure function of the collected items, so every xdist
worker computes the same order. Items that are not ladder tests keep their relative place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

TRIVIAL_PASS = "trivial_pass"

# ranks inside a rung
RANK_TRIVIAL, RANK_PREFILTER, RANK_HARDEST, RANK_TRAP, RANK_CELLS, RANK_OTHER = range(6)


@dataclass(frozen=True)
class ItemInfo:
    """What ordering needs to know of one collected item."""

    module: str  # the module's node id (file path)
    rung: str | None  # None for items that are not ladder tests
    kind: str | None  # gate | prefilter | trap
    name: str | None
    cell_index: int | None  # position of the item's cell in the prereg, None without a cell
    hardest: bool
    requires: tuple[str, ...] = ()


def natural_key(text: str) -> tuple:
    """g2 < g10 < g10_5 < g10_scan; r-rungs after g-rungs."""
    parts = re.split(r"(\d+)", text.lower())
    return (text.lower()[:1] != "g",) + tuple(int(p) if p.isdigit() else p for p in parts)


def rank(info: ItemInfo) -> int:
    if info.rung is None:
        return RANK_OTHER
    if info.kind == "trap":
        return RANK_TRIVIAL if info.name == TRIVIAL_PASS else RANK_TRAP
    if info.kind == "prefilter":
        return RANK_PREFILTER
    if info.kind == "gate":
        return RANK_HARDEST if info.hardest or info.cell_index is None else RANK_CELLS
    return RANK_OTHER


def rung_order(rungs: dict[str, tuple[str, ...]]) -> list[str]:
    """Topological order of rungs by `requires` (only among the given rungs), ties broken by natural order."""
    remaining = dict(rungs)
    ordered: list[str] = []
    while remaining:
        ready = [r for r, req in remaining.items() if not any(q in remaining for q in req if q != r)]
        if not ready:  # a cycle: fall back to natural order for what is left
            ready = list(remaining)
        first = min(ready, key=natural_key)
        ordered.append(first)
        del remaining[first]
    return ordered


def kill_fast_order(infos: Sequence[ItemInfo]) -> list[int]:
    """Return the indices of `infos` in kill-fast order."""
    module_rung: dict[str, str] = {}
    requires: dict[str, tuple[str, ...]] = {}
    first_seen: dict[str, int] = {}
    for index, info in enumerate(infos):
        first_seen.setdefault(info.module, index)
        if info.rung is not None:
            module_rung.setdefault(info.module, info.rung)
            requires[info.rung] = tuple(sorted(set(requires.get(info.rung, ())) | set(info.requires)))
    ladder_position = {r: i for i, r in enumerate(rung_order(requires))}

    # Rung modules are placed, in ladder order, into the slots that rung modules occupied; others stay put.
    modules = sorted(first_seen, key=first_seen.__getitem__)
    rung_modules = [m for m in modules if m in module_rung]
    slots = iter(sorted(rung_modules, key=lambda m: (ladder_position[module_rung[m]], first_seen[m])))
    module_position = {m: i for i, m in enumerate(next(slots) if m in module_rung else m for m in modules)}

    def key(index: int) -> tuple:
        info = infos[index]
        cell = -1 if info.cell_index is None else info.cell_index
        return (module_position[info.module], rank(info), cell if rank(info) == RANK_CELLS else 0, index)

    return sorted(range(len(infos)), key=key)


def reorder(items: list, infos: Iterable[ItemInfo]) -> None:
    """Sort `items` in place into kill-fast order."""
    order = kill_fast_order(list(infos))
    items[:] = [items[i] for i in order]
