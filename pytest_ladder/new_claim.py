"""`ladder new NAME`: the start of a new claim, written before anything is measured.

Without `--from`, an unsealed `prereg/NAME/tau.json` with every field present and explained (`field_notes`, and a
`note` on each gate and trap), its cells and hardest cell laid out on the model's depth, plus a rung module skeleton
`rungs/test_NAME.py` that measures through the real fixtures. With `--from RUNG`, a parameter variant of an existing
rung: RUNG's claim, cells, gates, traps and params copied into `prereg/NAME/tau.json` with `"rung": RUNG`, so RUNG's
module runs the new claim and no code is copied. Either way the prereg is left unsealed: edit, then `ladder seal`.
The standard library only (the model's shape is read from its config.json, no weights loaded).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from pytest_ladder.prereg_types import RUNG_NAME
from pytest_ladder.seal import PREREG_NAME, SEAL_FIELD, SealError, read_json_object

TASKS = ("code", "math", "text")
HARDEST_TASK = "text"
EARLY_LAYER = (3, 16)  # the seeds' hardest layer, 3 of OLMoE-1B-7B's 16: the same relative depth on any model


class NewClaimError(ValueError):
    """A claim that cannot be started: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Written:
    """What `new_claim` wrote and the three commands to run next."""

    prereg: Path
    module: Path | None  # the rung module skeleton, None for a variant (the source rung's module runs it)
    rung_module: Path  # the module that runs the claim
    commands: tuple[str, str, str]


# ------------------------------------------------------------------------------------------------ the model ---


def model_config(model: str) -> dict:
    """The config.json of `model`: "embedded" (the cached build's, else the recipe it is built from: nothing is
    trained here) or a local save_pretrained folder."""
    if model == "embedded":
        from pytest_ladder.models.embedded import RECIPE, embedded_model_dir

        built = embedded_model_dir() / "config.json"
        return json.loads(built.read_text()) if built.is_file() else RECIPE.olmoe_config()
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        raise NewClaimError(f"--model {model}: no config.json there. Give 'embedded' or a local folder written by "
                            "save_pretrained")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise NewClaimError(f"--model {model}: {config} is not readable JSON ({error})") from None


def layer_specs(n_layers: int) -> list[str]:
    """Relative layer specs "k/L" for the first, an early (the seeds' 3/16), the middle and the last layer of an
    `n_layers` model, without repeats: [0/16, 3/16, 8/16, 15/16] for 16 layers, [0/8, 2/8, 4/8, 7/8] for 8.
    rung_fixtures.resolve_layer turns "k/L" back into layer k on this model and the same depth on any other."""
    if n_layers < 1:
        raise NewClaimError(f"the model has {n_layers} layers: a claim needs at least one")
    early = math.floor(EARLY_LAYER[0] * n_layers / EARLY_LAYER[1] + 0.5)
    layers = sorted({0, early, n_layers // 2, n_layers - 1})
    return [f"{layer}/{n_layers}" for layer in layers]


def cells_for(n_layers: int) -> tuple[list[dict], dict]:
    """Every probed layer × task as cells, and the hardest: the early layer on text (where most seed claims died)."""
    specs = layer_specs(n_layers)
    cells = [{"layer": spec, "task": task} for spec in specs for task in TASKS]
    early = specs[1] if len(specs) > 1 else specs[0]
    return cells, {"layer": early, "task": HARDEST_TASK}


# -------------------------------------------------------------------------------------------- the contents ---

FIELD_NOTES = {
    "rung": "the rung module that runs this claim: rungs/test_<rung>.py binds every prereg naming it",
    "claim": "what the method does and what it claims, as one sentence a measurement can contradict",
    "metric": "the measured quantity and its formula: what every gate value and the τ floor are numbers of",
    "data_points": "N held-out evaluation points (tokens or sequences) each measurement uses",
    "random_seeds": "B random baselines for the τ floor: a count (seeds derived from the seal, so nobody picks "
                    "them after seeing results) or an explicit list",
    "decision_threshold": "the τ rule a vs_tau gate must also meet: the method must beat the same storage spent on "
                          "random choices; names value (alias error), tau, margin",
    "tau_margin": "the margin in the τ rule, 0 <= margin < 1: how much better than random counts as better",
    "model": "the model the claim is about: 'embedded' (the tiny OLMoE built on first use) or a save_pretrained "
             "folder; --ladder-model on the command line runs it on another (a new experiment)",
    "tasks": "the task corpora measured: code, math, text (or one given with --ladder-corpus)",
    "cells": "the units of evaluation: each probed layer ('k/L' = the same relative depth on any model) × task",
    "hardest_cell": "the cell most likely to kill the claim, run first so `pytest -x` stops at the first kill; "
                    "the seeds' claims died most often at layer 3/16 on text",
    "prefilters": "analytical gates (no forward pass, selected by -m analytical), e.g. bytes: the method must "
                  "store fewer bytes than the dense weights; {} for none",
    "gates": "name -> the locked rule value <op> threshold (op one of <, <=, >, >=); vs_tau: also beat the τ floor "
             "by the margin. The rung module declares the same names with ladder.gate(name)",
    "traps": "name -> the declared outcome over `observed` and the trap's references; a trap tests the pipeline, "
             "never the claim. A trap that fires wrong makes the run INVALID",
    "requires": "rungs (folders beside this one) whose claims must stand before this one means anything",
    "params": "the rung's free parameters (ranks, bits, fractions of a model dimension): read by the rung module "
              "as prereg.params",
    "theorems": "Lean theorems behind an analytical kill (lean/): [] for none",
    "label": "a human status label shown on the scoreboard (null for none)",
    "notes": "what is known before the run: earlier numbers, why these thresholds (null for none)",
    "field_notes": "these explanations: kept in the prereg, ignored by the run",
    "seal": "written by `ladder seal`: SHA-256 of the content; any later change breaks it",
}


def own_prereg(name: str, model: str, n_layers: int) -> dict:
    """The unsealed prereg of a claim with a module of its own: every field present, each explained."""
    cells, hardest = cells_for(n_layers)
    content = {
        "rung": name,
        "claim": f"{name}: every expert's up-projection stored as INT8 with one scale per row (the skeleton's "
                 "example method: replace it with yours) stays within relative error 0.1 of the dense weights on "
                 "every probed layer",
        "metric": "relative Frobenius error ‖W − W′‖_F / ‖W‖_F of a layer's stacked expert up-projections "
                  "(W′: the method's reconstruction), per layer × task cell",
        "data_points": 1000,
        "random_seeds": 10,
        "decision_threshold": "value < tau * (1 - margin)",
        "tau_margin": 0.1,
        "model": model,
        "tasks": list(TASKS),
        "cells": cells,
        "hardest_cell": hardest,
        "prefilters": {},
        "gates": {
            "weight_error": {"op": "<=", "threshold": 0.1, "vs_tau": False,
                             "note": "test_weight_error in the rung module: the method's relative error per cell"},
        },
        "traps": {
            "trivial_pass": {"expect": "observed == 0",
                             "note": "the identity through the same measurement must give exactly 0"},
        },
        "requires": [],
        "params": {},
        "theorems": [],
        "label": None,
        "notes": None,
    }
    return {**content, "field_notes": dict(FIELD_NOTES)}


def variant_prereg(source: dict, source_name: str) -> dict:
    """A parameter variant of `source` (the prereg of rung `source_name`): its content without seal and label, bound
    to the source's module with "rung", every field explained; params listed in field_notes by their values."""
    module = source.get("rung", source_name)
    content = {"rung": module}
    content.update({key: value for key, value in source.items()
                    if key not in ("rung", SEAL_FIELD, "label", "field_notes")})
    notes = {key: FIELD_NOTES[key] for key in content if key in FIELD_NOTES}
    notes["rung"] = (f"the rung module that runs this claim: rungs/test_{module}.py, {source_name}'s code with this "
                     "prereg's values")
    notes["claim"] = f"copied from {source_name}: say what this variant changes (e.g. the rank) and what it claims"
    if content.get("params"):
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in content["params"].items())
        notes["params"] = f"{source_name}'s values ({shown}): change the ones this variant is about"
    notes["field_notes"] = FIELD_NOTES["field_notes"]
    notes["seal"] = FIELD_NOTES["seal"]
    return {**content, "field_notes": notes}


SKELETON = '''"""{name} — replace with one line on what the method does to the model and what the claim is.

The gate measures the method (`compress`) on each cell; the trap puts the identity through the same measurement,
which must give exactly 0.
Fixtures: docs/fixtures.md. Heavy lifting belongs in a library module, not here.
"""

import pytest

from pytest_ladder import rung
from pytest_ladder.rung_fixtures import cell_layers

ladder = rung("{name}")


def compress(weight):
    """The method: the reconstruction W′ of the stacked expert weights `weight` (experts × rows × columns). The
    example is INT8 round-to-nearest with one max-abs scale per row: replace it with yours (and the claim with it)."""
    scale = (weight.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-30)
    return (weight / scale).round().clamp(-127, 127) * scale


def relative_error(weight, approx) -> float:
    """‖W − W′‖_F / ‖W‖_F in float64."""
    weight, approx = weight.double(), approx.double()
    return float((weight - approx).norm() / weight.norm())


@pytest.fixture
def layers(rung_cache, prereg, ladder_layers):
    """{{cell id: layer index}} of the prereg's cells on this model ("k/L" resolved against its depth)."""
    if "layers" not in rung_cache:
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
    return rung_cache["layers"]


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg, layers, ladder_weights):
    weight = ladder_weights.experts(layers[prereg.hardest_cell.id], "up")
    trap.check(relative_error(weight, weight.clone()))


@ladder.gate("weight_error")
def test_weight_error(cell, gate, layers, ladder_weights):
    layer = layers[cell.id]
    weight = ladder_weights.experts(layer, "up")
    gate.check(relative_error(weight, compress(weight)), layer=layer)
'''


def rung_module_text(name: str) -> str:
    """The rung module skeleton of a claim named `name` (declares the gates and traps of `own_prereg`)."""
    return SKELETON.format(name=name)


# ------------------------------------------------------------------------------------------------ writing ---


def check_name(name: str, what: str = "NAME") -> None:
    if not RUNG_NAME.fullmatch(name):
        raise NewClaimError(f"{what} {name!r} is not a rung name: lowercase letters, digits and _ only (it becomes "
                            "a folder name), e.g. g4_rank4x")


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def new_claim(name: str, *, prereg_dir: Path | str = "prereg", rungs_dir: Path | str = "rungs",
              source: str | None = None, model: str = "embedded") -> Written:
    """Write the new claim `name` (see the module doc); NewClaimError, writing nothing, for an invalid or taken
    name, an unknown source rung or an unreadable model."""
    prereg_dir, rungs_dir = Path(prereg_dir), Path(rungs_dir)
    check_name(name)
    folder = prereg_dir / name
    if folder.exists():
        raise NewClaimError(f"{_shown(folder)} exists: a claim is sealed once and never rewritten. Pick a new NAME")
    if source is None:
        module = rungs_dir / f"test_{name}.py"
        if module.exists():
            raise NewClaimError(f"{_shown(module)} exists: pick a new NAME, or make a variant of that rung with "
                                f"--from {name}")
        content = own_prereg(name, model, int(model_config(model)["num_hidden_layers"]))
        text = rung_module_text(name)
    else:
        check_name(source, "--from")
        source_file = prereg_dir / source / PREREG_NAME
        if not source_file.is_file():
            known = sorted(p.parent.name for p in prereg_dir.glob(f"*/{PREREG_NAME}"))
            raise NewClaimError(f"--from {source}: no {_shown(source_file)}. Known rungs: {', '.join(known) or 'none'}")
        try:
            content = variant_prereg(read_json_object(source_file, display=_shown(source_file)), source)
        except SealError as error:
            raise NewClaimError(str(error)) from None
        if model != "embedded":
            content["model"] = model
        module, text = rungs_dir / f"test_{content['rung']}.py", None
        if not module.is_file():
            raise NewClaimError(f"--from {source}: no rung module {_shown(module)} to run the variant")
    folder.mkdir(parents=True)
    prereg = folder / PREREG_NAME
    prereg.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if text is not None:
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(text, encoding="utf-8")
    edit = _shown(prereg) if text is None else f"{_shown(prereg)} {_shown(module)}"
    selected = _shown(module) if text is not None else f"{_shown(module)}::{name}"  # a variant: its own group
    run = f"pytest {selected} --ladder-prereg-dir {_shown(prereg_dir)}"
    return Written(prereg, module if text is not None else None, module,
                   (f"$EDITOR {edit}", f"ladder seal {_shown(prereg)}", run))


def main(argv: list[str]) -> int:
    """`ladder new NAME [--from RUNG] [--prereg-dir DIR] [--rungs-dir DIR] [--model embedded|PATH]`."""
    parser = argparse.ArgumentParser(
        prog="ladder new",
        description="Start a new claim: an unsealed prereg/NAME/tau.json with every field explained and, without "
                    "--from, a rung module skeleton rungs/test_NAME.py; then print the commands to run next.")
    parser.add_argument("name", metavar="NAME", help="the claim's name: lowercase letters, digits and _")
    parser.add_argument("--from", dest="source", metavar="RUNG",
                        help="a variant of RUNG: its prereg copied, bound to its rung module (no code copied)")
    parser.add_argument("--prereg-dir", default="prereg", metavar="DIR", help="folder of <rung>/tau.json "
                        "(default: prereg)")
    parser.add_argument("--rungs-dir", default="rungs", metavar="DIR", help="folder of the rung modules "
                        "(default: rungs)")
    parser.add_argument("--model", default="embedded", metavar="embedded|PATH",
                        help="the model whose depth lays out the cells, written as the prereg's model "
                             "(default: embedded)")
    parser.add_argument("--kind", choices=["expert-weights", "expert-outputs", "router"],
                        help="a claim about your own compressor, tested by the kind's generic rung module "
                             "(see docs/compressors.md; with --compressor-dir)")
    parser.add_argument("--compressor-dir", default="claims", metavar="DIR",
                        help="with --kind: where the skeleton compressor goes, importable from the current folder "
                             "(default: claims)")
    args = parser.parse_args(argv)
    if args.kind is not None:
        from pytest_ladder import new_claim_kinds

        if args.source is not None:
            print("ladder new: --kind and --from exclude each other: a variant reuses its rung's method",
                  file=sys.stderr)
            return 2
        return new_claim_kinds.main([args.name, "--kind", args.kind, "--prereg-dir", args.prereg_dir,
                                     "--compressor-dir", args.compressor_dir])
    try:
        written = new_claim(args.name, prereg_dir=args.prereg_dir, rungs_dir=args.rungs_dir, source=args.source,
                            model=args.model)
    except NewClaimError as error:
        print(f"ladder new: {error}", file=sys.stderr)
        return 2
    print(f"wrote {_shown(written.prereg)} (unsealed)")
    if written.module is not None:
        print(f"wrote {_shown(written.module)}")
    else:
        print(f"it runs through {_shown(written.rung_module)}")
    print("next:")
    for command in written.commands:
        print(f"  {command}")
    return 0
