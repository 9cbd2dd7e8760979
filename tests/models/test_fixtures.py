"""The pytest layer of the model and corpora: options with clear errors, session fixtures that record the model and
data identity for decision.json, the automatic preflight of an offloaded model (real pytest sessions)."""

from __future__ import annotations

import hashlib
import json

import pytest

PLUGIN = ("-p", "pytest_ladder.fixtures")


@pytest.mark.parametrize("option, message", [
    (("--ladder-max-memory", "cuda:0=8XB"), "'8XB' is not a size; write e.g. 8GiB"),
    (("--ladder-device", "gpu"), "expected cpu, cuda or cuda:N"),
    (("--ladder-dtype", "int4"), "expected one of auto, float32, bfloat16, float16"),
    (("--ladder-corpus", "text"), "expected TASK=PATH, e.g. --ladder-corpus text=wiki.jsonl"),
    (("--ladder-corpus", "text=/no/such/file.jsonl"), "/no/such/file.jsonl is not a file"),
])
def test_bad_options_are_usage_errors(pytester, option, message):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*PLUGIN, *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_fixtures_load_once_offload_preflight_and_record_identity(pytester, tiny_folder, tmp_path):
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Paragraph {i} about ladders."}) for i in range(40)))
    sha = hashlib.sha256(corpus.read_bytes()).hexdigest()
    pytester.makepyfile(f"""
        from pytest_ladder.rung import run_context

        SEEN = []

        def test_model_and_data(ladder_model, ladder_corpora, request):
            SEEN.append((ladder_model, ladder_corpora))
            context = run_context(request.config)
            model, data = context["model"], context["data"]
            assert model is ladder_model.identity and model["preflight"]["storage"] == "offload:disk"
            assert model["device_map"]["disk"] >= 1 and model["config"]["num_hidden_layers"] == 4
            assert data["corpora"]["text"]["sources"][0]["sha256"] == "{sha}"
            assert sorted(ladder_corpora) == ["code", "math", "text"]
            assert ladder_corpora["text"].identity["n_documents"] == 40

        def test_one_load_per_session(ladder_model, ladder_corpora):
            assert SEEN[0][0] is ladder_model and SEEN[0][1] is ladder_corpora
    """)
    result = pytester.runpytest(*PLUGIN, "--ladder-model", str(tiny_folder), "--ladder-max-memory", "cpu=120KiB",
                                "--ladder-offload-dir", str(tmp_path / "offload"), "--ladder-corpus",
                                f"text={corpus}", "--ladder-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_forced_preflight_in_memory(pytester, tiny_folder):
    pytester.makepyfile("""
        def test_preflight(ladder_model):
            assert ladder_model.identity["preflight"]["storage"] == "memory"
            assert ladder_model.identity["preflight"]["layer"] == 3
    """)
    result = pytester.runpytest(*PLUGIN, "--ladder-model", str(tiny_folder), "--ladder-preflight",
                                "--ladder-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_missing_model_is_a_usage_error_with_the_fix(pytester):
    pytester.makepyfile("def test_uses_model(ladder_model): pass")
    result = pytester.runpytest(*PLUGIN, "--ladder-model", "/nonexistent/folder", "--ladder-device", "cpu",
                                "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --ladder-model '/nonexistent/folder': no such folder (/nonexistent/folder)" in "\n".join(
        result.outlines + result.errlines)
