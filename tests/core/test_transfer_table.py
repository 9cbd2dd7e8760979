"""The transfer table (`ladder scoreboard --by-model`) and the postmortem's comparison with the OLMoE run, from a
hand-made archive of decisions on three models: a verdict that transfers, one that differs, one INVALID somewhere,
one decided on a single model, one under different seals."""

from __future__ import annotations

import json

import pytest

from pytest_ladder.postmortem import olmoe_decisions, render_postmortem
from pytest_ladder.scoreboard import (TRANSFER_END, TRANSFER_START, main, render_transfer_markdown, transfer_table)

ARCHITECTURE = {"embedded": "OLMoE", "embedded-qwen": "Qwen3-MoE", "embedded-mixtral": "Mixtral"}
MODELS = ["embedded", "embedded-mixtral", "embedded-qwen"]
KILLED = "KILLED: activation_error @ layer=3-task=text: 0.31 > 0.2"


@pytest.fixture
def on_model(record):
    """`on_model(rung, verdict, model, n, **options)`: a record of `rung` on `model`, run id ending in n."""

    def make(rung: str, verdict: str, model: str, n: int, **options) -> dict:
        data = record(rung, verdict, model=model, run_id=f"20250101T0000{n:02d}Z-00000{n % 10}", **options)
        data["model"]["architecture"] = ARCHITECTURE[model]
        return data

    return make


@pytest.fixture
def transfer_archive(on_model, archived, tmp_path):
    for n, model in enumerate(MODELS):
        archived(on_model("g0", "KILL", model, 10 + n))  # transfers
        archived(on_model("g10", "INVALID" if model == "embedded-mixtral" else "PASS", model, 20 + n))
        archived(on_model("g3", "KILL", model, 30 + n, seal=("6" if model == "embedded-mixtral" else "5") * 64))
    archived(on_model("g0", "PASS", "embedded-qwen", 40, kind="replication",
                      replication_of="20250101T000012Z-000002"))  # a replication: not the decision shown
    archived(on_model("g4", "KILL", "embedded", 50))
    archived(on_model("g4", "KILL", "embedded-mixtral", 51))
    passed = on_model("g4", "PASS", "embedded-qwen", 52)
    passed["gates"][1]["value"] = 0.15
    archived(passed)
    archived(on_model("g2", "PASS", "embedded", 60))  # decided on one model only
    return tmp_path / "archive"


def test_the_transfer_table_rows(transfer_archive):
    table = transfer_table(transfer_archive)
    assert table["models"] == MODELS
    assert [(r["rung"], r["transfer"], r["why"]) for r in table["rows"]] == [
        ("g0", "transfers", "KILLED on every model"),
        ("g2", "not comparable", "no decision on embedded-mixtral, embedded-qwen"),
        ("g3", "not comparable", "decided under different seals of the prereg"),
        ("g4", "differs", "KILLED on embedded; KILLED on embedded-mixtral; PASSED on embedded-qwen"),
        ("g10", "not comparable", "INVALID on embedded-mixtral"),
    ]
    g0 = table["rows"][0]["cells"]["embedded-qwen"]
    assert g0 == {"verdict": "KILL", "status": "KILLED", "label": None, "killed_by": KILLED[len("KILLED: "):],
                  "gate": "activation_error", "cell": "layer=3-task=text", "value": 0.31,
                  "run_id": "20250101T000012Z-000002", "seal": "5" * 64}
    assert table["rows"][1]["cells"]["embedded-qwen"] is None


def test_the_transfer_table_in_markdown(transfer_archive):
    lines = render_transfer_markdown(transfer_table(transfer_archive)).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["rung", *MODELS, "transfer"]
    assert cells[2] == ["g0", KILLED, KILLED, KILLED, "transfers (KILLED on every model)"]
    assert cells[3] == ["g2", "PASSED", "—", "—", "not comparable (no decision on embedded-mixtral, embedded-qwen)"]
    assert cells[5][3] == "PASSED" and cells[5][4].startswith("differs (")
    assert cells[6] == ["g10", "PASSED", "INVALID: trap random_basis fired wrong", "PASSED",
                        "not comparable (INVALID on embedded-mixtral)"]


def test_chosen_model_columns(transfer_archive):
    table = transfer_table(transfer_archive, models=["embedded", "embedded-qwen"])
    assert table["models"] == ["embedded", "embedded-qwen"]
    by_rung = {r["rung"]: r["transfer"] for r in table["rows"]}
    assert by_rung == {"g0": "transfers", "g2": "not comparable", "g3": "transfers", "g4": "differs",
                       "g10": "transfers"}


def test_cli_json_and_readme(transfer_archive, tmp_path, capsys):
    assert main(["--archive", str(transfer_archive), "--by-model", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == transfer_table(transfer_archive)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{TRANSFER_START}\nold\n{TRANSFER_END}\ntail\n")
    assert main(["--archive", str(transfer_archive), "--by-model", "--update-readme", str(readme)]) == 0
    assert capsys.readouterr().out.strip() == f"updated {readme} (5 rungs on 3 models)"
    table = render_transfer_markdown(transfer_table(transfer_archive))
    assert readme.read_text() == f"# x\n{TRANSFER_START}\n{table}\n{TRANSFER_END}\ntail\n"
    assert main(["--archive", str(transfer_archive), "--by-model", "--model", "embedded"]) == 2
    assert "--models A,B" in capsys.readouterr().err
    readme.write_text("no markers\n")
    assert main(["--archive", str(transfer_archive), "--by-model", "--update-readme", str(readme)]) == 2
    assert TRANSFER_START in capsys.readouterr().err


def test_a_second_family_postmortem_names_where_it_differs(transfer_archive, on_model):
    qwen = json.loads((transfer_archive / "g4" / "20250101T000052Z-000002" / "decision.json").read_text())
    olmoe = olmoe_decisions(transfer_archive, qwen)
    assert [r["run_id"] for r in olmoe] == ["20250101T000050Z-000000"]
    text = render_postmortem(qwen, olmoe=olmoe)
    section = text.split("## Compared with the OLMoE run\n", 1)[1].split("\n## ", 1)[0]
    assert section.splitlines()[1:4] == [
        "- OLMoE run `20250101T000050Z-000000` on `embedded` (same seal): **KILL** — activation_error @ "
        "layer=3-task=text: 0.31 > 0.2",
        "- this run on `embedded-qwen`: **PASS**",
        "- the verdict **differs**: KILL on OLMoE, PASS here.",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    # cells compared in the current key:value spelling
    assert rows[2:] == [["gate", "activation_error", "layer:3-task:text", "0.31", "failed", "0.15", "passed"]]
    mixtral = json.loads((transfer_archive / "g4" / "20250101T000051Z-000001" / "decision.json").read_text())
    mixtral["killed_by"]["cell"] = "layer:3-task:text"  # the same cell in the key:value spelling of newer records
    same = render_postmortem(mixtral, olmoe=olmoe_decisions(transfer_archive, mixtral))
    assert "- the verdict **transfers**: the same verdict and the same killing gate on both families." in same
    assert "- the 6 gates and traps that ran on both have the same outcome on both." in same
    olmoe_record = json.loads((transfer_archive / "g4" / "20250101T000050Z-000000" / "decision.json").read_text())
    assert olmoe_decisions(transfer_archive, olmoe_record) == []  # an OLMoE run compares with nothing
    other_seal = json.loads((transfer_archive / "g3" / "20250101T000031Z-000001" / "decision.json").read_text())
    assert olmoe_decisions(transfer_archive, other_seal) == []  # another seal is another claim
    assert "Compared with the OLMoE run" not in render_postmortem(other_seal)
