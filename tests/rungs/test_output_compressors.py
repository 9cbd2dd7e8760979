"""The generic expert-outputs rung (rungs/test_expert_outputs.py, probes.output_compressors) on planted tiny models.

- OutputCompressorStudy with any output compressor: the identity gives exactly 0 on every gate; INT4 per channel on
  outputs planted on a per-channel INT4 grid (tests/rungs/test_planted_g10.py's adapter) is exact (output error and
  ΔNLL 0); the default harmful control (a rank-one projection) is far off; the default τ baseline spends the
  method's bytes.
- The real rung module on a random tiny model: PASS with the example's INT8 channels, KILL with INT2 at the output
  error; `ladder new --kind expert-outputs` writes a claim that seals and loads.
"""

from __future__ import annotations

import json

import torch

from pytest_ladder.compressors import HARMFUL
from pytest_ladder.probes import output_compressors as oc

from planted import (ROOT, generic_decision, loaded_model, run_generic_rung, tiny_forward_model,
                     tokenizer_for_tests)
from test_planted_g10 import Int4GridOutputs

EXAMPLE = ROOT / "prereg" / "outputs_int8_channels" / "tau.json"


def channel_quant(bits: int):
    from examples.outputs_int8.compressor import make

    return make(bits=bits)


def test_identity_is_exactly_zero_and_outputs_on_the_grid_are_exact():
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.probes.expert_outputs import OutputQuantStudy

    torch.set_num_threads(1)
    tokenizer = tokenizer_for_tests()
    model = tiny_forward_model(tokenizer)
    outputs = OutputQuantStudy(loaded_model(model, tokenizer, Int4GridOutputs(model)), load_corpora(), n_points=192,
                               calibration_tokens=1000)
    study = oc.OutputCompressorStudy(outputs, calibration_tasks=("code", "math", "text"), compressors={
        oc.METHOD: channel_quant(4), HARMFUL: oc.harmful_control(channel_quant(4))})
    outcome = study.trivial_pass(1, "text", 2, 64, torch.float32)
    assert outcome.observed == 0.0 and set(outcome.refs.values()) == {0.0} and outcome.fired_as_declared
    for layer in (0, 1):
        assert study.output_error(layer, "code") == 0.0
        assert study.output_error(layer, "code", HARMFUL) > 0.5
    assert study.delta_nll("math") == 0.0


def test_an_expert_routed_no_calibration_token_is_left_out_of_calibrate():
    import math

    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.probes.expert_outputs import OutputQuantStudy

    torch.set_num_threads(1)
    tokenizer = tokenizer_for_tests()
    model = tiny_forward_model(tokenizer)
    outputs = OutputQuantStudy(loaded_model(model, tokenizer), load_corpora(), n_points=64, calibration_tokens=2)
    captured = outputs.calibration_outputs("code")
    # two code tokens, top-2 of 4 experts: the capture lists an expert of layer 0 with no rows
    assert [e for e, y in captured[0].items() if y.shape[0] == 0] == [3]
    study = oc.OutputCompressorStudy(outputs, calibration_tasks=("code",), compressors={oc.METHOD: channel_quant(8)})
    for layer, found in captured.items():
        assert {e: y.shape for e, y in study._calibration(layer).items()} == {
            e: y.shape for e, y in found.items() if y.shape[0]}
    # the example's compressor calibrates (an unseen expert falls back to the layer's scales) and the model runs
    assert math.isfinite(study.delta_nll("math"))


def test_default_controls_spend_the_methods_bytes():
    found = oc.output_bytes(channel_quant(8), 2, 128, torch.float32)
    assert (found.compressed.nbytes, found.dense.nbytes, found.delta) == (256, 1024, -768)
    baseline = oc.random_control(channel_quant(8), 3, found.fraction)
    assert baseline == oc.RandomProjectionOutputs(0.25, 3) and baseline.rank(128) == 32
    assert oc.output_bytes(baseline, 2, 128, torch.float32).compressed.nbytes == 256  # the method's bytes
    harmful = oc.harmful_control(channel_quant(8))
    assert harmful.rank(128) == 1
    y = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(oc.RandomProjectionOutputs(1.0, 3).compress(0, 1, y, None), y, rtol=0, atol=1e-6)


def test_the_rung_passes_int8_and_kills_int2_on_a_random_model(tmp_path):
    tokenizer = tokenizer_for_tests()
    folder = tmp_path / "model"
    model = tiny_forward_model(tokenizer, layers=4, seed=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    example = json.loads(EXAMPLE.read_text())
    done = run_generic_rung(tmp_path / "int8", "rungs/test_expert_outputs.py", folder,
                            example, "outputs_int8", data_points=192)
    record = generic_decision(tmp_path / "int8", "outputs_int8", done)
    assert record["verdict"] == "PASS", (record["killed_by"], record["invalid_because"])
    values = {(g["name"], g["cell"]): g["value"] for g in record["gates"]}
    assert values.pop(("bytes", None)) == 2 * 64 * (1 - 4)  # k = 2 outputs of 64 float32 values: 1 byte each
    assert 0 < max(values.values()) < 0.05
    assert {t["name"]: t["fired_as_declared"] for t in record["traps"]} == {"trivial_pass": True,
                                                                            "harmful_control": True}
    example["params"]["compressor_params"]["bits"] = 2
    done = run_generic_rung(tmp_path / "int2", "rungs/test_expert_outputs.py", folder,
                            example, "outputs_int2", "-x", data_points=192)
    killed = generic_decision(tmp_path / "int2", "outputs_int2", done)
    assert killed["verdict"] == "KILL" and killed["killed_by"]["name"] == "output_error"


def test_ladder_new_kind_expert_outputs_writes_a_claim_that_seals_and_loads(tmp_path, monkeypatch):
    from pytest_ladder.cli import main as ladder
    from pytest_ladder.compressors import load_compressor
    from pytest_ladder.prereg import load_prereg

    monkeypatch.chdir(tmp_path)
    assert ladder(["new", "my_outputs", "--kind", "expert-outputs"]) == 0
    prereg = tmp_path / "prereg" / "my_outputs" / "tau.json"
    data = json.loads(prereg.read_text())
    assert data["rung"] == "expert_outputs" and data["params"]["compressor"] == "claims.my_outputs.compressor:make"
    assert ladder(["seal", str(prereg)]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    found = load_compressor(load_prereg(prereg, root=tmp_path), "expert_outputs", root=tmp_path)
    outputs = {0: torch.randn(7, 64, generator=torch.Generator().manual_seed(0))}
    state = found.calibrate(0, outputs)
    assert found.compress(0, 0, outputs[0], state).shape == (7, 64)
    assert oc.output_bytes(found, 2, 64, torch.float32).delta == 2 * 64 * (1 - 4)
