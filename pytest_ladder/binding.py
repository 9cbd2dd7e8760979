"""How a test binds to its rung: the `ladder` mark set by `ladder.gate/trap/prefilter`, the sealed prereg it is
bound to (loaded once per process), the item's cell, and the fixtures a ladder test takes: `prereg`, `gate`,
`trap`, `ladder_seeds`. Registered by the plugin (`pytest_plugins`); the standard library and pytest only.

Parameter variants: a prereg whose "rung" field names another rung module (prereg/g4_rank4x/tau.json with
"rung": "g4") is a claim of its own tested by that module's code. Collection gives each such prereg a group of its
own inside the module (`pytest_pycollect_makeitem` on the module's `Rung`): a `pytest.Class` node named after the
prereg whose tests are the module's ladder tests bound to the prereg's name, so node ids read
`rungs/test_g4.py::g4_rank4x::test_activation_error[layer:3/16-task:text]`, the module's own tests keep theirs,
`pytest rungs/test_g4.py` runs the rung and every variant, and `-k g4_rank4x` or the node id
`rungs/test_g4.py::g4_rank4x` selects one. Each group has its own `rung_cache`, decision and archive folder.
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
            if "rung" in prereg.raw and prereg.rung_module != bound.module_name:
                raise PreregError(
                    f"{shown}: field 'rung' binds it to the rung module {prereg.rung_module!r}, but it is loaded by "
                    f"rung({bound.module_name!r}). Fix the field (the name given to rung(...) in the module that "
                    f"tests it) and re-seal with: ladder seal {shown}")
            validate_against_rung(prereg, bound.gates, bound.traps, bound.prefilters)
            if bound.check is not None:
                bound.check(prereg, config.rootpath)
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


# ----------------------------------------------------------------------------------------- parameter variants ---

_claims_key = pytest.StashKey[dict]()


def prereg_folder(config: pytest.Config) -> Path:
    """The prereg folder (--ladder-prereg-dir / ladder_prereg_dir) as an absolute path."""
    folder = ladder_options(config).prereg_dir
    return folder if folder.is_absolute() else (ini_base(config) / folder).resolve()


def scan_bindings(folder: Path) -> tuple[dict[str, list[str]], list[str]]:
    """({rung module: [prereg names bound to it by their "rung" field, sorted]}, [problems]) over `folder`/*/tau.json.
    A prereg named after its module (prereg/g4 with "rung": "g4") is the module's own, not listed; a file whose
    "rung" field cannot be read is a problem (it would silently bind to nothing)."""
    import json

    from pytest_ladder.prereg_types import RUNG_NAME

    bound: dict[str, list[str]] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*/tau.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as error:
            problems.append(f"{path}: not read as JSON ({error}); the rung module it binds (field 'rung') is unknown")
            continue
        module = data.get("rung") if isinstance(data, dict) else None
        if isinstance(module, str) and RUNG_NAME.fullmatch(module) and module != path.parent.name:
            bound.setdefault(module, []).append(path.parent.name)
    return bound, problems


def bound_claims(config: pytest.Config, module: str) -> list[str]:
    """The names of the preregs bound to the rung module `module` by their "rung" field (scanned once per process;
    each unreadable prereg is reported once, as a warning)."""
    import warnings

    folder = prereg_folder(config)
    scans = config.stash.setdefault(_claims_key, {})
    if folder not in scans:
        scans[folder], problems = scan_bindings(folder)
        for problem in problems:
            warnings.warn(pytest.PytestWarning(f"ladder: {problem}"), stacklevel=1)
    return list(scans[folder].get(module, []))


def _bound_copy(function: Any, claim: Rung) -> Any:
    """A copy of the ladder test `function` whose `ladder` mark names `claim` (its other marks kept)."""
    import types

    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__dict__.update(function.__dict__)
    copy.__qualname__, copy.__module__, copy.__doc__ = function.__qualname__, function.__module__, function.__doc__
    copy.pytestmark = [
        pytest.mark.ladder(rung=claim, kind=mark.kwargs["kind"], name=mark.kwargs["name"]).mark
        if mark.name == "ladder" else mark
        for mark in getattr(function, "pytestmark", [])
    ]
    return copy


def _claim_namespace(module: Any, base: Rung, claim: Rung) -> type:
    """The class a claim's group collects: each ladder test of `module` bound to `base`, bound to `claim` instead,
    and a `rung_cache` of the group's own (the module's cache would be shared with the module's own claim)."""
    members: dict[str, Any] = {"__module__": module.__name__, "__doc__": f"{claim.name}: the {base.name} tests"}
    for name, value in vars(module).items():
        marks = getattr(value, "pytestmark", None) if callable(value) else None
        if marks and any(m.name == "ladder" and m.kwargs.get("rung") is base for m in marks):
            members[name] = staticmethod(_bound_copy(value, claim))

    @pytest.fixture(scope="class", name="rung_cache")
    @classmethod
    def claim_cache(cls: Any, rung_cache: dict) -> Any:
        """This claim's part of the module's rung_cache, emptied when the claim's tests are done."""
        cache = rung_cache.setdefault(("claim", claim.name), {})
        yield cache
        cache.clear()
        rung_cache.pop(("claim", claim.name), None)

    members["claim_cache"] = claim_cache
    return type(claim.name, (), members)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Any:
    """A rung module's `Rung` collects as one group per prereg bound to it (see the module docstring); the ladder
    tests of a module declared `rung(..., own_prereg=False)` collect only inside those groups."""
    if not isinstance(collector, pytest.Module):
        return None
    if isinstance(obj, Rung):
        if obj.module is not None:
            return []
        groups = []
        for claim_name in bound_claims(collector.config, obj.name):
            group = pytest.Class.from_parent(collector, name=claim_name)
            group.obj = _claim_namespace(collector.obj, obj, obj.claim(claim_name))
            groups.append(group)
        return groups
    marker = next((m for m in getattr(obj, "pytestmark", []) if m.name == "ladder"), None) if callable(obj) else None
    if marker is not None and not marker.kwargs["rung"].own_prereg:
        return []
    return None
