"""The τ floor (protocol §5): the best score B random baselines of the candidate's budget reach.

Each baseline is built from one seed (the plugin derives the seeds from the prereg's seal) with the same budget as
the candidate (same rank, bits or bytes) and scored by the caller's metric on the same N held-out points.
τ = min over the B values (lower is better: errors, ΔNLL). A candidate passes only if it beats τ under the prereg's
locked decision rule (usually value < τ·(1 − margin)).
The spread (min, max, mean, population std) is reported with every decision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pytest_ladder.expr import Expr, parse_expr
from pytest_ladder.progress import bar

Baseline = TypeVar("Baseline")


@dataclass(frozen=True)
class TauFloor:
    """τ = min(values) over the seeded random baselines, with every value and its seed."""

    tau: float
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    n_points: int | None = None

    @property
    def spread(self) -> dict[str, float]:
        mean = sum(self.values) / len(self.values)
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / len(self.values))
        return {"min": min(self.values), "max": max(self.values), "mean": mean, "std": std}

    def to_dict(self) -> dict:
        return {
            "tau": self.tau, "values": list(self.values), "seeds": list(self.seeds), "n_points": self.n_points,
            "spread": self.spread,
        }


def tau_floor(
    make_baseline: Callable[[int], Baseline],
    metric: Callable[[Baseline], float],
    seeds: Sequence[int],
    *,
    n_points: int | None = None,
    progress: bool | None = None,
) -> TauFloor:
    """Build one baseline per seed with `make_baseline(seed)`, score it with `metric`, return τ = the lowest score."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("tau_floor: no seeds; the prereg's random_seeds must be >= 1 (the hardened default is 10)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"tau_floor: repeated seeds {seeds}; derive B distinct seeds from the seal")
    values = []
    for seed in bar(seeds, desc="tau floor", enabled=progress):
        value = float(metric(make_baseline(seed)))
        if math.isnan(value):
            raise ValueError(f"tau_floor: the metric returned nan for the baseline of seed {seed}")
        values.append(value)
    return TauFloor(tau=min(values), values=tuple(values), seeds=seeds, n_points=n_points)


DEFAULT_RULE = "value < tau * (1 - margin)"  # the hardened decision_threshold of the seeds' preregs


def beats_tau(candidate: float, tau: float | TauFloor, margin: float, rule: str = DEFAULT_RULE) -> bool:
    """Does `candidate` beat the τ floor under a decision rule written in the prereg's rule language (expr.py; the
    names value or error, tau, margin)? A rung's locked rule is its prereg's `decision_threshold`, which
    `Prereg.beats_tau` evaluates the same way; the default rule is candidate < τ · (1 − margin)."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"beats_tau: margin must lie in [0, 1), got {margin}")
    tau_value = tau.tau if isinstance(tau, TauFloor) else float(tau)
    value = float(candidate)
    return bool(_rule(rule).evaluate({"value": value, "error": value, "tau": tau_value, "margin": margin}))


@functools.lru_cache(maxsize=64)
def _rule(text: str) -> Expr:
    return parse_expr(text, allowed_names={"value", "error", "tau", "margin"})
