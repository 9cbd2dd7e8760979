"""The compressor interface (pytest_ladder.compressors) and the generic expert-weights rung on planted tiny models.

- Loading by import path: each problem (module not found, attribute missing, factory raised, parameters that do not
  fit, a protocol method missing) is a PreregError naming the file, the field and the fix.
- ExpertWeightStudy with any compressor: the identity gives exactly 0 on every gate; INT4 with one scale per group on
  experts planted on that grid is exact (activation error, flips, ΔNLL all 0); the default harmful control (INT2 per
  row) is far off; the default τ baseline spends the method's bytes; chunks of experts give the one-pass W′.
- The real rung module rungs/test_expert_weights.py on a planted model: PASS on every gate with the examples' INT4
  compressor, and KILL with INT2 on a random model; a compressor that does not import ends the session as a usage error.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pytest_ladder.compressors import load_compressor
from pytest_ladder.prereg import PreregError, load_prereg
from pytest_ladder.probes import expert_weights as ew

from planted import (ROOT, generic_decision, loaded_model, planted_and_random_folders, run_generic_rung,
                     tiny_forward_model, tokenizer_for_tests)

EXAMPLE = ROOT / "prereg" / "int4_group64_experts" / "tau.json"
SHOWN = "prereg/int4_group64_experts/tau.json"


def prereg_with(tmp_path: Path, **params) -> object:
    data = json.loads(EXAMPLE.read_text())
    data["params"] = params
    path = tmp_path / "prereg" / "int4_group64_experts" / "tau.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return load_prereg(path, root=tmp_path)


@pytest.fixture
def user_module(tmp_path):
    """A user's compressor module beside the prereg folder: a good factory, one that raises, one missing storage."""
    (tmp_path / "my_methods").mkdir()
    (tmp_path / "my_methods" / "broken.py").write_text(
        "from pytest_ladder.probes.expert_weights import Identity\n\n"
        "def make(rank=4):\n    if rank > 8:\n        raise ValueError(f'rank {rank} > 8')\n    return Identity()\n\n"
        "def half():\n    class NoStorage:\n        def compress(self, layer, stacks, experts):\n"
        "            return stacks\n    return NoStorage()\n")
    yield tmp_path
    for name in [m for m in sys.modules if m == "my_methods" or m.startswith("my_methods.")]:
        del sys.modules[name]


@pytest.mark.parametrize(("params", "message"), [
    ({}, f"{SHOWN}: field 'params.compressor' must name the method as \"<module>:<factory>\", e.g. "
         "\"examples.int4_group64.compressor:make\" (got missing). Write the import path of the function that builds "
         f"the compressor and re-seal with: ladder seal {SHOWN}"),
    ({"compressor": "my_methods.nowhere:make"},
     f"{SHOWN}: field 'params.compressor' names the module 'my_methods.nowhere', which cannot be imported (No module "
     "named 'my_methods.nowhere'). Fix the import path (a module importable from the rootdir {root} or an installed "
     f"package; a folder needs no __init__.py) and re-seal with: ladder seal {SHOWN}"),
    ({"compressor": "my_methods.broken:build"},
     f"{SHOWN}: field 'params.compressor' names 'build' in my_methods.broken ({{root}}/my_methods/broken.py), which "
     f"does not exist; the module defines: half, make. Fix the name after ':' and re-seal with: ladder seal {SHOWN}"),
    ({"compressor": "my_methods.broken:make", "compressor_params": {"rank": 16}},
     f"{SHOWN}: my_methods.broken:make(**{{\"rank\": 16}}) (fields 'params.compressor', 'params.compressor_params') "
     f"raised ValueError: rank 16 > 8. Fix the parameters and re-seal with: ladder seal {SHOWN}, or fix the factory"),
    ({"compressor": "my_methods.broken:make", "compressor_params": {"ranks": 4}},
     f"{SHOWN}: field 'params.compressor_params' does not fit my_methods.broken:make(rank=4): got an unexpected "
     f"keyword argument 'ranks'. Fix the keyword arguments and re-seal with: ladder seal {SHOWN}"),
    ({"compressor": "my_methods.broken:half"},
     f"{SHOWN}: my_methods.broken:half (field 'params.compressor') returned a NoStorage, which lacks storage() of the "
     "expert_weights compressor protocol (pytest_ladder.compressors.ExpertWeightCompressor; docs/compressors.md). "
     "Add the method(s) to the compressor"),
], ids=["missing", "no-module", "no-attribute", "factory-raised", "bad-params", "no-storage"])
def test_each_loading_problem_names_file_field_and_fix(user_module, params, message):
    with pytest.raises(PreregError) as error:
        load_compressor(prereg_with(user_module, **params), root=user_module)
    assert str(error.value) == message.replace("{root}", str(user_module))


def test_a_good_factory_gets_its_params(user_module):
    found = load_compressor(prereg_with(user_module, compressor="examples.svd_rank.compressor:make",
                                        compressor_params={"rank": 5}), root=ROOT)
    assert type(found).__name__ == "TruncatedSVD" and found.rank == 5


# ---------------------------------------------------------------------------------------------- the study ----

GROUP = 32  # groups of 32 along the 64-wide rows of the tiny model


def plant_group_grid(model, seed: int = 0) -> None:
    """Every expert matrix set to s · codes with codes in −7..7 and both ±7 present in each group of GROUP, s = 2^-5:
    INT4 with one float16 scale per group stores it exactly (scale = 7s / 7)."""
    from pytest_ladder.models.adapters import adapter_for
    from pytest_ladder.models.weights import write_parameter

    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(seed)
    for layer in adapter.moe_layers():
        stacks = ew.layer_stacks(adapter, layer)
        for projection, w in stacks.items():
            codes = torch.randint(-7, 8, w.shape, generator=generator).double()
            codes[..., ::GROUP], codes[..., 1::GROUP] = 7.0, -7.0
            stacks[projection] = codes * 2.0 ** -5
        for (name, expert), value in ew.deploy_updates(adapter, {layer: stacks}).items():
            write_parameter(model, name, value, expert)


class Recording:
    """A per-expert compressor (INT4 per group) that records the expert ranges it is called with."""

    def __init__(self) -> None:
        from pytest_ladder.measure.quant import QuantSpec

        self.spec = QuantSpec(bits=4, granularity="group", group_size=GROUP)
        self.calls: list[range] = []

    def compress(self, layer, stacks, experts):
        from pytest_ladder.measure.quant import fake_quant

        self.calls.append(experts)
        return {p: fake_quant(w, self.spec) for p, w in stacks.items()}

    def storage(self, stacks):
        from pytest_ladder.measure.storage import combine

        return combine(self.spec.artifact(name, shape) for name, (_, shape) in stacks.items())


@pytest.fixture(scope="module")
def tiny():
    from pytest_ladder.models.corpora import load_corpora

    torch.set_num_threads(1)
    tokenizer = tokenizer_for_tests()
    return tokenizer, load_corpora()


def study_on(model, tokenizer, corpora, compressors, *, workspace=None):
    from pytest_ladder.probes.routes import RoutingStudy

    loaded = loaded_model(model, tokenizer)
    if workspace is not None:
        loaded = type(loaded)(loaded.model, loaded.tokenizer, loaded.adapter, loaded.identity,
                              replace(loaded.spec, gpu_workspace=workspace), loaded.path)
    return ew.ExpertWeightStudy(RoutingStudy(loaded, corpora, n_points=160), compressors=compressors)


def test_identity_is_exactly_zero_on_every_gate_and_a_planted_grid_is_exact(tiny):
    tokenizer, corpora = tiny
    model = tiny_forward_model(tokenizer)
    plant_group_grid(model)
    method = Recording()
    study = study_on(model, tokenizer, corpora, {ew.METHOD: method, ("harmful",): ew.RowQuant(2)})
    stacks = ew.expert_stacks({name: (p.dtype, tuple(p.shape)) for name, p in model.named_parameters()})
    outcome = study.trivial_pass(1, "text", stacks)
    assert outcome.observed == 0.0 and set(outcome.refs.values()) == {0.0}
    for layer in (0, 1):
        assert study.error(layer, "text").pooled == 0.0
        assert study.error(layer, "text", ("harmful",)).pooled > 0.3  # three levels per row cannot hold 15
    assert study.deploy("code") == (0.0, 0.0)
    assert method.calls == [range(0, 4)] * 4  # unbounded: every expert at once (errors of 2 layers, then deploy)


def test_default_random_control_spends_the_methods_bytes():
    stacks = {"layers.0.gate": (torch.float32, (4, 64, 128)), "layers.0.down": (torch.float32, (4, 128, 64))}
    found = ew.compressor_bytes(Recording(), stacks)
    # INT4 codes: half a byte per weight; one float16 scale per 32 weights: 1/16 byte; dense float32: 4 bytes
    assert found.compressed.nbytes == 2 * 4 * 64 * 128 * (0.5 + 2 / GROUP)
    assert found.delta == found.compressed.nbytes - 2 * 4 * 64 * 128 * 4
    baseline = ew.random_control(Recording(), 3, found.fraction)
    assert baseline == ew.RandomProjection(found.fraction, 3)
    assert [baseline.rank(128), baseline.rank(64)] == [18, 9]  # floor(0.140625 · in)
    assert ew.harmful_control(Recording()) == ew.RowQuant(2)
    w = torch.randn(4, 64, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = ew.RandomProjection(1.0, 3).compress(0, {"gate": w}, range(4))["gate"]
    torch.testing.assert_close(full, w, rtol=0, atol=1e-12)  # all of the bytes: the whole space, W′ = W


def test_chunks_of_experts_give_the_one_pass_result(tiny):
    tokenizer, corpora = tiny
    model = tiny_forward_model(tokenizer, seed=1)
    free = study_on(model, tokenizer, corpora, {ew.METHOD: Recording(), ("random", 5): ew.RandomProjection(0.3, 5)})
    method = Recording()
    tiny_budget = study_on(model, tokenizer, corpora, {ew.METHOD: method, ("random", 5): ew.RandomProjection(0.3, 5)},
                           workspace=64 * 1024)
    for key in (ew.METHOD, ("random", 5)):
        one, chunked = free.compress(1, key), tiny_budget.compress(1, key)
        assert all(torch.equal(chunked[p].cpu(), one[p].cpu()) for p in one)
    assert len(method.calls) > 1 and [e for r in method.calls for e in r] == [0, 1, 2, 3]
    assert tiny_budget.error(1, "text", ew.IDENTITY).pooled == 0.0


class Scribbler:
    """A compressor that writes into the stacks it is given (nothing forbids it): W′ = 2W, its input zeroed."""

    def __init__(self, per_expert: bool) -> None:
        self.per_expert = per_expert

    def compress(self, layer, stacks, experts):
        found = {p: 2 * w for p, w in stacks.items()}
        for w in stacks.values():
            w.zero_()
        return found


@pytest.mark.parametrize("per_expert", [True, False])
def test_bounded_stacks_are_views_of_the_live_weights_and_compressors_get_copies(tiny, per_expert):
    """Under a bounded workspace a layer resident on the workspace's device is read as views of its parameters (no
    copy to the CPU and back); a compressor, in chunks of experts or given the whole layer, works on copies, so one
    that writes into its input leaves the model as it was."""
    tokenizer, corpora = tiny
    model = tiny_forward_model(tokenizer, seed=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    study = study_on(model, tokenizer, corpora, {ew.METHOD: Scribbler(per_expert)}, workspace=64 * 1024)
    stacks = study.stacks(1)
    assert stacks["down"].data_ptr() == study.adapter.resident_experts(1, "down", "cpu").data_ptr()
    found = study.compress(1, ew.METHOD)
    assert all(torch.equal(found[p], 2 * stacks[p].to(torch.float64)) for p in ew.PROJECTIONS)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# ------------------------------------------------------------------------------------- the real rung module ----


def test_the_rung_passes_a_planted_grid_and_kills_a_random_model(tiny, tmp_path):
    tokenizer, _ = tiny
    example = json.loads(EXAMPLE.read_text())
    example["params"]["compressor_params"]["group_size"] = GROUP
    folders = planted_and_random_folders(tokenizer, tmp_path, plant_group_grid)
    done = run_generic_rung(tmp_path / "run-planted", "rungs/test_expert_weights.py", folders["planted"],
                            example, "int4_planted")
    record = generic_decision(tmp_path / "run-planted", "int4_planted", done)
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    values = {(g["name"], g["cell"]): g["value"] for g in record["gates"]}
    assert values.pop(("bytes", None)) == 4 * 3 * 4 * 64 * 64 * ((0.5 + 2 / GROUP) - 4)  # 4 layers, 3 types, E = 4
    assert set(values.values()) == {0.0}  # activation error, task conditioning, flips and ΔNLL: exactly 0
    assert all(g["tau"]["tau"] > 0 for g in record["gates"] if g["name"] == "activation_error")
    assert {t["name"]: t["fired_as_declared"] for t in record["traps"]} == {"trivial_pass": True,
                                                                            "harmful_control": True}
    example["params"]["compressor_params"]["bits"] = 2  # INT4 holds a random init within the gates; INT2 does not
    done = run_generic_rung(tmp_path / "run-random", "rungs/test_expert_weights.py", folders["random"],
                            example, "int2_random", "-x")
    killed = generic_decision(tmp_path / "run-random", "int2_random", done)
    assert killed["verdict"] == "KILL"
    assert (killed["killed_by"]["name"], killed["killed_by"]["cell"]) == ("activation_error", "layer:3/16-task:text")


def test_a_compressor_that_does_not_import_spends_nothing(tmp_path):
    example = json.loads(EXAMPLE.read_text())
    example["params"]["compressor"] = "examples.int4_group64.compresor:make"
    done = run_generic_rung(tmp_path, "rungs/test_expert_weights.py", ROOT / "no-model-needed", example, "typo")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("typo/tau.json: field 'params.compressor' names the module 'examples.int4_group64.compresor', which "
            "cannot be imported (No module named 'examples.int4_group64.compresor')") in done.stdout + done.stderr
    assert not (tmp_path / "archive").exists()


def test_a_storage_that_fails_on_the_models_shapes_spends_nothing(tmp_path, monkeypatch):
    """storage() is called on the session model's experts before any rung runs: an unknown storage kind (here a
    typo) is a usage error naming the prereg and the problem, and nothing is archived."""
    (tmp_path / "user_methods").mkdir()
    (tmp_path / "user_methods" / "prune.py").write_text(
        "from pytest_ladder.measure.storage import Artifact, TensorStorage\n"
        "from pytest_ladder.probes.expert_weights import Identity\n\n"
        "class Prune(Identity):\n"
        "    def storage(self, stacks):\n"
        "        return Artifact(tuple(TensorStorage(name + '.mask', shape, bits=1, kind='masks')\n"
        "                              for name, (dtype, shape) in stacks.items()))\n\n"
        "def make():\n    return Prune()\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    example = json.loads(EXAMPLE.read_text())
    example["params"] = {"compressor": "user_methods.prune:make", "compressor_params": {}}
    done = run_generic_rung(tmp_path / "run", "rungs/test_expert_weights.py", Path("embedded"), example, "masks_typo")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"masks_typo/tau\.json: the expert_weights compressor named in 'params\.compressor' \(Prune\) "
                     r"failed its storage\(\) on this model's shapes: ValueError: storage part 'layers\.0\.\w+\.mask': "
                     r"unknown kind 'masks'; use one of weight, codes", done.stdout + done.stderr)
    assert not (tmp_path / "run" / "archive").exists()


def test_routing_stacks_of_a_resident_layer_are_views_and_g4_reads_the_fused_gate_up(tiny):
    """The routing study reads a layer resident on its device as views of the live parameters, and G4's stacked
    input maps [gate; up] of such a layer are the fused gate_up_proj itself (a view, no concatenated copy), with the
    values of the copies read one expert at a time."""
    from pytest_ladder.probes.lowrank import LowRankStudy, stacked_inputs

    tokenizer, corpora = tiny
    model = tiny_forward_model(tokenizer, seed=3)
    routing = study_on(model, tokenizer, corpora, {}).routing
    stacks = routing.stacks(1)
    fused = routing.adapter.experts_module(1)
    assert stacks["gate"].untyped_storage().data_ptr() == fused.gate_up_proj.untyped_storage().data_ptr()
    stacked = LowRankStudy(routing, 4, ("code",), calibration_points=16).weights(1)
    assert stacked.data_ptr() == fused.gate_up_proj.data_ptr() and torch.equal(stacked, fused.gate_up_proj)
    experts = [routing.adapter.expert_weights(1, e) for e in range(routing.adapter.n_experts)]
    copies = {p: torch.stack([getattr(w, p) for w in experts]) for p in ("gate", "up", "down")}
    assert all(torch.equal(stacks[p], copies[p]) for p in copies)
    assert torch.equal(stacked, stacked_inputs(copies["gate"], copies["up"]))
