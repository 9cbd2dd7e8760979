"""The generic router rung (rungs/test_router.py, probes.routers) on planted tiny models.

- RouterStudy with any router compressor: the identity gives exactly 0 on every gate; INT4 with one scale per row on
  routers planted on that grid is exact (flips and ΔNLL 0); the default harmful control (a rank-one router) flips
  most routes; the default τ baseline spends the method's bytes.
- The real rung module on a planted model: PASS with the example's INT4-rows compressor, every value exact; KILL with
  INT2 rows on a random model; a compressor without the router protocol ends the session as a usage error.
"""

from __future__ import annotations

import json

import pytest
import torch

from pytest_ladder.compressors import HARMFUL
from pytest_ladder.probes import routers as rt

from planted import (ROOT, generic_decision, loaded_model, planted_and_random_folders, run_generic_rung,
                     tiny_forward_model, tokenizer_for_tests)

EXAMPLE = ROOT / "prereg" / "router_int4_rows" / "tau.json"


def plant_router_grid(model, seed: int = 0) -> None:
    """Every router row set to 2^-3 · codes with codes in −7..7 and ±7 present in each row: INT4 with one float16
    scale per row stores it exactly."""
    from pytest_ladder.models.adapters import adapter_for
    from pytest_ladder.models.weights import write_parameter

    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(seed)
    for layer in adapter.moe_layers():
        weight = adapter.router_weight(layer)
        codes = torch.randint(-7, 8, weight.shape, generator=generator).to(weight.dtype)
        codes[:, 0], codes[:, 1] = 7.0, -7.0
        write_parameter(model, adapter._param(adapter.router_module(layer), "weight"), codes * 2.0 ** -3)


@pytest.fixture(scope="module")
def tiny():
    from pytest_ladder.models.corpora import load_corpora

    torch.set_num_threads(1)
    return tokenizer_for_tests(), load_corpora()


def int4_rows(bits: int = 4):
    from examples.router_int4.compressor import make

    return make(bits=bits)


def test_identity_is_exactly_zero_and_a_planted_grid_is_exact(tiny):
    from pytest_ladder.probes.routes import RoutingStudy

    tokenizer, corpora = tiny
    model = tiny_forward_model(tokenizer)
    plant_router_grid(model)
    study = rt.RouterStudy(RoutingStudy(loaded_model(model, tokenizer), corpora, n_points=160),
                           compressors={rt.METHOD: int4_rows(), HARMFUL: rt.RandomRankOneRouter()})
    routers = rt.router_stacks({name: (p.dtype, tuple(p.shape)) for name, p in model.named_parameters()})
    outcome = study.trivial_pass(1, "text", routers)
    assert outcome.observed == 0.0 and set(outcome.refs.values()) == {0.0} and outcome.fired_as_declared
    for layer in (0, 1):
        assert study.flip_rate(layer, "text") == 0.0
        assert study.flip_rate(layer, "text", HARMFUL) > 0.3
    assert study.deploy("code") == (0.0, 0.0)
    assert study.deploy("code", HARMFUL)[0] > 0.3


def test_default_controls_spend_the_methods_bytes():
    routers = {"layers.0.router": (torch.float32, (16, 128)), "layers.1.router": (torch.float32, (16, 128))}
    found = rt.router_bytes(int4_rows(), routers)
    # INT4 codes: half a byte per weight; one float16 scale per row of 128; dense float32: 4 bytes
    assert found.compressed.nbytes == 2 * 16 * (128 * 0.5 + 2) and found.dense.nbytes == 2 * 16 * 128 * 4
    assert found.delta == found.compressed.nbytes - found.dense.nbytes
    baseline = rt.random_control(int4_rows(), 3, found.fraction)
    assert baseline == rt.RandomProjectionRouter(found.fraction, 3) and baseline.rank(128) == 16  # floor(0.1289 · 128)
    assert rt.router_bytes(baseline, routers).compressed.nbytes == 2 * 16 * 16 * 4
    assert rt.harmful_control(int4_rows()) == rt.RandomRankOneRouter()
    w = torch.randn(16, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rt.RandomProjectionRouter(1.0, 3).compress(0, w), w, rtol=0, atol=1e-12)


def test_the_rung_passes_a_planted_grid_and_kills_int2_on_a_random_model(tiny, tmp_path):
    tokenizer, _ = tiny
    example = json.loads(EXAMPLE.read_text())
    folders = planted_and_random_folders(tokenizer, tmp_path, plant_router_grid)
    done = run_generic_rung(tmp_path / "run-planted", "rungs/test_router.py", folders["planted"],
                            example, "router_planted")
    record = generic_decision(tmp_path / "run-planted", "router_planted", done)
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    values = {(g["name"], g["cell"]): g["value"] for g in record["gates"]}
    assert values.pop(("bytes", None)) == 4 * 4 * (64 * 0.5 + 2 - 64 * 4)  # 4 layers of (4 experts, 64) float32
    assert set(values.values()) == {0.0}  # flips in every cell and ΔNLL: exactly 0
    assert all(g["tau"]["tau"] > 0 for g in record["gates"] if g["name"] == "route_flip_rate")
    assert {t["name"]: t["fired_as_declared"] for t in record["traps"]} == {"trivial_pass": True,
                                                                            "harmful_control": True}
    example["params"]["compressor_params"]["bits"] = 2
    done = run_generic_rung(tmp_path / "run-random", "rungs/test_router.py", folders["random"],
                            example, "router_int2", "-x")
    killed = generic_decision(tmp_path / "run-random", "router_int2", done)
    assert killed["verdict"] == "KILL" and killed["killed_by"]["name"] == "route_flip_rate"


def test_an_expert_weights_compressor_is_not_a_router_compressor(tmp_path):
    example = json.loads(EXAMPLE.read_text())
    example["params"] = {"compressor": "examples.int4_group64.compressor:make", "compressor_params": {}}
    done = run_generic_rung(tmp_path, "rungs/test_router.py", ROOT / "no-model-needed", example, "wrong_kind")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("wrong_kind/tau.json: examples.int4_group64.compressor:make (field 'params.compressor') returned a "
            "GroupQuant, whose compress(layer, stacks, experts) cannot be called as compress(layer, router) of the "
            "router compressor protocol") in done.stdout + done.stderr
    assert not (tmp_path / "archive").exists()


def test_ladder_new_kind_router_writes_a_claim_that_seals_and_loads(tmp_path, monkeypatch):
    from pytest_ladder.cli import main as ladder
    from pytest_ladder.compressors import load_compressor
    from pytest_ladder.prereg import load_prereg

    monkeypatch.chdir(tmp_path)
    assert ladder(["new", "my_router", "--kind", "router"]) == 0
    prereg = tmp_path / "prereg" / "my_router" / "tau.json"
    assert (tmp_path / "claims" / "my_router" / "compressor.py").is_file()
    data = json.loads(prereg.read_text())
    assert data["rung"] == "router" and data["params"]["compressor"] == "claims.my_router.compressor:make"
    assert set(data["gates"]) == {"route_flip_rate", "delta_nll"} and set(data["traps"]) == {"trivial_pass",
                                                                                             "harmful_control"}
    assert ladder(["seal", str(prereg)]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    found = load_compressor(load_prereg(prereg, root=tmp_path), "router", root=tmp_path)
    router = torch.randn(16, 128, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    assert found.compress(0, router).shape == router.shape
    assert rt.router_bytes(found, {"layers.0.router": (torch.float32, (16, 128))}).delta == 16 * (128 + 2 - 128 * 4)
    assert ladder(["new", "my_router", "--kind", "router"]) == 2  # never overwritten
