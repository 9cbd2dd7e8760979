"""The seal: canonical form, round trip, tamper evidence, seeds, and the `ladder seal` / `ladder verify` CLI."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from pytest_ladder.cli import main as ladder
from pytest_ladder.seal import (
    canonical_bytes,
    compute_seal,
    derive_seeds,
    seal_file,
    seal_main,
    verify_main,
    verify_seal,
)


def leaf_paths(value, path=()):
    """Every (path, leaf) of a JSON value: where a single changed value must break the seal."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, path + (index,))
    else:
        yield path, value


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


def test_canonical_bytes_exact():
    data = {"b": 1, "a": "é", "seal": "anything"}
    assert canonical_bytes(data) == '{"a":"é","b":1}'.encode()
    assert compute_seal(data) == hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()
    assert compute_seal(data) == "aa58fba8483623bed37c1b02edfccbdd9a53123837c20bfa4cb4049993a2872e"


def test_canonical_bytes_refuses_nan():
    with pytest.raises(ValueError):
        canonical_bytes({"x": float("nan")})


def test_round_trip(tmp_path, g4):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(g4))
    seal = seal_file(path)
    assert seal == compute_seal(g4)
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps({**g4, "seal": seal}, indent=2, ensure_ascii=False) + "\n"
    assert list(json.loads(text)) == list(g4) + ["seal"]
    status = verify_seal(path)
    assert status.ok and status.found == status.expected == seal
    assert seal_file(path) == seal  # sealing again is a no-op
    assert path.read_text() == text


def test_reindenting_and_reordering_keeps_the_seal(tmp_path, g4):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(g4))
    seal = seal_file(path)
    data = json.loads(path.read_text())
    reordered = dict(reversed(list(data.items())))
    reordered["gates"] = dict(reversed(list(reordered["gates"].items())))
    path.write_text(json.dumps(reordered, indent=7, sort_keys=False))
    assert verify_seal(path).ok
    path.write_text(json.dumps(data, separators=(",", ":")))
    assert verify_seal(path).ok and verify_seal(path).found == seal


def test_changing_any_value_breaks_the_seal(g4):
    seal = compute_seal(g4)
    paths = list(leaf_paths(g4))
    assert len(paths) == 33
    for path, value in paths:
        tampered = copy.deepcopy(g4)
        target = tampered
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = changed(value)
        assert compute_seal(tampered) != seal, path


def test_adding_a_field_or_reordering_a_list_breaks_the_seal(g4):
    seal = compute_seal(g4)
    assert compute_seal({**g4, "notes": "added later"}) != seal
    assert compute_seal({**g4, "tasks": list(reversed(g4["tasks"]))}) != seal


def test_broken_seal_message_names_file_and_how_to_reseal(tmp_path, g4):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(g4))
    seal = seal_file(path)
    data = json.loads(path.read_text())
    data["gates"]["activation_error"]["threshold"] = 0.5
    path.write_text(json.dumps(data))
    status = verify_seal(path, display="prereg/g4/tau.json")
    assert not status.ok and status.found == seal and status.expected == compute_seal(data)
    assert status.message.startswith(f"prereg/g4/tau.json: seal mismatch: the file says {seal[:12]}…")
    assert "`ladder seal prereg/g4/tau.json`" in status.message
    assert "re-sealing after seeing data is visible in version history" in status.message


def test_missing_seal(tmp_path, g4):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(g4))
    status = verify_seal(path)
    assert not status.ok and status.found is None and status.expected == compute_seal(g4)
    assert status.message == (
        f"{path}: no seal: the prereg must be sealed before the run. Seal it with `ladder seal {path}` "
        "(re-sealing after seeing data is visible in version history)."
    )


def test_invalid_json_names_file_and_position(tmp_path):
    path = tmp_path / "tau.json"
    path.write_text('{\n  "claim": "x",\n  "metric": \n}\n')
    status = verify_seal(path)
    assert not status.ok and status.found is None and status.expected == ""
    assert status.message.startswith(f"{path}: not valid JSON: Expecting value at line 4 column 1")


def test_nan_in_file_cannot_be_sealed(tmp_path):
    path = tmp_path / "tau.json"
    path.write_text('{"gates": {"g": NaN}}')
    status = verify_seal(path)
    assert not status.ok and status.message == (
        f"{path}: field 'gates.g' must be a finite number (got NaN): strict JSON has no NaN or Infinity. Fix the value "
        f"and re-seal with: ladder seal {path}\n{path}: the seal cannot be checked until the file parses."
    )


def test_seal_that_is_not_a_string(tmp_path, g4):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps({**g4, "seal": 12}))
    status = verify_seal(path)
    assert not status.ok and status.found == "12" and "seal mismatch" in status.message


def test_derive_seeds_is_stable_and_31_bit():
    assert derive_seeds("0" * 64, 4) == [88440249, 2108397771, 742168618, 1194411873]
    assert derive_seeds("0" * 64, 2, purpose="trap") == [132369802, 1786496260]
    seeds = derive_seeds("f" * 64, 100)
    assert len(set(seeds)) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seeds("f" * 64, 3) == seeds[:3]
    assert derive_seeds("0" * 64, 0) == []


# -------------------------------------------------------------------------------------------------- CLI ---------


def test_seal_and_verify_cli(tmp_path, g4, capsys):
    g4["requires"] = []  # these folders hold no g0
    folder = tmp_path / "prereg"
    for rung in ("g4", "g10"):
        (folder / rung).mkdir(parents=True)
        (folder / rung / "tau.json").write_text(json.dumps({**g4, "claim": rung}))
    assert verify_main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["MISSING", "MISSING"]

    assert seal_main([str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = [f"{folder / r / 'tau.json'}  {compute_seal({**g4, 'claim': r})}" for r in ("g10", "g4")]
    assert out == expected

    assert verify_main([str(folder)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["ok", "ok"]

    path = folder / "g4" / "tau.json"
    data = json.loads(path.read_text())
    data["data_points"] = 100
    path.write_text(json.dumps(data))
    assert verify_main([str(folder / "g10" / "tau.json"), str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok") and lines[1].startswith(f"BROKEN  {path}  {path}: seal mismatch")


def test_verify_usage_errors(tmp_path, capsys):
    assert verify_main([str(tmp_path)]) == 2
    assert "no tau.json under" in capsys.readouterr().err
    assert verify_main([str(tmp_path / "nope.json")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert verify_main([]) == 2


def test_seal_refuses_invalid_json_and_writes_nothing(tmp_path, g4, capsys):
    good, bad = tmp_path / "a" / "tau.json", tmp_path / "b" / "tau.json"
    good.parent.mkdir(), bad.parent.mkdir()
    good.write_text(json.dumps(g4))
    bad.write_text('{"claim": "x",}')
    assert seal_main([str(tmp_path)]) == 2
    assert f"{bad}: not valid JSON: " in capsys.readouterr().err
    assert "seal" not in json.loads(good.read_text())
    assert verify_main([str(bad)]) == 1
    assert capsys.readouterr().out.startswith(f"INVALID {bad}")


def test_verify_checks_the_schema_of_a_sealed_file(tmp_path, g4, capsys):
    path = tmp_path / "prereg" / "g4" / "tau.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**g4, "tau_margin": 1.5, "requires": []}))
    assert seal_main([str(path)]) == 2  # the CLI refuses to seal it; the library function does not judge content
    seal_file(path)
    capsys.readouterr()
    problem = (f"{path}: field 'tau_margin' must be a number with 0 <= margin < 1 (got 1.5). Fix the value and "
               f"re-seal with: ladder seal {path}")
    for argv in ([str(path)], [str(path), "--schema"]):  # --schema is accepted: old commands keep working
        assert verify_main(argv) == 1
        assert capsys.readouterr().out.splitlines() == [f"SCHEMA  {path}  {problem}"]


def test_ladder_console_dispatch(tmp_path, g4, capsys):
    g4["requires"] = []
    path = tmp_path / "tau.json"
    path.write_text(json.dumps(g4))
    assert ladder(["seal", str(path)]) == 0
    assert ladder(["verify", str(path)]) == 0
    path.write_text(path.read_text().replace('"data_points": 1000', '"data_points": 1001'))
    assert ladder(["verify", str(path)]) == 1
