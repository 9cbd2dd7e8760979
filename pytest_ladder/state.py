"""The run state of one pytest process: what collection planned, what each ladder test reported, which rungs are
decided. One `LadderState` per config (a `pytest.StashKey`); the controller's copy decides and archives, an xdist
worker's only plans and reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# user_properties keys: plain data on the test reports, so they cross from xdist workers to the controller
REFUSED_KEY = "ladder_refused"  # the launch guard refused the rung (message)
REQUIRES_KEY = "ladder_requires_killed"  # a required rung is KILLED: {rung: where}
GUARD_KEY = "ladder_guard"  # guard.Guard.info() of the launch guard
PLAN_KEY = "ladder_plan"  # the rung's plan (first report of each rung per process)
UNPREPARED_KEY = "ladder_unprepared"  # the refusal is the session preparation's (a usage error; prepare.py)


@dataclass
class LadderState:
    started: float = field(default_factory=time.time)
    plans: dict[str, Any] = field(default_factory=dict)  # rung -> verdict.Plan
    preregs: dict[str, Any] = field(default_factory=dict)  # rung -> Prereg (this process)
    guards: dict[str, Any] = field(default_factory=dict)  # rung -> guard.Guard (this process)
    outcomes: dict[str, Any] = field(default_factory=dict)  # nodeid -> verdict.Outcome
    refused: dict[str, str] = field(default_factory=dict)  # rung -> message
    requires_killed: dict[str, dict] = field(default_factory=dict)
    guard_info: dict[str, dict] = field(default_factory=dict)  # rung -> guard.Guard.info() from reports
    context: dict = field(default_factory=dict)
    killed_in_session: set[str] = field(default_factory=set)  # rungs a gate killed in this process
    plans_sent: set[str] = field(default_factory=set)  # rungs whose plan this process put on a report
    done: set[str] = field(default_factory=set)  # node ids whose last report (teardown) arrived
    crashed: set[str] = field(default_factory=set)  # node ids an xdist worker crashed on
    decided: dict[str, str] = field(default_factory=dict)  # rung -> verdict, for rungs archived in this session
    aborted: str | None = None
    written: list[tuple[str, dict, Path]] = field(default_factory=list)
    refused_at_write: dict[str, str] = field(default_factory=dict)  # rung -> which decision won (archive.write_run)
    binding_errors: dict[str, str] = field(default_factory=dict)  # rung -> why its prereg cannot bind (collection)
    refusals_shown: set[str] = field(default_factory=set)  # refused rungs whose reason this process has reported
    unprepared: bool = False  # a refusal came from the session preparation: the session ends as a usage error


_state_key = pytest.StashKey[LadderState]()


def init_state(config: pytest.Config) -> LadderState:
    config.stash[_state_key] = LadderState()
    return config.stash[_state_key]


def ladder_state(config: pytest.Config) -> LadderState:
    return config.stash[_state_key]


def is_worker(config: pytest.Config) -> bool:
    """An xdist worker (it plans and reports; only the controller writes the archive)."""
    return hasattr(config, "workerinput")
