"""The launch guard (protocol §2, §7, §8): may this rung run, and what do the rungs it requires say?

`launch_guard` is a pure function of what was looked up: the seal check, the decision already archived for this
prereg and model, the verdict of each required rung, and whether the selection covers the whole rung.
`rung_guard` looks those up (once per rung per process).

Only a run that can change a decision is refused: a selection that covers the whole rung, of a prereg already
decided on this model, without --ladder-replicate. A partial selection (-m analytical, -k, --lf, a node id) runs;
it cannot decide when the prereg is decided or with --ladder-replicate (`may_decide`, verdict.decide: PARTIAL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

KILL = "KILL"


@dataclass
class Guard:
    """Result of the launch checks of one rung."""

    refused: str | None = None
    decided_in_session: str | None = None  # the verdict this session already archived for the rung (xdist)
    requires_killed: dict | None = None
    requires: dict = field(default_factory=dict)
    replication_of: str | None = None
    replicates: dict | None = None  # the decision a replication replicates: {run_id, verdict, killed_by}
    may_decide: bool = True  # False: a partial selection of a decided prereg, or with --ladder-replicate

    def info(self) -> dict:
        """What the controller needs of the guard, as plain data (it travels on a test report across xdist)."""
        return {"requires": self.requires, "replication_of": self.replication_of, "replicates": self.replicates,
                "may_decide": self.may_decide}


def launch_guard(
    *,
    prereg_path: str,
    seal_ok: bool,
    seal_message: str,
    seal: str,
    model: str,
    decided: dict | None,
    replicate: bool,
    requires: dict[str, dict],
    complete: bool = True,
) -> Guard:
    """Refuse a broken seal, or a `complete` selection of a prereg already decided on `model` (`decided`: {verdict,
    where, run_id[, killed_by]}) unless `replicate`; a partial selection runs without deciding. `requires`: required
    rung -> {verdict, where[, run_id]}; the first KILLED one kills this rung."""
    if not seal_ok:
        return Guard(refused=seal_message)
    guard = Guard(may_decide=complete or (decided is None and not replicate))
    if decided is not None and complete:
        if not replicate:
            return Guard(refused=(
                f"{prereg_path} (seal {seal[:12]}…) is already decided on model {model!r}: {decided['verdict']} in "
                f"{decided['where']}. A sealed prereg gets one decision; run with --ladder-replicate to archive a "
                "replication next to it, or write and seal a new prereg for a new claim."
            ))
        guard.replication_of = decided["run_id"]
        guard.replicates = {"run_id": decided["run_id"], "verdict": decided["verdict"],
                            "killed_by": decided.get("killed_by")}
    guard.requires = dict(requires)
    killed = next((rung for rung, found in requires.items() if found["verdict"] == KILL), None)
    if killed is not None:
        guard.requires_killed = {killed: requires[killed]}
    return guard


def rung_guard(config: pytest.Config, bound: Any, *, remember: bool = True) -> Guard:
    """The launch guard of rung module `bound` (rung.Rung), looked up once per process (`remember` False: looked up
    afresh and not kept, as the session preparation does before any rung ran)."""
    from pytest_ladder.archive import ArchiveError, find_decision, latest_decision, run_time
    from pytest_ladder.binding import bound_prereg
    from pytest_ladder.files import display_path
    from pytest_ladder.model_choice import rung_model
    from pytest_ladder.options import ladder_options
    from pytest_ladder.seal import verify_seal
    from pytest_ladder.state import ladder_state

    state = ladder_state(config)
    if bound.name in state.guards:
        return state.guards[bound.name]
    options = ladder_options(config)
    loaded = bound_prereg(config, bound)
    status = verify_seal(loaded.path, display=loaded.display_path)
    model = rung_model(options.model, loaded)

    def shown(path: Path) -> str:
        return display_path(path, config.invocation_params.dir, config.rootpath)

    decided = requires = None
    in_session = None
    damaged = None
    if status.ok:
        try:
            find_decision(options.archive_dir, bound.name, status.expected, model)
            for required in loaded.requires:
                latest_decision(options.archive_dir, required, model)
        except ArchiveError as error:  # a damaged record may hold the decision: refuse, never decide over it
            damaged = str(error)
    if status.ok and damaged is None:
        found = find_decision(options.archive_dir, bound.name, status.expected, model)
        written = None if found is None else run_time(found.run_id)
        if written is not None and written >= datetime.fromtimestamp(state.started, tz=timezone.utc):
            in_session = found.record["verdict"]  # decided by this session's controller while this worker ran others
        elif found is not None:
            decided = {"verdict": found.record["verdict"], "where": shown(found.path), "run_id": found.record["run_id"],
                       "killed_by": found.record.get("killed_by")}
        requires = {}
        for required in loaded.requires:
            if required in state.killed_in_session:
                requires[required] = {"verdict": KILL, "where": "this session"}
                continue
            latest = latest_decision(options.archive_dir, required, model)
            requires[required] = (
                {"verdict": None, "where": "not decided yet"} if latest is None
                else {"verdict": latest.record["verdict"], "where": shown(latest.path),
                      "run_id": latest.record["run_id"]}
            )
    plan = state.plans.get(bound.name)
    guard = launch_guard(prereg_path=loaded.display_path, seal_ok=status.ok, seal_message=status.message,
                         seal=status.expected or "", model=model, decided=decided, replicate=options.replicate,
                         requires=requires or {}, complete=plan is None or plan.complete)
    guard.decided_in_session = in_session
    if damaged is not None and guard.refused is None:
        guard.refused = damaged
    if remember:
        state.guards[bound.name] = guard
    return guard
