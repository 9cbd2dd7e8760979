"""The pytest plugin (entry point `pytest11: ladder`): options, markers, the rung fixtures and the session hooks.

Import-light on purpose: only the standard library and pytest at module level. Prereg parsing, the archive and the
postmortem load inside the hooks that need them; torch and transformers only inside the model fixtures
(pytest_ladder.fixtures), so `pytest --help`, `-m analytical` and `pytest archive/` stay fast.

Flow: collection binds each rung module to its prereg (bad content: a UsageError naming the file and field),
parametrizes cells and sorts items kill-fast (ordering.py). Setup refuses a rung whose seal is broken or whose
decision already exists, and fails a rung whose required rung was KILLED. Gate and trap tests record their values
on the report; the controller (never an xdist worker) turns them into the verdict (verdict.py) and writes the
archive (archive.py) at session end, then prints the verdict and the gate table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.rung import CONTEXT_KEY, ITEM_KEY, RECORD_KEY, GateCheck, Rung, TrapCheck, run_context

pytest_plugins = ["pytest_ladder.fixtures", "pytest_ladder.rung_fixtures"]

REFUSED_KEY = "ladder_refused"
REQUIRES_KEY = "ladder_requires_killed"
PLAN_KEY = "ladder_plan"  # user_properties key carrying the rung's plan to the controller (first report per process)
STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # end the session like Ctrl-C: the rung in flight is ABORTED
MARKERS = {
    "analytical": "cheap analytical prefilter of a rung: no forward pass, no GPU (select in CI with -m analytical)",
    "gate": "a ladder gate: a locked pass/fail metric of a rung (conjunctive: one failure kills the claim)",
    "trap": "a ladder trap: a control with a declared outcome (firing wrong makes the run INVALID)",
    "hardest": "a gate on the rung's hardest cell (runs first among gates; with -x a failure ends the run)",
    "gpu": "needs a CUDA device",
    "ladder(rung, kind, name)": "internal: binds a test to its rung, set by ladder.gate/trap/prefilter",
}
SOFTWARE = ("pytest", "pytest-ladder", "pytest-xdist", "torch", "transformers", "accelerate", "numpy", "tokenizers")


# --------------------------------------------------------------------------------------------------- options ---


def _directory(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} exists and is not a folder")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ladder", "Compression Falsification Ladder")
    group.addoption(
        "--ladder-prereg-dir",
        dest="ladder_prereg_dir",
        type=_directory,
        default=None,
        metavar="DIR",
        help="folder holding <rung>/tau.json preregistrations (default: ini ladder_prereg_dir, 'prereg')",
    )
    group.addoption(
        "--ladder-archive-dir",
        dest="ladder_archive_dir",
        type=_directory,
        default=None,
        metavar="DIR",
        help="folder the verdicts are archived in (default: ini ladder_archive_dir, 'archive')",
    )
    group.addoption(
        "--ladder-replicate",
        dest="ladder_replicate",
        action="store_true",
        help="run a prereg that is already decided on this model again, archived as a replication of the decision",
    )
    group.addoption(
        "--ladder-kill-fast",
        dest="ladder_kill_fast",
        action="store_true",
        default=None,
        help="once a rung is killed, skip its remaining tests and go on with the next rung (-x per rung)",
    )
    parser.addini("ladder_kill_fast", "skip a killed rung's remaining tests (like -x, per rung)", type="bool",
                  default=False)
    parser.addini("ladder_prereg_dir", "folder of <rung>/tau.json preregistrations", default="prereg")
    parser.addini("ladder_archive_dir", "folder the verdicts are archived in", default="archive")


def _ini_base(config: pytest.Config) -> Path:
    return Path(config.inipath).parent if config.inipath else Path(config.rootpath)


def prereg_dir(config: pytest.Config) -> Path:
    option = config.getoption("ladder_prereg_dir")
    if option is not None:
        return (config.invocation_params.dir / option).resolve()
    return (_ini_base(config) / config.getini("ladder_prereg_dir")).resolve()


def archive_dir(config: pytest.Config) -> Path:
    option = config.getoption("ladder_archive_dir")
    if option is not None:
        return (config.invocation_params.dir / option).resolve()
    return (_ini_base(config) / config.getini("ladder_archive_dir")).resolve()


def _display(config: pytest.Config, path: Path) -> str:
    for base in (config.invocation_params.dir, config.rootpath):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


# ------------------------------------------------------------------------------------------------ state --------


@dataclass
class Guard:
    """Result of the launch checks of one rung (computed once per rung per process)."""

    refused: str | None = None
    requires_killed: dict | None = None
    requires: dict = field(default_factory=dict)
    replication_of: str | None = None


@dataclass
class LadderState:
    started: float = field(default_factory=time.time)
    plans: dict[str, Any] = field(default_factory=dict)  # rung -> verdict.Plan
    preregs: dict[str, Any] = field(default_factory=dict)  # rung -> Prereg (this process)
    guards: dict[str, Guard] = field(default_factory=dict)
    outcomes: dict[str, Any] = field(default_factory=dict)  # nodeid -> verdict.Outcome
    item_rung: dict[str, str] = field(default_factory=dict)  # nodeid -> rung (from reports)
    refused: dict[str, str] = field(default_factory=dict)  # rung -> message
    requires_killed: dict[str, dict] = field(default_factory=dict)
    guard_info: dict[str, dict] = field(default_factory=dict)  # rung -> {requires, replication_of} from reports
    context: dict = field(default_factory=dict)
    killed_in_session: set[str] = field(default_factory=set)  # rungs a gate killed in this process
    plans_sent: set[str] = field(default_factory=set)  # rungs whose plan this process put on a report
    done: set[str] = field(default_factory=set)  # node ids whose last report (teardown) arrived
    crashed: set[str] = field(default_factory=set)  # node ids an xdist worker crashed on
    decided: dict[str, str] = field(default_factory=dict)  # rung -> verdict, for rungs archived in this session
    aborted: str | None = None
    written: list[tuple[str, dict, Path]] = field(default_factory=list)


_state_key = pytest.StashKey[LadderState]()


def _state(config: pytest.Config) -> LadderState:
    return config.stash[_state_key]


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")
    config.stash[_state_key] = LadderState()
    config.pluginmanager.register(LadderSession(config), "ladder-session")


# ------------------------------------------------------------------------------------------------ binding ------


def _ladder_marker(node: Any) -> pytest.Mark | None:
    return node.get_closest_marker("ladder")


def bound_prereg(config: pytest.Config, bound: Rung) -> Any:
    """Load and validate the prereg a rung module is bound to (PreregError, a UsageError, on bad content)."""
    from pytest_ladder.prereg import load_prereg, validate_against_rung

    state = _state(config)
    if bound.name not in state.preregs:
        path = Path(bound.prereg) if bound.prereg else prereg_dir(config) / bound.name / "tau.json"
        if not path.is_absolute():
            path = (_ini_base(config) / path).resolve()
        if not path.is_file():
            raise pytest.UsageError(
                f"rung {bound.name!r}: no prereg at {_display(config, path)}. Write it (see README 'tau.json "
                f"reference'), seal it with `ladder seal {_display(config, path)}`, or point --ladder-prereg-dir "
                "at the folder holding <rung>/tau.json."
            )
        prereg = load_prereg(path, root=config.rootpath)
        validate_against_rung(prereg, bound.gates, bound.traps, bound.prefilters)
        state.preregs[bound.name] = prereg
    return state.preregs[bound.name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = _ladder_marker(metafunc.definition)
    if marker is None:
        return
    prereg = bound_prereg(metafunc.config, marker.kwargs["rung"])
    if "cell" in metafunc.fixturenames:
        hardest = prereg.hardest_cell.id
        metafunc.parametrize(
            "cell",
            [pytest.param(c, id=c.id, marks=[pytest.mark.hardest] if c.id == hardest else []) for c in prereg.cells],
        )


def _item_info(config: pytest.Config, item: pytest.Item) -> Any:
    from pytest_ladder.ordering import ItemInfo

    module = item.nodeid.split("::")[0]
    marker = _ladder_marker(item)
    if marker is None:
        return ItemInfo(module, None, None, None, None, False)
    bound: Rung = marker.kwargs["rung"]
    prereg = bound_prereg(config, bound)
    cell = _cell_of(item)
    cell_index = None if cell is None else [c.id for c in prereg.cells].index(cell.id)
    hardest = cell is not None and cell.id == prereg.hardest_cell.id
    return ItemInfo(module, bound.name, marker.kwargs["kind"], marker.kwargs["name"], cell_index, hardest,
                    tuple(prereg.requires))


def _cell_of(item: pytest.Item) -> Any:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("cell")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kill-fast order, before -m/-k deselection so every worker sorts the same full list."""
    from pytest_ladder.ordering import reorder

    reorder(items, [_item_info(config, item) for item in items])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plan each rung from the final selection: which items run, and whether they cover the whole rung."""
    from pytest_ladder.verdict import Plan, PlannedItem

    config = session.config
    state = _state(config)
    by_rung: dict[str, list[pytest.Item]] = {}
    bound: dict[str, Rung] = {}
    for item in session.items:
        marker = _ladder_marker(item)
        if marker is not None:
            by_rung.setdefault(marker.kwargs["rung"].name, []).append(item)
            bound[marker.kwargs["rung"].name] = marker.kwargs["rung"]
    for name, items in by_rung.items():
        prereg = bound_prereg(config, bound[name])
        planned = []
        covered: dict[tuple[str, str], set] = {}
        for item in items:
            marker = _ladder_marker(item)
            cell = _cell_of(item)
            key = (marker.kwargs["kind"], marker.kwargs["name"])
            covered.setdefault(key, set()).add(None if cell is None else cell.id)
            planned.append(PlannedItem(item.nodeid, key[0], key[1], None if cell is None else cell.id))
        all_cells = {c.id for c in prereg.cells}

        def covers(kind: str, names: set[str]) -> bool:
            return all(
                (kind, n) in covered and (covered[(kind, n)] == {None} or covered[(kind, n)] >= all_cells)
                for n in names
            )

        declared = bound[name]
        complete = covers("gate", declared.gates) and covers("trap", declared.traps) and covers(
            "prefilter", declared.prefilters
        )
        only_prefilters = bool(declared.prefilters) and covers("prefilter", declared.prefilters) and all(
            kind == "prefilter" for kind, _ in covered
        )
        state.plans[name] = Plan(name, prereg.display_path, planned, complete, only_prefilters,
                                 tuple(prereg.requires))
    if _is_worker(config):
        config.workeroutput["ladder_plans"] = {name: asdict(plan) for name, plan in state.plans.items()}


# ------------------------------------------------------------------------------------------------ fixtures -----


def _bound(request: pytest.FixtureRequest, fixture: str) -> tuple[Rung, str, str, Any]:
    marker = _ladder_marker(request.node)
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid}: the {fixture!r} fixture is for ladder tests; decorate the test with "
            "ladder.gate(...), ladder.prefilter(...) or ladder.trap(...) from `ladder = rung('<name>')`"
        )
    return marker.kwargs["rung"], marker.kwargs["kind"], marker.kwargs["name"], bound_prereg(request.config,
                                                                                           marker.kwargs["rung"])


@pytest.fixture
def prereg(request: pytest.FixtureRequest) -> Any:
    """The sealed, validated prereg (pytest_ladder.prereg.Prereg) of the requesting rung."""
    return _bound(request, "prereg")[3]


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> GateCheck:
    """`gate.check(value, tau=...)` records this gate's value for the cell and applies the prereg's locked rule."""
    bound, kind, name, loaded = _bound(request, "gate")
    if kind not in ("gate", "prefilter"):
        raise pytest.UsageError(f"{request.node.nodeid}: a {kind} test takes the 'trap' fixture, not 'gate'")
    return GateCheck(request.node, loaded, kind, name, _cell_of(request.node))


@pytest.fixture
def trap(request: pytest.FixtureRequest) -> TrapCheck:
    """`trap.check(observed, **refs)` records this trap and compares it with its declared expectation."""
    bound, kind, name, loaded = _bound(request, "trap")
    if kind != "trap":
        raise pytest.UsageError(f"{request.node.nodeid}: a {kind} test takes the 'gate' fixture, not 'trap'")
    return TrapCheck(request.node, loaded, name, _cell_of(request.node))


def rung_seeds(prereg: Any) -> list[int]:
    from pytest_ladder.seal import derive_seeds

    if prereg.seeds is not None:
        return list(prereg.seeds)
    return derive_seeds(prereg.seal or "", prereg.n_seeds)


@pytest.fixture
def ladder_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The rung's random-baseline seeds: the prereg's explicit list, or B seeds derived from its seal."""
    return rung_seeds(_bound(request, "ladder_seeds")[3])


# ------------------------------------------------------------------------------------------------ launch -------


def effective_model(config: pytest.Config, prereg: Any) -> str:
    """The model a rung runs on: --ladder-model when given, else the prereg's `model` (one decision per both)."""
    return _option(config, "ladder_model") or prereg.model


def session_model(config: pytest.Config, default: str) -> str:
    """The model this process's rungs run on: --ladder-model, else the one model their preregs name.

    A session fixture loads one model; rungs naming different models need separate runs (or --ladder-model).
    """
    chosen = _option(config, "ladder_model")
    if chosen:
        return chosen
    named = {prereg.model: prereg.display_path for prereg in _state(config).preregs.values()}
    if len(named) > 1:
        raise pytest.UsageError(
            "the selected rungs name different models in their preregs ("
            + ", ".join(f"{path}: {model!r}" for model, path in sorted(named.items()))
            + "); run them separately or choose one with --ladder-model"
        )
    return next(iter(named), default)


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return None


def kill_fast(config: pytest.Config) -> bool:
    """--ladder-kill-fast, else the ini's ladder_kill_fast."""
    chosen = config.getoption("ladder_kill_fast")
    return bool(config.getini("ladder_kill_fast") if chosen is None else chosen)


def _guard(config: pytest.Config, bound: Rung) -> Guard:
    """Seal, one-shot and ladder-rule checks of a rung, once per process."""
    from pytest_ladder.archive import find_decision, latest_decision
    from pytest_ladder.seal import verify_seal

    state = _state(config)
    if bound.name in state.guards:
        return state.guards[bound.name]
    guard = Guard()
    loaded = bound_prereg(config, bound)
    status = verify_seal(loaded.path, display=loaded.display_path)
    model = effective_model(config, loaded)
    archive = archive_dir(config)
    if not status.ok:
        guard.refused = status.message
    else:
        decided = find_decision(archive, bound.name, status.expected, model)
        if decided is not None:
            if config.getoption("ladder_replicate"):
                guard.replication_of = decided.record["run_id"]
            else:
                guard.refused = (
                    f"{loaded.display_path} (seal {status.expected[:12]}…) is already decided on model {model!r}: "
                    f"{decided.record['verdict']} in {_display(config, decided.path)}. A sealed prereg gets one "
                    "decision; run with --ladder-replicate to archive a replication next to it, or write and seal "
                    "a new prereg for a new claim."
                )
    if guard.refused is None:
        for required in loaded.requires:
            if required in state.killed_in_session:
                guard.requires[required] = {"verdict": "KILL", "where": "this session"}
            else:
                found = latest_decision(archive, required, model)
                guard.requires[required] = (
                    {"verdict": None, "where": "not decided yet"}
                    if found is None
                    else {"verdict": found.record["verdict"], "where": _display(config, found.path),
                          "run_id": found.record["run_id"]}
                )
            if guard.requires[required]["verdict"] == "KILL" and guard.requires_killed is None:
                guard.requires_killed = {required: guard.requires[required]}
    state.guards[bound.name] = guard
    return guard


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = _ladder_marker(item)
    if marker is None:
        return
    bound: Rung = marker.kwargs["rung"]
    cell = _cell_of(item)
    item.user_properties.append(
        (ITEM_KEY, {"rung": bound.name, "kind": marker.kwargs["kind"], "name": marker.kwargs["name"],
                    "cell": None if cell is None else cell.id})
    )
    state = _state(item.config)
    if bound.name not in state.plans_sent and bound.name in state.plans:
        state.plans_sent.add(bound.name)
        item.user_properties.append((PLAN_KEY, asdict(state.plans[bound.name])))
    guard = _guard(item.config, bound)
    if guard.refused:
        item.user_properties.append((REFUSED_KEY, guard.refused))
        pytest.fail(f"refused: {guard.refused}", pytrace=False)
    item.user_properties.append(
        ("ladder_guard", {"requires": guard.requires, "replication_of": guard.replication_of})
    )
    if kill_fast(item.config) and bound.name in state.killed_in_session:
        pytest.skip(f"kill-fast: {bound.name} is already KILLED in this session; its remaining tests do not run")
    if guard.requires_killed:
        required, where = next(iter(guard.requires_killed.items()))
        item.user_properties.append((REQUIRES_KEY, guard.requires_killed))
        pytest.fail(
            f"KILL {bound.name} by the ladder rule: it requires {required}, which was KILLED ({where['where']}). "
            "No forward pass spent.",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    marker = _ladder_marker(item)
    if marker is None or report.when != "call":
        return report
    kind, name = marker.kwargs["kind"], marker.kwargs["name"]
    recorded = any(key == RECORD_KEY for key, _ in item.user_properties)
    if report.passed and not recorded:
        report.outcome = "failed"
        check = "trap.check(observed)" if kind == "trap" else "gate.check(value)"
        report.longrepr = (
            f"{item.nodeid}: the {kind} {name!r} finished without calling {check}; a ladder test must record "
            "its measurement so the verdict can use it"
        )
    context = run_context(item.config)
    if context:
        report.user_properties.append((CONTEXT_KEY, context))
    return report


# ------------------------------------------------------------------------------------------------ session ------


class LadderSession:
    """The stateful half of the plugin, one per pytest session (registered in pytest_configure).

    On the controller (or without xdist) it gathers every ladder report and archives each rung the moment its
    verdict is known: when its last planned item has reported, or with kill-fast when a gate killed it. What is still
    in flight at session end is archived then (ABORTED if the session was interrupted). SIGTERM and SIGHUP end the
    session like Ctrl-C. xdist workers only compute plans and send reports.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state = _state(config)
        self._previous_handlers: dict[int, Any] = {}

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.state.started = time.time()
        if not _is_worker(self.config) and threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)
                if number is not None:
                    self._previous_handlers[number] = signal.signal(number, self._stop)

    def _stop(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        self.state.aborted = self.state.aborted or f"interrupted by {name}"
        raise KeyboardInterrupt(name)

    def _restore_signals(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_ladder.verdict import Outcome, Plan

        state = self.state
        props = dict(report.user_properties)
        if ITEM_KEY not in props:
            return
        rung = props[ITEM_KEY]["rung"]
        out = state.outcomes.setdefault(report.nodeid, Outcome())
        out.duration_s += float(report.duration or 0.0)
        if PLAN_KEY in props and rung not in state.plans:
            state.plans[rung] = Plan.from_dict(props[PLAN_KEY])
        if REFUSED_KEY in props:
            state.refused[rung] = props[REFUSED_KEY]
        if REQUIRES_KEY in props:
            state.requires_killed[rung] = props[REQUIRES_KEY]
        if "ladder_guard" in props:
            state.guard_info[rung] = props["ladder_guard"]
        if CONTEXT_KEY in props:
            state.context.update(props[CONTEXT_KEY])
        message = _message(report)
        if report.when == "setup":
            if report.failed:
                out.outcome, out.message = "error", message
            elif report.skipped:
                out.outcome, out.message = "skipped", message
        elif report.when == "call":
            out.records = [value for key, value in report.user_properties if key == RECORD_KEY]
            out.outcome = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
            out.message = message
            if any(r.get("passed") is False for r in out.records):
                state.killed_in_session.add(rung)
        elif report.when == "teardown":
            if report.failed and out.outcome == "passed":
                out.outcome, out.message = "error", message
            state.done.add(report.nodeid)
        if not _is_worker(self.config):
            self._archive_settled(rung)

    def _archive_settled(self, rung: str) -> None:
        """Archive `rung` now if its verdict is known and the rungs it requires in this session are archived; then
        the rungs that were waiting on it."""
        from pytest_ladder.verdict import settled

        state = self.state
        plan = state.plans.get(rung)
        if plan is None or rung in state.decided or rung in state.refused:
            return
        if any(item.nodeid in state.crashed for item in plan.items):
            return  # ABORTED at session end
        if any(r in state.plans and r not in state.decided and r not in state.refused for r in plan.requires):
            return
        if not settled(plan, state.outcomes, state.done, kill_fast=kill_fast(self.config)):
            return
        self._archive(rung, plan)
        for other, waiting in list(state.plans.items()):
            if rung in waiting.requires:
                self._archive_settled(other)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: take the workers' plans; a worker that went down with an error aborts the run."""
        from pytest_ladder.verdict import Plan

        output = getattr(node, "workeroutput", None) or {}
        if error is not None:
            self.state.aborted = f"an xdist worker went down: {error}"
        if output.get("exitstatus") == int(pytest.ExitCode.INTERRUPTED):
            self.state.aborted = self.state.aborted or "an xdist worker was interrupted"
        for name, plan in (output.get("ladder_plans") or {}).items():
            if name not in self.state.plans:
                self.state.plans[name] = Plan.from_dict(plan)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        self.state.aborted = f"an xdist worker crashed while running {crashitem}"
        self.state.crashed.add(crashitem)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._restore_signals()
        if _is_worker(self.config):
            return
        from pytest_ladder.ordering import rung_order

        state = self.state
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            state.aborted = state.aborted or "interrupted (KeyboardInterrupt)"
        in_flight = {name: plan.requires for name, plan in state.plans.items()
                     if name not in state.decided and name not in state.refused
                     and any(item.nodeid in state.outcomes for item in plan.items)}
        for name in rung_order(in_flight):
            self._archive(name, state.plans[name], aborted=state.aborted)

    def _archive(self, name: str, plan: Any, aborted: str | None = None) -> None:
        from pytest_ladder.archive import new_run_id, write_run
        from pytest_ladder.postmortem import render_plots, render_postmortem
        from pytest_ladder.verdict import Outcome, build_record, decide, first_kill

        config, state = self.config, self.state
        fast = kill_fast(config)
        loaded = state.preregs.get(name) or _load_for_controller(config, plan)
        guard_info = state.guard_info.get(name, {})
        requires_killed = state.requires_killed.get(name) or next(
            ({r: {"verdict": "KILL", "where": "this session"}} for r in plan.requires if state.decided.get(r) == "KILL"),
            None,
        )
        verdict = decide(plan, state.outcomes, aborted=aborted is not None, requires_killed=requires_killed,
                         kill_fast=fast)
        outcomes = dict(state.outcomes)
        kill = first_kill(plan, outcomes) if fast and aborted is None else None
        if kill is not None:  # kill-fast skips what has not run yet
            for item in plan.items[kill + 1:]:
                if item.nodeid not in state.done:
                    outcomes[item.nodeid] = Outcome(
                        "skipped", message=f"kill-fast: {name} is already KILLED in this session; its remaining "
                                           "tests do not run")
        ran = sum(1 for item in plan.items if item.nodeid in state.outcomes)
        run_id = new_run_id()
        model = dict(state.context.get("model") or {})
        loaded_name = model.get("name")
        model["name"] = effective_model(config, loaded)
        if loaded_name and loaded_name != model["name"]:
            model["loaded_as"] = loaded_name
        ended = time.time()
        record = build_record(
            plan=plan,
            outcomes=outcomes,
            verdict=verdict,
            run_id=run_id,
            prereg_content=loaded.raw,
            seal=loaded.seal,
            model=model,
            data=state.context.get("data") or {},
            seeds=rung_seeds(loaded),
            software=_software(),
            selection={
                "args": [str(a) for a in config.args],
                "markexpr": config.option.markexpr,
                "keyword": config.option.keyword,
                "exitfirst": config.option.maxfail == 1,
                "maxfail": config.option.maxfail,
                "xdist_workers": _option(config, "numprocesses"),
                "selected": len(plan.items),
                "ran": ran,
                "complete": plan.complete,
                "aborted": aborted,
            },
            timings={"start": _iso(state.started), "end": _iso(ended), "duration_s": round(ended - state.started, 3)},
            requires=guard_info.get("requires", {}),
            replication_of=guard_info.get("replication_of"),
            context={k: v for k, v in state.context.items() if k not in ("model", "data")},
        )
        plots = render_plots(record)
        files: dict[str, Any] = {"decision.json" if verdict.is_decision else "run.json": record}
        if record["traps"]:
            files["trap_results.json"] = {"rung": name, "run_id": run_id, "verdict": verdict.verdict,
                                          "traps": record["traps"]}
        files["postmortem.md"] = render_postmortem(record, sorted(plots))
        files.update(plots)
        state.decided[name] = verdict.verdict
        state.written.append((name, record, write_run(archive_dir(config), name, run_id, files)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.state
        if not state.written and not state.refused:
            return
        from tabulate import tabulate

        tr = terminalreporter
        tr.section("ladder verdicts")
        for name, message in sorted(state.refused.items()):
            tr.write_line(f"{name}: refused, nothing archived: {message}", red=True)
        for name, record, path in state.written:
            tr.write_line(_verdict_line(record), red=record["verdict"] in ("KILL", "INVALID"),
                          green=record["verdict"] == "PASS", bold=True)
            rows = [
                [g["kind"], g["name"], g["cell"] or "", _fmt(g["value"]), f"{g['op'] or ''} {_fmt(g['threshold'])}",
                 _fmt((g["tau"] or {}).get("tau")), g["outcome"]]
                for g in record["gates"]
            ] + [
                ["trap", t["name"], t["cell"] or "", _fmt(t["observed"]), t["expected"] or "", "",
                 {True: "fired as declared", False: "FIRED WRONG", None: t["outcome"]}[t["fired_as_declared"]]]
                for t in record["traps"]
            ]
            if rows:
                tr.write_line(tabulate(rows, headers=["kind", "name", "cell", "value", "threshold", "tau", "outcome"]))
            tr.write_line(f"archived: {_display(self.config, path)}")


def _message(report: pytest.TestReport) -> str | None:
    """What went wrong, first line first: for an exception its type and message (the report's crash line, e.g.
    "RuntimeError: Expected all tensors to be on the same device ..."), then the full text, without the
    "[gw1] linux -- Python ..." header xdist puts on workers' reports."""
    lines = (report.longreprtext or "").splitlines()
    if lines and re.match(r"\[gw\d+\] ", lines[0]):
        lines = lines[1:]
    text = "\n".join(lines).strip() or None
    crash = getattr(report.longrepr, "reprcrash", None)
    reason = (getattr(crash, "message", None) or "").strip()
    if not reason:
        return text
    return reason if not text or text == reason else f"{reason}\n\n{text}"


def _verdict_line(record: dict) -> str:
    line = f"{record['rung']}: {record['verdict']}"
    killed, invalid = record["killed_by"], record["invalid_because"]
    if killed and killed["kind"] == "requires":
        line += f" by the ladder rule ({killed['message']})"
    elif killed:
        cell = f" @ {killed['cell']}" if killed["cell"] else ""
        line += f" at {killed['kind']} {killed['name']}{cell}: {_fmt(killed['value'])} vs {killed['op']} " \
                f"{_fmt(killed['threshold'])}"
        if killed.get("tau"):
            line += f" (tau {_fmt(killed['tau']['tau'])}, rule {killed['tau']['rule']})"
    elif invalid:
        line += f" ({invalid['kind']} {invalid['name']}: {(invalid['message'] or '').splitlines()[0][:200]})"
    if record["kind"] == "replication":
        line += f", replication of {record['replication_of']}"
    return line


def _software() -> dict:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def _load_for_controller(config: pytest.Config, plan: Any) -> Any:
    """Under xdist the controller did not collect: load the prereg the workers bound (same path)."""
    from pytest_ladder.prereg import load_prereg

    path = Path(plan.prereg_path)
    if not path.is_absolute():
        path = Path(config.rootpath) / path
    loaded = load_prereg(path, root=config.rootpath)
    _state(config).preregs[plan.rung] = loaded
    return loaded


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------------------------------------ replay -------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    """`pytest archive/`: archived runs collect as items that mirror their verdict (pytest_ladder.replay)."""
    if file_path.name == "decision.json":
        from pytest_ladder.replay import collect_decision_file

        return collect_decision_file(file_path, parent)
    if file_path.name == "run.json":
        from pytest_ladder.replay import collect_run_file

        return collect_run_file(file_path, parent)
    return None
