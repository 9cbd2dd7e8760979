"""Hostile preregs are refused, by loading and by `ladder seal` / `ladder verify` alike: duplicate keys, non-finite
numbers, unbounded or overflowing expressions, names that could leave the prereg folder, `requires` naming absent
rungs or forming cycles. Every file is reported; a UTF-8 BOM is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_ladder.cli import main as ladder
from pytest_ladder.expr import NonFiniteError
from pytest_ladder.prereg import PreregError, check_requires, load_prereg, prereg_problems
from pytest_ladder.seal import compute_seal, verify_seal

SHOWN = "prereg/g4/tau.json"
RESEAL = f"re-seal with: ladder seal {SHOWN}"
REPO = Path(__file__).resolve().parents[2]


def sealed_text(data: dict) -> str:
    return json.dumps({**data, "seal": compute_seal(data)}, indent=2) + "\n"


def load_error(path: Path, root: Path) -> str:
    with pytest.raises(PreregError) as error:
        load_prereg(path, root=root)
    return str(error.value)


# ------------------------------------------------------------------------------------------ duplicate keys ----


def test_duplicate_key_before_the_real_one_is_refused_everywhere(tmp_path, g4, write_prereg, capsys, monkeypatch):
    path = write_prereg(g4)
    honest = path.read_text()
    path.write_text(honest.replace('{\n  "claim"', '{\n  "tau_margin": 0.5,\n  "claim"', 1))
    assert json.loads(path.read_text())["tau_margin"] == 0.1  # what a plain parser keeps: the real value
    message = (
        f"{SHOWN}: field 'tau_margin' appears more than once (a duplicate key: a reader sees the first value, the "
        f"parser keeps the last). Keep exactly one and {RESEAL}"
    )
    assert load_error(path, tmp_path) == message
    monkeypatch.chdir(tmp_path)
    assert ladder(["verify", SHOWN]) == 1
    assert capsys.readouterr().out == (
        f"INVALID {SHOWN}  {message}\n{SHOWN}: the seal cannot be checked until the file parses.\n"
    )
    text = path.read_text()
    assert ladder(["seal", SHOWN]) == 2
    assert capsys.readouterr().err == f"ladder seal: nothing sealed: 1 problem to fix first:\n  {message}\n"
    assert path.read_text() == text


def test_nested_duplicate_keys_are_each_named(tmp_path, g4, write_prereg):
    text = sealed_text(g4).replace('"route_flip_rate": 0.1', '"route_flip_rate": 0.1, "route_flip_rate": 0.9')
    text = text.replace('"rank": 16', '"rank": 16, "rank": 4')
    path = write_prereg(g4, text=text)
    assert load_error(path, tmp_path).splitlines() == [
        f"{SHOWN}: 2 problems:",
        f"  {SHOWN}: field 'gates.route_flip_rate' appears more than once (a duplicate key: a reader sees the first "
        f"value, the parser keeps the last). Keep exactly one and {RESEAL}",
        f"  {SHOWN}: field 'params.rank' appears more than once (a duplicate key: a reader sees the first value, the "
        f"parser keeps the last). Keep exactly one and {RESEAL}",
    ]


# ---------------------------------------------------------------------------------------- non-finite numbers ----


@pytest.mark.parametrize(
    ("literal", "why"),
    [("1e400", "it overflows"), ("-1e400", "it overflows"), ("1" + "0" * 400, "it overflows"),
     ("NaN", "strict JSON has no NaN or Infinity"),
     ("Infinity", "strict JSON has no NaN or Infinity"), ("-Infinity", "strict JSON has no NaN or Infinity")],
)
def test_non_finite_number_refused_by_load_seal_and_verify(
    tmp_path, g4, write_prereg, capsys, monkeypatch, literal, why
):
    path = write_prereg(g4, text=sealed_text(g4).replace('"threshold": 0.2', f'"threshold": {literal}'))
    shown = "100000000000... (401 digits)" if len(literal) > 24 else literal
    message = (
        f"{SHOWN}: field 'gates.activation_error.threshold' must be a finite number (got {shown}): {why}. Fix the "
        f"value and {RESEAL}"
    )
    assert load_error(path, tmp_path) == message
    monkeypatch.chdir(tmp_path)
    text = path.read_text()
    assert ladder(["seal", SHOWN]) == 2
    assert capsys.readouterr().err == f"ladder seal: nothing sealed: 1 problem to fix first:\n  {message}\n"
    assert path.read_text() == text
    assert ladder(["verify", SHOWN, "--schema"]) == 1
    out = capsys.readouterr().out
    assert out == f"INVALID {SHOWN}  {message}\n{SHOWN}: the seal cannot be checked until the file parses.\n"


def test_1e400_through_the_console_script_gives_no_traceback(tmp_path, g4, write_prereg):
    write_prereg(g4, text=sealed_text(g4).replace('"tau_margin": 0.1', '"tau_margin": 1e400'))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in ("seal", "verify"):
        done = subprocess.run([sys.executable, "-m", "pytest_ladder.cli", command, "prereg"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == (2 if command == "seal" else 1), done
        assert "Traceback" not in done.stdout + done.stderr
        assert (f"{SHOWN}: field 'tau_margin' must be a finite number (got 1e400): it overflows. Fix the value and "
                f"{RESEAL}") in done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------- expressions ----


def test_1000_term_chain_is_refused_naming_file_and_field(tmp_path, g4, write_prereg, capsys, monkeypatch):
    rule = "error < tau * (1 - margin)" + " + tau" * 1000
    path = write_prereg({**g4, "decision_threshold": rule})
    message = (
        f"{SHOWN}: field 'decision_threshold' is not a valid rule: {rule[:60]!r}... (6026 characters) is longer than "
        f"500 characters; a locked rule should read at a glance. Fix the value and {RESEAL}"
    )
    assert load_error(path, tmp_path) == message
    monkeypatch.chdir(tmp_path)
    assert ladder(["verify", SHOWN]) == 1
    assert capsys.readouterr().out.splitlines() == [f"SCHEMA  {SHOWN}  {message}"]  # the seal holds, the content not


def test_20000_unary_minus_signs_are_refused_naming_file_and_field(tmp_path, g4, write_prereg):
    expect = "observed == " + "-" * 20_000 + "0"
    path = write_prereg({**g4, "traps": {**g4["traps"], "trivial_pass": expect}})
    assert load_error(path, tmp_path) == (
        f"{SHOWN}: field 'traps.trivial_pass' is not a valid expectation: {expect[:60]!r}... (20013 characters) is "
        f"longer than 500 characters; a locked rule should read at a glance. Fix the value and {RESEAL}"
    )


def test_deep_expression_within_the_length_limit_is_refused(tmp_path, g4, write_prereg):
    expect = "observed == " + "-" * 40 + "0"
    path = write_prereg({**g4, "traps": {**g4["traps"], "trivial_pass": {"expect": expect}}})
    assert load_error(path, tmp_path) == (
        f"{SHOWN}: field 'traps.trivial_pass.expect' is not a valid expectation: {expect!r} is nested 42 levels deep, "
        f"more than the 32 allowed. Fix the value and {RESEAL}"
    )


def test_overflowing_constant_part_is_refused_at_load(tmp_path, g4, write_prereg):
    rule = "error < tau * (1 - margin) + 0 * 9**9**9"
    path = write_prereg({**g4, "decision_threshold": rule})
    assert load_error(path, tmp_path) == (
        f"{SHOWN}: field 'decision_threshold' is not a valid rule: {rule!r}: 9 ** 3.8742e+08 is not a finite number. "
        f"Fix the value and {RESEAL}"
    )


def test_non_finite_evaluation_raises_instead_of_a_silent_nan(tmp_path, g4, write_prereg):
    rule = "error < tau * (1 - margin) + 0 * tau ** (9 ** 9 / tau)"  # finite unless tau > 1
    prereg = load_prereg(write_prereg({**g4, "decision_threshold": rule}))
    assert prereg.beats_tau(0.3, 0.35) is True
    with pytest.raises(NonFiniteError) as error:
        prereg.beats_tau(0.3, 1.5)
    assert str(error.value) == (
        "'error < tau * (1 - margin) + 0 * tau ** (9 ** 9 / tau)': 1.5 ** 2.5828e+08 is not a finite number"
    )


# ---------------------------------------------------------------------------------------- every problem shown ----


def test_seal_lists_every_problem_and_seals_nothing(tmp_path, g4, write_prereg, capsys, monkeypatch):
    good = write_prereg({**g4, "requires": []}, rung="g0", seal=False)
    bad = write_prereg({**g4, "tau_margin": 1.5, "data_points": 0, "claims": 1, "requires": ["../x"]}, seal=False)
    before = good.read_text(), bad.read_text()
    monkeypatch.chdir(tmp_path)
    assert ladder(["seal", "prereg"]) == 2
    fix = f"and {RESEAL}"
    assert capsys.readouterr().err.splitlines() == [
        "ladder seal: nothing sealed: 4 problems to fix first:",
        f"  {SHOWN}: field 'claims' is not a prereg field (did you mean 'claim'?); allowed fields: "
        "claim, metric, data_points, random_seeds, decision_threshold, tau_margin, model, tasks, cells, hardest_cell, "
        f"gates, traps, rung, prefilters, requires, params, theorems, label, notes, field_notes, seal. Remove or rename it {fix}",
        f"  {SHOWN}: field 'tau_margin' must be a number with 0 <= margin < 1 (got 1.5). Fix the value {fix}",
        f"  {SHOWN}: field 'requires[0]' must be a rung name of lowercase letters, digits and _ only (got \"../x\", a "
        f"string). Use the rung's folder name under prereg/ {fix}",
        f"  {SHOWN}: field 'data_points' must be a whole number >= 1 (got 0). Fix the value {fix}",
    ]
    assert (good.read_text(), bad.read_text()) == before
    assert prereg_problems(good) == []


def test_seal_lists_every_problem_inside_gates_traps_and_cells_and_seals_nothing(
    tmp_path, g4, write_prereg, capsys, monkeypatch
):
    g4["gates"] = {"activation_error": {"op": "=<", "treshold": 0.2, "vs_tau": "yes"}, "route_flip_rate": -1}
    g4["traps"] = {"trivial_pass": {"expect": "observed", "nte": "x"}, "random_basis": 3}
    g4["cells"][0]["layer"] = [3]
    g4["cells"][1]["task"] = None
    path = write_prereg({**g4, "tresholds": {"activation_error": 0.2}}, seal=False)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert ladder(["seal", SHOWN]) == 2
    fix = f"and {RESEAL}"
    gate = "gates.activation_error"
    assert capsys.readouterr().err.splitlines() == [
        "ladder seal: nothing sealed: 11 problems to fix first:",
        f"  {SHOWN}: field 'tresholds' is not a prereg field (thresholds belong to each gate: \"gates\": {{\"name\": "
        "{\"op\": \"<=\", \"threshold\": ...}}); allowed fields: claim, metric, data_points, random_seeds, "
        "decision_threshold, tau_margin, model, tasks, cells, hardest_cell, gates, traps, rung, prefilters, requires, "
        f"params, theorems, label, notes, field_notes, seal. Remove or rename it {fix}",
        f"  {SHOWN}: field 'cells[0].layer' must be a scalar: string, number or boolean (got [3], a list). "
        f"Fix the value {fix}",
        f"  {SHOWN}: field 'cells[1].task' must be a scalar: string, number or boolean (got null, null). "
        f"Fix the value {fix}",
        f"  {SHOWN}: field '{gate}.treshold' is not a gate field (did you mean 'threshold'?); allowed: op, threshold, "
        f"note, vs_tau. Remove or rename it {fix}",
        f"  {SHOWN}: field '{gate}.op' must be one of <, <=, >, >= (got \"=<\", a string) (did you mean '<='?). "
        f"Fix the value {fix}",
        f"  {SHOWN}: field '{gate}.threshold' is missing (required). Add it {fix}",
        f"  {SHOWN}: field '{gate}.vs_tau' must be true or false (got \"yes\", a string). Fix the value {fix}",
        f"  {SHOWN}: field 'gates.route_flip_rate' must be a finite number >= 0 (the threshold) or an object "
        f"{{\"op\": ..., \"threshold\": ...}} (got -1). Fix the value {fix}",
        f"  {SHOWN}: field 'traps.trivial_pass.nte' is not a trap field (did you mean 'note'?); allowed: expect, note. "
        f"Remove or rename it {fix}",
        f"  {SHOWN}: field 'traps.trivial_pass.expect' must be a comparison over 'observed' such as \"observed == 0\" "
        f"or \"observed > method\" (got 'observed'). Fix the value {fix}",
        f"  {SHOWN}: field 'traps.random_basis' must be an expectation such as \"observed == 0\" (got 3). "
        f"Fix the value {fix}",
    ]
    assert path.read_bytes() == before
    assert ladder(["verify", SHOWN]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"MISSING {SHOWN}  {SHOWN}: no seal") and len(out) == 12
    assert all(line.startswith(f"SCHEMA  {SHOWN}  {SHOWN}: field '") for line in out[1:])


def test_load_reports_every_problem_in_one_error(tmp_path, g4, write_prereg):
    path = write_prereg({**g4, "model": "", "hardest_cell": "nowhere", "traps": {"trivial_pass": "observed"}})
    assert load_error(path, tmp_path).splitlines() == [
        f"{SHOWN}: 3 problems:",
        f"  {SHOWN}: field 'model' must be a non-empty string (got \"\", a string). Fix the value and {RESEAL}",
        f"  {SHOWN}: field 'hardest_cell' names 'nowhere', which is not among the cells (layer:3-task:text, "
        f"layer:3-task:code, deep). Name one of the cells and {RESEAL}",
        f"  {SHOWN}: field 'traps.trivial_pass' must be a comparison over 'observed' such as \"observed == 0\" or "
        f"\"observed > method\" (got 'observed'). Fix the value and {RESEAL}",
    ]


def test_verify_dir_reports_every_file_after_a_bad_one(tmp_path, g4, write_prereg, capsys, monkeypatch):
    write_prereg({**g4, "requires": []}, rung="g0")
    write_prereg(g4, rung="g1", text=sealed_text(g4).replace('"data_points": 1000', '"data_points": 1e400'))
    write_prereg(g4, rung="g2", text=sealed_text(g4).replace('"claim"', '"model": "x",\n  "claim"', 1))
    write_prereg(g4, rung="g3", text='{"claim": ')
    g5 = write_prereg(g4, rung="g5")
    g5.write_text(g5.read_text().replace('"data_points": 1000', '"data_points": 100'))
    write_prereg(g4, rung="g6")
    monkeypatch.chdir(tmp_path)
    assert ladder(["verify", "prereg"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines if not line.startswith("prereg/g")] == [
        ["ok", "prereg/g0/tau.json"], ["INVALID", "prereg/g1/tau.json"], ["INVALID", "prereg/g2/tau.json"],
        ["INVALID", "prereg/g3/tau.json"], ["BROKEN", "prereg/g5/tau.json"], ["ok", "prereg/g6/tau.json"],
    ]
    assert "field 'data_points' must be a finite number (got 1e400)" in lines[1]
    assert "field 'model' appears more than once" in lines[3]
    assert "not valid JSON: Expecting value at line 1 column 11" in lines[5]


def test_bom_is_read_and_keeps_the_seal(tmp_path, g4, write_prereg, capsys, monkeypatch):
    path = write_prereg({**g4, "requires": []}, rung="g4")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    prereg = load_prereg(path, root=tmp_path)
    assert prereg.seal == compute_seal(g4 | {"requires": []}) and prereg.tau_margin == 0.1
    monkeypatch.chdir(tmp_path)
    assert ladder(["verify", SHOWN, "--schema"]) == 0
    assert capsys.readouterr().out == f"ok      {SHOWN}  {prereg.seal}\n"
    assert ladder(["seal", SHOWN]) == 0
    assert capsys.readouterr().out == f"{SHOWN}  {prereg.seal}\n"


def test_bom_prereg_seals_to_the_seal_of_its_content_and_verifies(tmp_path, g4, write_prereg, capsys, monkeypatch):
    g4["requires"] = []
    path = write_prereg(g4, seal=False)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))  # as a Windows editor saves it
    monkeypatch.chdir(tmp_path)
    assert ladder(["seal", SHOWN]) == 0
    assert capsys.readouterr().out == f"{SHOWN}  {compute_seal(g4)}\n"  # the BOM is not part of what is hashed
    assert path.read_bytes() == sealed_text(g4).encode()  # written back as UTF-8 without a BOM
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert ladder(["verify", SHOWN]) == 0
    assert capsys.readouterr().out == f"ok      {SHOWN}  {compute_seal(g4)}\n"
    assert load_prereg(path).seal == compute_seal(g4)


# ----------------------------------------------------------------------------------------- names and requires ----


def test_rung_field_and_folder_must_be_names(tmp_path, g4):
    path = tmp_path / "prereg" / "G4" / "tau.json"
    path.parent.mkdir(parents=True)
    path.write_text(sealed_text(g4))
    assert load_error(path, tmp_path) == (
        "prereg/G4/tau.json: the folder name 'G4' is not a rung name (lowercase letters, digits and _ only). Move the "
        "file to prereg/<rung>/tau.json with such a name"
    )


def test_check_requires_names_a_missing_rung(tmp_path, g4, write_prereg):
    write_prereg({**g4, "requires": ["g0", "g99"]})
    write_prereg({**g4, "requires": []}, rung="g0")
    with pytest.raises(PreregError) as error:
        check_requires(tmp_path / "prereg", root=tmp_path)
    assert str(error.value) == (
        f"{SHOWN}: field 'requires[1]' names rung 'g99', which has no prereg in prereg (no prereg/g99/tau.json). Fix "
        f"the name or write and seal that rung's prereg, then {RESEAL}"
    )


def test_check_requires_names_each_cycle(tmp_path, g4, write_prereg):
    write_prereg(g4)  # g4 requires g0
    write_prereg({**g4, "requires": ["g4"]}, rung="g0")
    write_prereg({**g4, "requires": ["g6"]}, rung="g5")
    write_prereg({**g4, "requires": ["g7"]}, rung="g6")
    write_prereg({**g4, "requires": ["g5", "g0"]}, rung="g7")
    with pytest.raises(PreregError) as error:
        check_requires(tmp_path / "prereg", root=tmp_path)
    assert str(error.value).splitlines() == [
        "prereg: 2 problems:",
        "  prereg: the requires form a cycle: g0 -> g4 -> g0 (prereg/g0/tau.json, prereg/g4/tau.json). A rung "
        "requires lower rungs only: remove one of these requires and re-seal that file",
        "  prereg: the requires form a cycle: g5 -> g6 -> g7 -> g5 (prereg/g5/tau.json, prereg/g6/tau.json, "
        "prereg/g7/tau.json). A rung requires lower rungs only: remove one of these requires and re-seal that file",
    ]


def test_check_requires_returns_the_preregs_of_a_sound_ladder(tmp_path, g4, write_prereg):
    write_prereg(g4)
    write_prereg({**g4, "requires": []}, rung="g0")
    assert sorted(check_requires(tmp_path / "prereg")) == ["g0", "g4"]


def test_traversal_in_requires_is_refused_before_any_file_is_read(tmp_path, g4, write_prereg):
    path = write_prereg({**g4, "requires": ["../../../x"]})
    assert load_error(path, tmp_path) == (
        f"{SHOWN}: field 'requires[0]' must be a rung name of lowercase letters, digits and _ only (got "
        f"\"../../../x\", a string). Use the rung's folder name under prereg/ and {RESEAL}"
    )


def test_verify_reports_missing_rungs_and_cycles(tmp_path, g4, write_prereg, capsys, monkeypatch):
    write_prereg({**g4, "requires": ["g0", "g99"]})
    write_prereg({**g4, "requires": ["g4"]}, rung="g0")
    monkeypatch.chdir(tmp_path)
    requires = [
        "REQUIRES prereg  prereg/g4/tau.json: field 'requires[1]' names rung 'g99', which has no prereg in prereg (no "
        "prereg/g99/tau.json). Fix the name or write and seal that rung's prereg, then re-seal with: ladder seal "
        "prereg/g4/tau.json",
        "REQUIRES prereg  prereg: the requires form a cycle: g0 -> g4 -> g0 (prereg/g0/tau.json, prereg/g4/tau.json). "
        "A rung requires lower rungs only: remove one of these requires and re-seal that file",
    ]
    for argv in (["verify", "prereg"], ["verify", "prereg", "--schema"]):  # --schema: accepted, the default anyway
        assert ladder(argv) == 1
        assert capsys.readouterr().out.splitlines()[2:] == requires


def test_verifying_one_file_reads_its_required_rungs_from_its_folder(tmp_path, g4, write_prereg, capsys,
                                                                     monkeypatch):
    write_prereg({**g4, "requires": ["g0"]})
    write_prereg({**g4, "requires": []}, rung="g0")
    monkeypatch.chdir(tmp_path)
    assert ladder(["verify", SHOWN]) == 0
    assert capsys.readouterr().out == f"ok      {SHOWN}  {compute_seal({**g4, 'requires': ['g0']})}\n"
    write_prereg({**g4, "requires": ["g4"]}, rung="g0")
    assert ladder(["verify", SHOWN]) == 1
    assert capsys.readouterr().out.splitlines()[1] == (
        "REQUIRES prereg  prereg: the requires form a cycle: g0 -> g4 -> g0 (prereg/g0/tau.json, prereg/g4/tau.json). "
        "A rung requires lower rungs only: remove one of these requires and re-seal that file"
    )
    write_prereg({**g4, "tau_margin": 2}, rung="g0")  # present but invalid: its own problem, not a missing rung
    assert ladder(["verify", SHOWN]) == 0
    capsys.readouterr()


EACH_FILE = sorted(str(path.relative_to(REPO)) for path in (REPO / "prereg").glob("*/tau.json"))


@pytest.mark.parametrize("argv", [["prereg/"], ["prereg", "--schema"], EACH_FILE], ids=["folder", "schema", "files"])
def test_repository_preregs_verify_with_schema_and_requires(capsys, monkeypatch, argv):
    monkeypatch.chdir(REPO)
    assert ladder(["verify", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(EACH_FILE) >= 16 and all(line.startswith("ok      prereg/") for line in lines)
    assert len(check_requires(REPO / "prereg")) == len(EACH_FILE)


REPO_PREREGS = sorted((REPO / "prereg").glob("*/tau.json"))


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            if path or key != "seal":
                yield from _leaves(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, path + (index,))
    else:
        yield path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_value_edit_of_a_repository_prereg_is_refused(tmp_path, data):
    source = data.draw(st.sampled_from(REPO_PREREGS), label="prereg")
    content = json.loads(source.read_text())
    leaf = data.draw(st.sampled_from(list(_leaves(content))), label="field")
    target = content
    for key in leaf[:-1]:
        target = target[key]
    old = target[leaf[-1]]
    if isinstance(old, bool):
        new = not old
    elif isinstance(old, (int, float)):
        new = data.draw(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
                        .filter(lambda v: v != old or type(v) is not type(old)), label="value")
    elif isinstance(old, str):
        new = data.draw(st.text(max_size=20).filter(lambda v: v != old), label="value")
    else:
        new = 0
    target[leaf[-1]] = new
    path = tmp_path / source.parent.name / "tau.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False))
    assert not verify_seal(path).ok, (source, leaf, old, new)
