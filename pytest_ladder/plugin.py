"""The pytest plugin (entry point `pytest11: ladder`): option registration and the hooks, nothing else.

Import-light on purpose: only the standard library and pytest at module level (prereg parsing, the archive and the
postmortem load inside the hooks that need them; torch and transformers only inside the model fixtures), so
`pytest --help`, `-m analytical` and `pytest archive/` stay fast.

Flow: collection binds each rung module to its prereg (binding.py; bad content: a UsageError naming the file and
field), parametrizes cells, sorts items kill-fast (ordering.py), plans each rung (verdict.build_plan) and prepares
the session (prepare.py: packages, device, corpora, the model built or found and loaded, all before any rung runs;
a failure is a usage error and nothing is archived). Setup runs the launch guard (guard.py): it refuses a rung whose
seal is broken or whose decision already exists (saying why at the rung's first test, skipping the others), and
fails a rung whose required rung was KILLED. Gate and trap tests record their values on the report; the controller session
(controller.py, never an xdist worker) decides each rung (verdict.py) and writes the archive (archive.py).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder import binding
from pytest_ladder.binding import bound_prereg, cell_of, check_trap_references, ladder_marker
from pytest_ladder.options import add_options, configure_options, ladder_options
from pytest_ladder.rung import CONTEXT_KEY, ITEM_KEY, RECORD_KEY, Rung, run_context
from pytest_ladder.state import (GUARD_KEY, PLAN_KEY, REFUSED_KEY, REQUIRES_KEY, UNPREPARED_KEY, init_state, is_worker,
                                 ladder_state)

# binding.py is imported above (its helpers serve these hooks), so its fixtures are registered in pytest_configure:
# listed here, pytest would warn that an imported module cannot be assertion-rewritten
# properties.py turns the reports' ladder properties into JSON text
pytest_plugins = ["pytest_ladder.fixtures", "pytest_ladder.rung_fixtures", "pytest_ladder.properties"]

MARKERS = {
    "analytical": "cheap analytical prefilter of a rung: no forward pass, no GPU (select in CI with -m analytical)",
    "gate": "a ladder gate: a locked pass/fail metric of a rung (conjunctive: one failure kills the claim)",
    "trap": "a ladder trap: a control with a declared outcome (firing wrong makes the run INVALID)",
    "hardest": "a gate on the rung's hardest cell (runs first among gates; with -x a failure ends the run)",
    "gpu": "needs a CUDA device",
    "ladder(rung, kind, name)": "internal: binds a test to its rung, set by ladder.gate/trap/prefilter",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_ladder.controller import LadderSession

    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")
    configure_options(config)
    init_state(config)
    if not config.pluginmanager.is_registered(binding):
        config.pluginmanager.register(binding, "pytest_ladder.binding")
    config.pluginmanager.register(LadderSession(config), "ladder-session")
    _attach_progress(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_ladder import progress

    progress.detach(config.stash.get(_progress_key, (None, None)))


_progress_key = pytest.StashKey[tuple]()


def _attach_progress(config: pytest.Config) -> None:
    """Long computations show their bars and lines on the real terminal: each write lifts pytest's capture (the
    capture manager's public `global_and_fixture_disabled`) and starts on a fresh line (pytest_ladder.progress)."""
    from pytest_ladder import progress

    capture = config.pluginmanager.getplugin("capturemanager")

    def newline() -> None:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()

    if capture is not None:
        config.stash[_progress_key] = progress.attach(capture.global_and_fixture_disabled, newline)


# ------------------------------------------------------------------------------------------------ collection ---


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = ladder_marker(metafunc.definition)
    if marker is None:
        return
    bound = marker.kwargs["rung"]
    try:
        prereg = bound_prereg(metafunc.config, bound)
        if marker.kwargs["kind"] == "trap":
            check_trap_references(prereg, marker.kwargs["name"], metafunc.function, metafunc.definition.nodeid)
    except pytest.UsageError as error:  # raised here it would be one collection error with pytest's traceback:
        ladder_state(metafunc.config).binding_errors.setdefault(bound.name, str(error))  # refused once collected
        return
    if "cell" in metafunc.fixturenames:
        hardest = prereg.hardest_cell.id
        metafunc.parametrize(
            "cell",
            [pytest.param(c, id=c.id, marks=[pytest.mark.hardest] if c.id == hardest else []) for c in prereg.cells],
        )


def _item_info(config: pytest.Config, item: pytest.Item) -> Any:
    from pytest_ladder.ordering import ItemInfo

    module = item.nodeid.split("::")[0]
    marker = ladder_marker(item)
    if marker is None:
        return ItemInfo(module, None, None, None, None, False)
    bound: Rung = marker.kwargs["rung"]
    if bound.module is not None:  # a prereg bound to another rung's module orders as a module of its own
        module = f"{module}::{bound.name}"
    prereg = bound_prereg(config, bound)
    cell = cell_of(item)
    cell_index = None if cell is None else [c.id for c in prereg.cells].index(cell.id)
    hardest = cell is not None and cell.id == prereg.hardest_cell.id
    return ItemInfo(module, bound.name, marker.kwargs["kind"], marker.kwargs["name"], cell_index, hardest,
                    tuple(prereg.requires))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kill-fast order, before -m/-k deselection so every worker sorts the same full list. A prereg that could not
    bind (bad content, a bad rung name, a broken ladder graph) ends the session here as one usage error."""
    from pytest_ladder.ordering import reorder

    errors = ladder_state(config).binding_errors
    if errors:
        raise pytest.UsageError("\n".join(errors[name] for name in sorted(errors)))

    reorder(items, [_item_info(config, item) for item in items])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plan each rung from the final selection (which items run, and whether they cover the whole rung), then
    prepare what the selection needs before any rung runs (prepare.py)."""
    from pytest_ladder.prepare import prepare_session
    from pytest_ladder.verdict import PlannedItem, build_plan

    config = session.config
    state = ladder_state(config)
    selected: dict[str, list[PlannedItem]] = {}
    bound: dict[str, Rung] = {}
    for item in session.items:
        marker = ladder_marker(item)
        if marker is not None:
            rung, cell = marker.kwargs["rung"], cell_of(item)
            bound[rung.name] = rung
            selected.setdefault(rung.name, []).append(PlannedItem(
                item.nodeid, marker.kwargs["kind"], marker.kwargs["name"], None if cell is None else cell.id))
    for name, items in selected.items():
        prereg = bound_prereg(config, bound[name])
        declared = bound[name]
        state.plans[name] = build_plan(name, prereg.display_path, items, gates=declared.gates, traps=declared.traps,
                                       prefilters=declared.prefilters, cells={c.id for c in prereg.cells},
                                       requires=tuple(prereg.requires))
    if is_worker(config):
        config.workeroutput["ladder_plans"] = {name: asdict(plan) for name, plan in state.plans.items()}
    prepare_session(config, session.items)


# --------------------------------------------------------------------------------------------------- running ---


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    from pytest_ladder.guard import rung_guard
    from pytest_ladder.prepare import unprepared

    marker = ladder_marker(item)
    if marker is None:
        return
    bound: Rung = marker.kwargs["rung"]
    cell = cell_of(item)
    item.user_properties.append(
        (ITEM_KEY, {"rung": bound.name, "kind": marker.kwargs["kind"], "name": marker.kwargs["name"],
                    "cell": None if cell is None else cell.id})
    )
    state = ladder_state(item.config)
    if bound.name not in state.plans_sent and bound.name in state.plans:
        state.plans_sent.add(bound.name)
        item.user_properties.append((PLAN_KEY, asdict(state.plans[bound.name])))
    not_ready = unprepared(item.config)
    guard = rung_guard(item.config, bound)
    refused = not_ready or guard.refused
    if refused:
        item.user_properties.append((REFUSED_KEY, refused))
        if not_ready:
            item.user_properties.append((UNPREPARED_KEY, True))
        if bound.name in state.refusals_shown:
            pytest.skip(f"refused: {bound.name} (the reason is given once, at its first test)")
        state.refusals_shown.add(bound.name)
        pytest.fail(f"refused: {refused}", pytrace=False)
    item.user_properties.append((GUARD_KEY, guard.info()))
    killed = bound.name in state.killed_in_session or guard.decided_in_session == "KILL"
    if ladder_options(item.config).kill_fast and killed and marker.kwargs["kind"] != "trap":
        pytest.skip(f"kill-fast: {bound.name} is already KILLED in this session; its remaining cells do not run")
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
    marker = ladder_marker(item)
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


# ---------------------------------------------------------------------------------------------------- replay ---


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    """`pytest archive/`: archived runs collect as items that mirror their verdict (pytest_ladder.replay)."""
    if file_path.name not in ("decision.json", "run.json"):  # archive.DECISION_FILE, archive.RUN_FILE
        return None
    from pytest_ladder.replay import collect_record_file

    return collect_record_file(file_path, parent)
