"""The controller session: gathers every ladder report, decides each rung the moment its verdict is known and
archives it (only the controller writes; under xdist it sees the workers' reports through pytest_runtest_logreport),
then prints the verdicts. Registered by plugin.pytest_configure, the way pytest-xdist hands its controller to
dsession.py.

A rung is archived when its last planned item has reported, or with kill-fast when a gate killed it and every item
before the kill has reported; a rung waits for the rungs it requires in this session. What is still in flight at
session end is archived then, ABORTED if the session was interrupted. SIGTERM and SIGHUP end the session like
Ctrl-C.
"""

from __future__ import annotations

import importlib.metadata
import platform
import queue
import re
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.files import display_path
from pytest_ladder.options import ladder_options
from pytest_ladder.records import fmt, killed_by_sentence, where
from pytest_ladder.rung import CONTEXT_KEY, ITEM_KEY, rung_context
from pytest_ladder.state import (GUARD_KEY, PLAN_KEY, REFUSED_KEY, REQUIRES_KEY, UNPREPARED_KEY, is_worker,
                                 ladder_state)

STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # end the session like Ctrl-C: the rung in flight is ABORTED
SOFTWARE = ("pytest", "pytest-ladder", "pytest-xdist", "torch", "transformers", "accelerate", "numpy", "tokenizers")


class LadderSession:
    """The stateful half of the plugin, one per pytest session (registered in pytest_configure).

    On the controller (or without xdist) it gathers every ladder report and archives each rung the moment its
    verdict is known: when its last planned item has reported, or with kill-fast when a gate killed it. What is still
    in flight at session end is archived then (ABORTED if the session was interrupted). SIGTERM and SIGHUP end the
    session like Ctrl-C. xdist workers only compute plans and send reports.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state = ladder_state(config)
        self.options = ladder_options(config)
        self._previous_handlers: dict[int, Any] = {}
        self._archiving = False  # a stop signal waits until the rung being archived is written and listed
        self._deferred: str | None = None
        self._rung_started: dict[str, float] = {}  # rung -> when its first report began

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.state.started = time.time()
        if not is_worker(self.config) and threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)
                if number is not None:
                    self._previous_handlers[number] = signal.signal(number, self._stop)

    def _stop(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        self.state.aborted = self.state.aborted or f"interrupted by {name}"
        if self._archiving:
            self._deferred = name
            return
        raise KeyboardInterrupt(name)

    def _restore_signals(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    @pytest.hookimpl(tryfirst=True)  # before junitxml reads the report, so it sees the rung's ladder_verdict
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_ladder.properties import live_properties, measurements
        from pytest_ladder.verdict import Outcome, Plan

        state = self.state
        props = live_properties(report)
        if ITEM_KEY not in props:
            return
        rung = props[ITEM_KEY]["rung"]
        self._rung_started.setdefault(rung, float(getattr(report, "start", 0.0) or time.time()))
        out = state.outcomes.setdefault(report.nodeid, Outcome())
        out.duration_s += float(report.duration or 0.0)
        if PLAN_KEY in props and rung not in state.plans:
            state.plans[rung] = Plan.from_dict(props[PLAN_KEY])
        if REFUSED_KEY in props:
            state.refused[rung] = props[REFUSED_KEY]
        if UNPREPARED_KEY in props:
            state.unprepared = True
        if REQUIRES_KEY in props:
            state.requires_killed[rung] = props[REQUIRES_KEY]
        if GUARD_KEY in props:
            state.guard_info[rung] = props[GUARD_KEY]
        if CONTEXT_KEY in props:
            state.context.update(props[CONTEXT_KEY])
        message = _message(report)
        if report.when == "setup":
            if report.failed:
                out.outcome, out.message = "error", message
            elif report.skipped:
                out.outcome, out.message = "skipped", message
        elif report.when == "call":
            out.records = measurements(report)
            out.outcome = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
            out.message = message
            if any(r.get("passed") is False for r in out.records):
                state.killed_in_session.add(rung)
        elif report.when == "teardown":
            if report.failed and out.outcome == "passed":
                out.outcome, out.message = "error", message
            state.done.add(report.nodeid)
        if not is_worker(self.config):
            self._archive_settled(rung)
            self._attach_verdict(rung, report)

    def _attach_verdict(self, rung: str, report: pytest.TestReport) -> None:
        """Once the rung is archived, its reports carry its `ladder_verdict` property (JUnit XML included)."""
        from pytest_ladder.properties import attach_verdict

        record = next((record for name, record, _ in reversed(self.state.written) if name == rung), None)
        if record is not None:
            attach_verdict(report, record)

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
        if not settled(plan, state.outcomes, state.done, kill_fast=self.options.kill_fast):
            return
        self._archiving = True
        try:
            self._archive(rung, plan)
        finally:
            self._archiving = False
        if self._deferred is not None:
            raise KeyboardInterrupt(self._deferred)
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

    @pytest.hookimpl(tryfirst=True)  # before junitxml writes its file: every item gets its rung's ladder_verdict
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._restore_signals()
        if is_worker(self.config):
            return
        from pytest_ladder.ordering import rung_order

        state = self.state
        if state.unprepared:  # an xdist worker could not prepare the session: a usage error, as in one process
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            state.aborted = state.aborted or "interrupted (KeyboardInterrupt)"
            self._deferred = None  # the deferred signal has ended the session already
            self._take_pending_worker_reports()
        in_flight = {name: plan.requires for name, plan in state.plans.items()
                     if name not in state.decided and name not in state.refused
                     and any(item.nodeid in state.outcomes for item in plan.items)}
        for name in rung_order(in_flight):
            self._archive(name, state.plans[name], aborted=state.aborted)
        from pytest_ladder.properties import add_verdicts_to_junit

        records = {name: record for name, record, _ in state.written}
        add_verdicts_to_junit(self.config, records,
                              {name: [item.nodeid for item in state.plans[name].items] for name in records
                               if name in state.plans})

    def _take_pending_worker_reports(self, settle_s: float = 0.25, limit_s: float = 2.0) -> None:
        """xdist controller, interrupted: reports the workers sent before the signal may still wait in xdist's event
        queue (the signal can land while the controller archives a rung, before it has read a worker's next
        reports). The ladder reads them now, so a rung that had begun on a worker is archived ABORTED, not lost.
        Only the ladder sees them: the session is over for every other plugin. Workers still running keep sending,
        so this reads for at most `limit_s`."""
        events = getattr(self.config.pluginmanager.getplugin("dsession"), "queue", None)
        if events is None:
            return
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                name, kwargs = events.get(timeout=settle_s)
            except queue.Empty:
                return
            if name == "testreport" and kwargs.get("rep") is not None:
                self.pytest_runtest_logreport(kwargs["rep"])

    def _archive(self, name: str, plan: Any, aborted: str | None = None) -> None:
        from pytest_ladder.archive import DECISION_FILE, RUN_FILE, new_run_id, write_run
        from pytest_ladder.binding import rung_seeds
        from pytest_ladder.model_choice import rung_model
        from pytest_ladder.postmortem import olmoe_decisions, render_plots, render_postmortem
        from pytest_ladder.verdict import Outcome, agreement, build_record, decide, first_kill

        config, state = self.config, self.state
        fast = self.options.kill_fast
        loaded = state.preregs.get(name) or _load_for_controller(config, plan)
        guard_info = state.guard_info.get(name, {})
        requires_killed = state.requires_killed.get(name) or next(
            ({r: {"verdict": "KILL", "where": "this session"}} for r in plan.requires if state.decided.get(r) == "KILL"),
            None,
        )
        verdict = decide(plan, state.outcomes, aborted=aborted is not None, requires_killed=requires_killed,
                         kill_fast=fast, may_decide=guard_info.get("may_decide", True))
        outcomes = dict(state.outcomes)
        kill = first_kill(plan, outcomes) if fast and aborted is None else None
        if kill is not None:  # kill-fast skips the cells that have not run yet (never the traps)
            for item in plan.items[kill + 1:]:
                if item.nodeid not in state.done and item.kind != "trap":
                    outcomes[item.nodeid] = Outcome(
                        "skipped", message=f"kill-fast: {name} is already KILLED in this session; its remaining "
                                           "cells do not run")
        ran = sum(1 for item in plan.items if outcomes.get(item.nodeid, Outcome()).outcome not in ("skipped",
                                                                                                     "not run"))
        skipped = {item.nodeid: outcomes[item.nodeid].message or "skipped" for item in plan.items
                   if outcomes.get(item.nodeid, Outcome()).outcome == "skipped"}
        run_id = new_run_id()
        model = state.context.get("model") or {"name": rung_model(self.options.model, loaded)}
        ended = time.time()
        started = min(self._rung_started.get(name, state.started), ended)
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
                "xdist_workers": self.options.xdist_workers,
                "kill_fast": fast,
                "selected": len(plan.items),
                "ran": ran,
                "skipped": len(skipped),
                "skip_reasons": sorted(set(skipped.values()), key=str),
                "complete": plan.complete,
                "aborted": aborted,
            },
            timings={"start": _iso(started), "end": _iso(ended), "duration_s": round(ended - started, 3)},
            requires=guard_info.get("requires", {}),
            replication_of=guard_info.get("replication_of"),
            context={k: v for k, v in rung_context(state.context, name).items() if k not in ("model", "data")},
            replicates=guard_info.get("replicates"),
        )
        plots = render_plots(record)

        def laid_out(record: dict) -> dict[str, Any]:
            files: dict[str, Any] = {DECISION_FILE if record["kind"] in ("decision", "replication") else RUN_FILE:
                                     record}
            if record["traps"]:
                files["trap_results.json"] = {"rung": name, "run_id": run_id, "verdict": record["verdict"],
                                              "traps": record["traps"]}
            files["postmortem.md"] = render_postmortem(record, sorted(plots),
                                                       olmoe_decisions(self.options.archive_dir, record))
            files.update(plots)
            return files

        def decided_first(existing: Any) -> dict[str, Any]:
            """Another session archived this prereg's decision on this model while this one ran: this run is a
            replication of it (with --ladder-replicate) or a refused run saying which decision won."""
            won = existing.record.get("run_id")
            if self.options.replicate:
                record.update(kind="replication", decision=False, replication_of=won,
                              agreement=agreement(record, existing.record))
            else:
                record.update(kind="refused", decision=False, refused_because=(
                    f"{won} decided this prereg on this model first (another session, archived while this one ran); "
                    "a sealed prereg gets one decision: run with --ladder-replicate to archive a replication"))
                state.refused_at_write[name] = record["refused_because"]
            return laid_out(record)

        files = laid_out(record)
        one_decision = (loaded.seal or "", record["model"].get("name")) if verdict.is_decision else None
        folder = write_run(self.options.archive_dir, name, run_id, files, one_decision=one_decision,
                           decided=decided_first)
        state.decided[name] = verdict.verdict
        state.written.append((name, record, folder))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        state = self.state
        if not state.written and not state.refused:
            return
        from tabulate import tabulate

        tr = terminalreporter
        tr.section("ladder verdicts")
        by_message: dict[str, list[str]] = {}
        for name, message in sorted(state.refused.items()):
            by_message.setdefault(message, []).append(name)
        for message, names in by_message.items():
            tr.write_line(f"{', '.join(names)}: refused, nothing archived: {message}", red=True)
        for name, record, path in state.written:
            tr.write_line(_verdict_line(record), red=record["verdict"] in ("KILL", "INVALID"),
                          green=record["verdict"] == "PASS", bold=True)
            rows = [
                [g["kind"], g["name"], g["cell"] or "", fmt(g["value"]), f"{g['op'] or ''} {fmt(g['threshold'])}",
                 fmt((g["tau"] or {}).get("tau")), g["outcome"]]
                for g in record["gates"]
            ] + [
                ["trap", t["name"], t["cell"] or "", fmt(t["observed"]), t["expected"] or "", "",
                 {True: "fired as declared", False: "FIRED WRONG", None: t["outcome"]}[t["fired_as_declared"]]]
                for t in record["traps"]
            ]
            if rows:
                tr.write_line(tabulate(rows, headers=["kind", "name", "cell", "value", "threshold", "tau", "outcome"]))
            tr.write_line(f"archived: {display_path(path, self.config.invocation_params.dir, self.config.rootpath)}")


def _message(report: pytest.TestReport) -> str | None:
    """What went wrong, first line first: for an exception its type and message (the report's crash line, e.g.
    "RuntimeError: Expected all tensors to be on the same device ..."), then the full text, without the
    "[gw1] linux -- Python ..." header xdist puts on workers' reports."""
    if report.skipped and isinstance(report.longrepr, (tuple, list)):  # (path, line, "Skipped: reason"): the reason
        return str(report.longrepr[2]).removeprefix("Skipped: ").strip() or None
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
        line += f" by the ladder rule ({killed_by_sentence(killed)})"
    elif killed:
        line += f" at {killed['kind']} {killed_by_sentence(killed)}"
        if killed.get("tau") and killed["tau"].get("beats") is not False:  # else the sentence already names τ
            line += f" (tau {fmt(killed['tau']['tau'])}, rule {killed['tau']['rule']})"
    elif invalid:
        line += f" ({invalid['kind']} {invalid['name']}: {(invalid['message'] or '').splitlines()[0][:200]})"
    if record["kind"] == "replication":
        line += f", replication of {record['replication_of']}"
        found = record.get("agreement")
        if found:
            line += (": agrees with it" if found["agrees"] else
                     f": DIFFERS from it ({found['verdict']}" + (
                         f" at {found['killed_by']['kind']} {where(found['killed_by']['name'], found['killed_by']['cell'])}"
                         if found.get("killed_by") else "") + ")")
    elif record["kind"] == "refused":
        line += f", not a decision: {record['refused_because']}"
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
    from pytest_ladder.prereg import PreregError, load_prereg

    path = Path(plan.prereg_path)
    if not path.is_absolute():
        path = Path(config.rootpath) / path
    try:
        loaded = load_prereg(path, root=config.rootpath)
    except PreregError as error:
        raise pytest.UsageError(str(error)) from None
    ladder_state(config).preregs[plan.rung] = loaded
    return loaded
