"""`ladder new`: the prereg it writes (every field present and explained, cells from the model's depth), the rung
module skeleton, parameter variants, the refusals, and the `field_notes` field the prereg reader accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ladder.cli import main as ladder
from pytest_ladder.new_claim import FIELD_NOTES, cells_for, layer_specs, model_config, new_claim, NewClaimError
from pytest_ladder.prereg import ALLOWED, PreregError, load_prereg, prereg_problems
from pytest_ladder.seal import read_json_object

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_LAYERS = 8  # models.embedded.RECIPE.num_hidden_layers


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """A copy of the repository's prereg/ and rungs/ in a tmp folder, which becomes the working directory."""
    shutil.copytree(REPO / "prereg", tmp_path / "prereg")
    shutil.copytree(REPO / "rungs", tmp_path / "rungs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def model_folder(tmp_path: Path, n_layers: int) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": n_layers, "hidden_size": 2048}))
    return folder


@pytest.mark.parametrize(("n_layers", "specs"), [
    (16, ["0/16", "3/16", "8/16", "15/16"]),  # the seed preregs' layers on OLMoE-1B-7B
    (8, ["0/8", "2/8", "4/8", "7/8"]),
    (2, ["0/2", "1/2"]),
    (1, ["0/1"]),
])
def test_layer_specs(n_layers, specs):
    assert layer_specs(n_layers) == specs


def test_layer_specs_refuse_an_empty_model():
    with pytest.raises(NewClaimError, match="the model has 0 layers"):
        layer_specs(0)


def test_cells_are_layers_by_tasks_and_the_hardest_is_early_text():
    cells, hardest = cells_for(16)
    assert cells[:3] == [{"layer": "0/16", "task": "code"}, {"layer": "0/16", "task": "math"},
                         {"layer": "0/16", "task": "text"}]
    assert len(cells) == 12 and hardest == {"layer": "3/16", "task": "text"}


def test_embedded_model_depth_is_read_without_building():
    assert model_config("embedded")["num_hidden_layers"] == EMBEDDED_LAYERS


def test_own_claim_writes_a_valid_unsealed_prereg_with_every_field_explained(repo_copy):
    written = new_claim("my_int4")
    data = read_json_object(written.prereg)
    assert written.prereg == Path("prereg/my_int4/tau.json") and written.module == Path("rungs/test_my_int4.py")
    assert "seal" not in data
    assert set(data) == set(ALLOWED) - {"seal"}  # every field present
    assert set(data["field_notes"]) == set(ALLOWED) and data["field_notes"] == FIELD_NOTES
    assert all(spec["note"] for spec in [*data["gates"].values(), *data["traps"].values()])
    assert data["rung"] == "my_int4" and data["model"] == "embedded"
    assert [c["layer"] for c in data["cells"][::3]] == ["0/8", "2/8", "4/8", "7/8"]
    assert data["hardest_cell"] == {"layer": "2/8", "task": "text"}
    assert prereg_problems(written.prereg) == []
    prereg = load_prereg(written.prereg)
    assert prereg.hardest_cell.id == "layer:2/8-task:text" and set(prereg.traps) == {"trivial_pass"}
    text = written.module.read_text()
    assert 'ladder = rung("my_int4")' in text and '@ladder.trap("trivial_pass")' in text
    assert '@ladder.gate("weight_error")' in text
    compile(text, str(written.module), "exec")


def test_model_path_lays_the_cells_on_its_depth(repo_copy):
    folder = model_folder(repo_copy, 16)
    data = read_json_object(new_claim("deep", model=str(folder)).prereg)
    assert data["model"] == str(folder)
    assert [c["layer"] for c in data["cells"][::3]] == ["0/16", "3/16", "8/16", "15/16"]


def test_variant_copies_the_rung_and_binds_its_module(repo_copy):
    written = new_claim("g4_rank4x", source="g4")
    source = read_json_object("prereg/g4/tau.json")
    data = read_json_object(written.prereg)
    assert written.module is None and written.rung_module == Path("rungs/test_g4.py")
    assert list(data)[0] == "rung" and data["rung"] == "g4"
    assert {k: v for k, v in data.items() if k not in ("rung", "field_notes")} == {
        k: v for k, v in source.items() if k not in ("rung", "seal")}
    assert data["field_notes"]["params"].startswith("g4's values (rank_fraction=0.01171875, ")
    assert set(data["field_notes"]) == (set(data) | {"seal"})
    assert not Path("rungs/test_g4_rank4x.py").exists()


def test_cli_prints_the_three_next_commands(repo_copy, capsys):
    assert ladder(["new", "my_claim"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "wrote prereg/my_claim/tau.json (unsealed)",
        "wrote rungs/test_my_claim.py",
        "next:",
        "  $EDITOR prereg/my_claim/tau.json rungs/test_my_claim.py",
        "  ladder seal prereg/my_claim/tau.json",
        "  pytest rungs/test_my_claim.py --ladder-prereg-dir prereg",
    ]
    assert ladder(["new", "g4_rank4x", "--from", "g4"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "wrote prereg/g4_rank4x/tau.json (unsealed)",
        "it runs through rungs/test_g4.py",
        "next:",
        "  $EDITOR prereg/g4_rank4x/tau.json",
        "  ladder seal prereg/g4_rank4x/tau.json",
        "  pytest rungs/test_g4.py::g4_rank4x --ladder-prereg-dir prereg",
    ]


@pytest.mark.parametrize(("argv", "says"), [
    (["g4"], "ladder new: prereg/g4 exists: a claim is sealed once and never rewritten. Pick a new NAME"),
    (["G4x"], "ladder new: NAME 'G4x' is not a rung name: lowercase letters, digits and _ only"),
    (["../x"], "ladder new: NAME '../x' is not a rung name"),
    (["x", "--from", "g99"], "ladder new: --from g99: no prereg/g99/tau.json. Known rungs: g0, g0_seeds,"),
    (["x", "--from", "G4"], "ladder new: --from 'G4' is not a rung name"),
    (["x", "--model", "nowhere"], "ladder new: --model nowhere: no config.json there. Give 'embedded' or a local "
                                  "folder written by save_pretrained"),
])
def test_refusals_write_nothing(repo_copy, capsys, argv, says):
    before = sorted(p.as_posix() for p in repo_copy.rglob("*"))
    assert ladder(["new", *argv]) == 2
    assert capsys.readouterr().err.startswith(says)
    assert sorted(p.as_posix() for p in repo_copy.rglob("*")) == before


def test_refuses_a_name_whose_rung_module_exists(repo_copy, capsys):
    Path("rungs/test_mine.py").write_text("")
    assert ladder(["new", "mine"]) == 2
    assert capsys.readouterr().err == ("ladder new: rungs/test_mine.py exists: pick a new NAME, or make a variant of "
                                       "that rung with --from mine\n")
    assert not Path("prereg/mine").exists()


def test_the_skeleton_runs_to_a_verdict_on_the_embedded_model(repo_copy):
    """new -> seal -> pytest: the skeleton's example method (INT8, one scale per row) passes every cell and its
    identity trap observes exactly 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "pytest_ladder.cli"]
    subprocess.run([*run, "new", "my_int8"], check=True, env=env, capture_output=True)
    subprocess.run([*run, "seal", "prereg/my_int8/tau.json"], check=True, env=env, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "rungs/test_my_int8.py", "--ladder-prereg-dir", "prereg",
         "--ladder-archive-dir", "archive", "-p", "no:cacheprovider", "-q"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "my_int8: PASS" in result.stdout and "13 passed" in result.stdout
    decision = json.loads(next(Path("archive/my_int8").glob("*/decision.json")).read_text())
    assert decision["verdict"] == "PASS"
    assert [t["observed"] for t in decision["traps"]] == [0.0]


# ------------------------------------------------------------------------------------- the field_notes field ---


def test_field_notes_are_checked(tmp_path, g4, write_prereg):
    g4["field_notes"] = {"claim": "what is claimed", "gate": "typo", "metric": ""}
    path = write_prereg(g4, seal=False)
    with pytest.raises(PreregError) as error:
        load_prereg(path, root=tmp_path)
    message = str(error.value)
    assert "field 'field_notes.gate' is not a prereg field (did you mean 'gates'?)" in message
    assert "field 'field_notes.metric' must be a non-empty string" in message
    g4["field_notes"] = ["claim"]
    with pytest.raises(PreregError, match="field 'field_notes' must be an object"):
        load_prereg(write_prereg(g4, seal=False), root=tmp_path)


def test_field_notes_are_kept_and_sealed(tmp_path, g4, write_prereg):
    g4["field_notes"] = {"claim": "what is claimed", "seal": "written by ladder seal"}
    prereg = load_prereg(write_prereg(g4), root=tmp_path)
    assert prereg.raw["field_notes"] == {"claim": "what is claimed", "seal": "written by ladder seal"}
