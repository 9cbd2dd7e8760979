"""The four traps (protocol §4): controls whose outcome is declared before the run.

Each function takes what the rung measured and returns a `TrapOutcome(name, expected, observed, refs,
fired_as_declared)`; `observed` and `refs` are what the rung hands to the plugin's `trap.check(observed, **refs)`,
which judges them against the prereg's declared expectation (the thresholds passed here should be those same
locked values).

- random basis: observed = best random error / method error; declared: random loses badly (ratio ≥ min_ratio).
- task swap: observed = error with the basis fit on another task / error with the task's own basis; declared: the
  swap hurts (ratio ≥ min_ratio).
- off-projection: observed = the metric with data routed through the ignored subspace; declared: catastrophic
  (≥ min_value), e.g. a relative error near 1 or a ΔNLL of several hundred percent.
- trivial pass: observed = the largest |value| among error, flip rate, ΔNLL and byte delta of the uncompressed
  model through the whole pipeline; declared: every one exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TrapOutcome:
    name: str
    expected: str
    observed: float
    refs: dict[str, float] = field(default_factory=dict)
    fired_as_declared: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


def random_basis_trap(method_error: float, random_errors: float | Sequence[float], *, min_ratio: float) -> TrapOutcome:
    """Random basis of the same size must lose badly: min(random errors) / method error ≥ min_ratio."""
    errors = [float(random_errors)] if isinstance(random_errors, (int, float)) else [float(e) for e in random_errors]
    if not errors:
        raise ValueError("random_basis_trap: no random-basis errors given")
    observed = _ratio(min(errors), float(method_error))
    return TrapOutcome(
        name="random_basis",
        expected=f"best random error / method error >= {min_ratio}",
        observed=observed,
        refs={"method_error": float(method_error), "best_random_error": min(errors), "n_random": float(len(errors))},
        fired_as_declared=bool(observed >= min_ratio),
    )


def task_swap_trap(own_error: float, swapped_error: float, *, min_ratio: float) -> TrapOutcome:
    """A basis fit on another task must hurt: swapped error / own-task error ≥ min_ratio."""
    observed = _ratio(float(swapped_error), float(own_error))
    return TrapOutcome(
        name="task_swap",
        expected=f"swapped error / own error >= {min_ratio}",
        observed=observed,
        refs={"own_error": float(own_error), "swapped_error": float(swapped_error)},
        fired_as_declared=bool(observed >= min_ratio),
    )


def off_projection_trap(off_value: float, *, min_value: float, on_value: float | None = None) -> TrapOutcome:
    """Data routed through the ignored subspace must be catastrophic: off value ≥ min_value."""
    refs = {} if on_value is None else {"on_value": float(on_value)}
    return TrapOutcome(
        name="off_projection",
        expected=f"off-projection value >= {min_value}",
        observed=float(off_value),
        refs=refs,
        fired_as_declared=bool(float(off_value) >= min_value),
    )


def trivial_pass_trap(
    *, activation_error: float, route_flip_rate: float, delta_nll: float, delta_bytes: float
) -> TrapOutcome:
    """The uncompressed model through the whole pipeline: every metric exactly 0 (no tolerance)."""
    refs = {
        "activation_error": float(activation_error),
        "route_flip_rate": float(route_flip_rate),
        "delta_nll": float(delta_nll),
        "delta_bytes": float(delta_bytes),
    }
    observed = max(abs(v) for v in refs.values())
    return TrapOutcome(
        name="trivial_pass",
        expected="activation error, flip rate, ΔNLL and byte delta all exactly 0",
        observed=observed,
        refs=refs,
        fired_as_declared=all(v == 0.0 for v in refs.values()),
    )
