"""A rung is archived the moment its verdict is known; SIGTERM and SIGHUP end a session like Ctrl-C, keeping every
decided rung and recording the rung in flight as ABORTED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# rung b's hardest gate says it is running, then waits (far longer than the test) for a file nobody writes
BLOCK = ("import pathlib, time\n    pathlib.Path('b_running').touch()\n"
         "    for _ in range(1200):\n        time.sleep(0.1)")


def _spawn(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the session ended before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
# under xdist each rung module on its own worker (--dist loadfile): with plain load balancing rung a's last item may
# be queued behind rung b's blocking gate on the same worker, and a would rightly not be decided before the signal
@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadfile"]], ids=["one-process", "xdist"])
def test_a_stop_signal_keeps_decided_rungs_and_aborts_the_one_in_flight(toy, name, workers):
    toy.rung("a")
    toy.rung("b", hook=BLOCK)
    process = _spawn(toy.root, *workers)
    _wait_for(toy.root / "b_running", process)
    # rung a is archived when its last test reports (under xdist that may come just after rung b's gate began)
    deadline = time.monotonic() + 60
    while not toy.runs("a") and time.monotonic() < deadline:  # a run folder appears whole (renamed into place)
        time.sleep(0.05)
    (decided,) = toy.runs("a")
    assert (decided / "decision.json").is_file()
    process.send_signal(getattr(signal, name))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert toy.runs("a") == [decided]
    record = toy.record(decided)
    assert (record["verdict"], record["killed_by"]["cell"]) == ("KILL", "layer:3-true_rank:8")
    (aborted,) = toy.runs("b")
    assert not (aborted / "decision.json").exists()
    run = toy.record(aborted)
    assert (run["verdict"], run["kind"], run["decision"]) == ("ABORTED", "aborted", False)
    assert run["selection"]["aborted"] == f"interrupted by {name}"
    assert "b: ABORTED" in output and "a: KILL at gate relative_error" in output, output[-3000:]


# On the xdist controller (reports carry their worker as .node there), once rung a is archived the controller lingers
# on a's last report, so what rung b's worker sends meanwhile waits unread in xdist's event queue. On the worker,
# b_reported appears once a test of rung b has sent all its reports.
SLOW_CONTROLLER = """
import os, pathlib, time
import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if (getattr(report, "node", None) is not None and report.nodeid.startswith("test_a.py")
            and report.when == "teardown" and list(pathlib.Path("archive/a").glob("*/decision.json"))):
        for _ in range(1200):
            time.sleep(0.1)


def pytest_runtest_logfinish(nodeid):
    if os.environ.get("PYTEST_XDIST_WORKER") and nodeid.startswith("test_b.py"):
        pathlib.Path("b_reported").touch()
"""


def test_a_stop_signal_aborts_a_rung_whose_reports_the_controller_has_not_read_yet(toy):
    toy.rung("a")
    toy.rung("b", hook=BLOCK)
    (toy.root / "conftest.py").write_text(SLOW_CONTROLLER)
    process = _spawn(toy.root, "-n", "1")  # one worker: rung b begins only after rung a's last report was sent
    _wait_for(toy.root / "b_reported", process)
    deadline = time.monotonic() + 60  # the controller archives rung a, then lingers before reading b's reports
    while not toy.runs("a") and time.monotonic() < deadline:
        time.sleep(0.05)
    (decided,) = toy.runs("a")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert toy.record(decided)["verdict"] == "KILL"
    (aborted,) = toy.runs("b")
    run = toy.record(aborted)
    assert (run["verdict"], run["kind"], run["selection"]["aborted"]) == ("ABORTED", "aborted", "interrupted by SIGTERM")
    assert "b: ABORTED" in output, output[-3000:]


def test_a_rung_is_archived_before_the_next_rung_runs(toy):
    toy.rung("a")
    toy.rung("b", hook="import pathlib\n    assert len(list(pathlib.Path('archive/a').glob('*/decision.json'))) == 1")
    toy.pytester.runpytest().assert_outcomes(passed=10, failed=2)
    assert toy.record(toy.runs("b")[0])["verdict"] == "KILL"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_kill_fast_archives_exactly_one_decision_per_rung(toy, workers):
    toy.rung("a")
    toy.rung("b")
    result = toy.pytester.runpytest_subprocess("--ladder-kill-fast", *workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for name in ("a", "b"):
        (run,) = toy.runs(name)
        record = toy.record(run)
        assert (record["verdict"], record["killed_by"]["cell"]) == ("KILL", "layer:3-true_rank:8")
    assert sorted(line for line in result.outlines if line.startswith("archived: ")) == [
        f"archived: archive/{name}/{toy.runs(name)[0].name}" for name in ("a", "b")]
    assert not [line for line in result.outlines if "refused" in line]


# both sessions pass the launch guard (nothing decided yet), then meet here before either can decide
BARRIER = ("import os, pathlib, time\n    pathlib.Path(f'started-{os.getpid()}').touch()\n"
           "    for _ in range(1200):\n"
           "        if len(list(pathlib.Path('.').glob('started-*'))) >= 2: break\n"
           "        time.sleep(0.05)")


@pytest.mark.parametrize("replicate", [False, True], ids=["plain", "replicate"])
def test_two_sessions_started_together_archive_one_decision(toy, replicate):
    toy.rung(hook=BARRIER)
    extra = ["--ladder-replicate"] if replicate else []
    sessions = [_spawn(toy.root, *extra) for _ in range(2)]
    outputs = [session.communicate(timeout=300)[0] for session in sessions]
    records = [toy.record(run) for run in toy.runs()]
    assert len(records) == 2, outputs
    kinds = sorted(r["kind"] for r in records)
    decision = next(r for r in records if r["kind"] == "decision")
    other = next(r for r in records if r["kind"] != "decision")
    assert kinds == (["decision", "replication"] if replicate else ["decision", "refused"])
    assert other["decision"] is False and other["verdict"] == decision["verdict"] == "KILL"
    if replicate:
        assert other["replication_of"] == decision["run_id"]
        assert (toy.root / "archive" / "toy" / other["run_id"] / "decision.json").is_file()
    else:
        assert other["refused_because"].startswith(f"{decision['run_id']} decided this prereg on this model first")
        assert (toy.root / "archive" / "toy" / other["run_id"] / "run.json").is_file()
        assert any("not a decision: " in output for output in outputs)
