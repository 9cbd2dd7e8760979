"""How a test binds to its rung: the `ladder` mark set by `ladder.gate/trap/prefilter`, the sealed prereg it is
bound to (loaded once per process), the item's cell, and the fixtures a ladder test takes: `prereg`, `gate`,
`trap`, `ladder_seeds`. Registered by the plugin (`pytest_plugins`); the standard library and pytest only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.files import display_path
from pytest_ladder.options import flag, ladder_options, ini_base, PREREG_DIR
from pytest_ladder.rung import GateCheck, Rung, TrapCheck
from pytest_ladder.state import ladder_state


def ladder_marker(node: Any) -> pytest.Mark | None:
    """The `ladder(rung, kind, name)` mark of a ladder test, None for any other node."""
    return node.get_closest_marker("ladder")


def cell_of(item: Any) -> Any:
    """The prereg Cell an item is parametrized with, or None."""
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("cell")


def bound_prereg(config: pytest.Config, bound: Rung) -> Any:
    """Load and validate the prereg a rung module is bound to (a UsageError naming file and field on bad content)."""
    from pytest_ladder.prereg import PreregError, check_requires_of, load_prereg, validate_against_rung

    from pytest_ladder.prereg_types import RUNG_NAME

    state = ladder_state(config)
    if not RUNG_NAME.fullmatch(bound.name):
        raise pytest.UsageError(
            f"rung({bound.name!r}): a rung name is letters, digits and underscores ([a-z0-9_]+), the name of its "
            f"folder under {flag(PREREG_DIR)}; rename it in the rung module")
    if bound.name not in state.preregs:
        path = Path(bound.prereg) if bound.prereg else ladder_options(config).prereg_dir / bound.name / "tau.json"
        if not path.is_absolute():
            path = (ini_base(config) / path).resolve()
        shown = display_path(path, config.invocation_params.dir, config.rootpath)
        if not path.is_file():
            raise pytest.UsageError(
                f"rung {bound.name!r}: no prereg at {shown}. Write it (see README 'tau.json reference'), seal it "
                f"with `ladder seal {shown}`, or point {flag(PREREG_DIR)} at the folder holding <rung>/tau.json."
            )
        try:
            prereg = load_prereg(path, root=config.rootpath)
            validate_against_rung(prereg, bound.gates, bound.traps, bound.prefilters)
            if not bound.prereg:
                check_requires_of(prereg, ladder_options(config).prereg_dir, root=config.rootpath)
        except PreregError as error:
            raise pytest.UsageError(str(error)) from None
        state.preregs[bound.name] = prereg
    return state.preregs[bound.name]


def _bound(request: pytest.FixtureRequest, fixture: str) -> tuple[str, str, Any]:
    marker = ladder_marker(request.node)
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid}: the {fixture!r} fixture is for ladder tests; decorate the test with "
            "ladder.gate(...), ladder.prefilter(...) or ladder.trap(...) from `ladder = rung('<name>')`"
        )
    return marker.kwargs["kind"], marker.kwargs["name"], bound_prereg(request.config, marker.kwargs["rung"])


@pytest.fixture
def prereg(request: pytest.FixtureRequest) -> Any:
    """The sealed, validated prereg (pytest_ladder.prereg.Prereg) of the requesting rung."""
    return _bound(request, "prereg")[2]


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> GateCheck:
    """`gate.check(value, tau=...)` records this gate's value for the cell and applies the prereg's locked rule."""
    kind, name, loaded = _bound(request, "gate")
    if kind not in ("gate", "prefilter"):
        raise pytest.UsageError(f"{request.node.nodeid}: a {kind} test takes the 'trap' fixture, not 'gate'")
    return GateCheck(request.node, loaded, kind, name, cell_of(request.node))


@pytest.fixture
def trap(request: pytest.FixtureRequest) -> TrapCheck:
    """`trap.check(observed, **refs)` records this trap and compares it with its declared expectation."""
    kind, name, loaded = _bound(request, "trap")
    if kind != "trap":
        raise pytest.UsageError(f"{request.node.nodeid}: a {kind} test takes the 'gate' fixture, not 'trap'")
    return TrapCheck(request.node, loaded, name, cell_of(request.node))


def rung_seeds(prereg: Any) -> list[int]:
    """The prereg's explicit seed list, or B seeds derived from its seal."""
    from pytest_ladder.seal import derive_seeds

    if prereg.seeds is not None:
        return list(prereg.seeds)
    return derive_seeds(prereg.seal or "", prereg.n_seeds)


@pytest.fixture
def ladder_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The rung's random-baseline seeds: the prereg's explicit list, or B seeds derived from its seal."""
    return rung_seeds(_bound(request, "ladder_seeds")[2])


def trap_check_keywords(function: Any) -> set[str] | None:
    """The keyword names every `trap.check(...)` call in a trap test passes, read from its source (None when the
    source cannot be read or a call spreads `**refs`, whose names are known only at run time)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "check"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "trap"):
            for keyword in node.keywords:
                if keyword.arg is None:
                    return None
                names.add(keyword.arg)
    return names


def check_trap_references(prereg: Any, name: str, function: Any, where: str) -> None:
    """At collection: the names a trap's declared expectation reads (besides `observed`) must be keywords its test
    passes to trap.check, else the run would only find out after spending its measurements."""
    from pytest_ladder.prereg_types import TRAP_OBSERVED

    spec = prereg.traps.get(name)
    passed = trap_check_keywords(function)
    if spec is None or passed is None:
        return
    missing = sorted(spec.expect.names - {TRAP_OBSERVED} - passed)
    if missing:
        raise pytest.UsageError(
            f"{where}: the trap {name!r} of {prereg.display_path} expects `{spec.expect}`, which reads "
            f"{', '.join(repr(m) for m in missing)}, but the test's trap.check(...) passes only "
            f"{sorted(passed) or 'no keyword'}: pass {', '.join(f'{m}=...' for m in missing)} to trap.check, or fix the "
            "expectation in a new prereg")
