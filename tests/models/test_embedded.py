"""The embedded default model: one real build per CI run (in $LADDER_CACHE_DIR, or the default cache, so the rungs
reuse it), checked for learning and routing structure; determinism and the cache lock on a reduced recipe."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import torch

from pytest_ladder.models.embedded import (RECIPE, Recipe, build_embedded_model, embedded_model_dir,
                                           ensure_embedded_model, js_divergence_bits, main, model_key, read_report)
from pytest_ladder.models.loading import ModelSpec, load_model

SMALL = Recipe(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_experts=4,
               num_experts_per_tok=2, intermediate_size=16, seq_len=32, steps=3, rows_per_task=1, warmup=1,
               eval_documents=2, eval_tokens=64, threads=1)


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model, built once (or found in the cache)."""
    return ensure_embedded_model()


def test_the_embedded_model_learned_and_routes_by_task(embedded):
    report = read_report(embedded)
    assert report.recipe == json.loads(json.dumps(RECIPE.record())) and report.key == model_key()  # as stored
    assert report.n_params > 5_000_000
    for task in RECIPE.tasks:  # held-out NLL clearly below a unigram model fit on the calibration split
        nll = report.heldout_nll[task]
        assert nll["nats_per_token"] < nll["unigram_nats_per_token"] - 0.5, task
        assert nll["documents"] == RECIPE.eval_documents and nll["tokens"] > 3000
    js = report.expert_usage_js_bits
    assert set(js) == {"code|math", "code|text", "math|text"}
    assert all(len(v) == RECIPE.num_hidden_layers for v in js.values())
    # routing shows task structure: code and text use different experts in every layer
    assert min(js["code|text"]) > 0.05 and sum(js["code|text"]) / len(js["code|text"]) > 0.1
    for task in RECIPE.tasks:
        usage = torch.tensor(report.expert_usage[task])
        assert usage.shape == (RECIPE.num_hidden_layers, RECIPE.num_experts)
        torch.testing.assert_close(usage.sum(dim=1), torch.ones(RECIPE.num_hidden_layers, dtype=usage.dtype))


def test_the_embedded_model_loads_as_the_default(embedded):
    loaded = load_model(ModelSpec())
    assert loaded.path == embedded
    identity = loaded.identity
    assert identity["name"] == "embedded" and identity["architecture"] == "OLMoE"
    assert identity["config"]["num_hidden_layers"] == RECIPE.num_hidden_layers >= 8
    assert identity["config"]["num_experts"] == RECIPE.num_experts
    assert identity["config"]["num_experts_per_tok"] == RECIPE.num_experts_per_tok
    assert loaded.max_length == RECIPE.seq_len and loaded.prefix_token_id == 0
    assert loaded.tokenizer.pad_token_id == 1


def test_cli_path_and_cached_build(embedded, capsys):
    assert main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(embedded)
    assert main(["build"]) == 0  # cached: reports the earlier build, trains nothing
    out = capsys.readouterr().out
    assert "cached" in out and "expert-usage Jensen-Shannon divergence" in out and str(embedded) in out


def weights_digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_the_build_is_deterministic(tmp_path):
    first = build_embedded_model(tmp_path / "a", SMALL, seed=3, log=lambda line: None)
    second = build_embedded_model(tmp_path / "b", SMALL, seed=3, log=lambda line: None)
    other = build_embedded_model(tmp_path / "c", SMALL, seed=4, log=lambda line: None)
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b") != weights_digest(tmp_path / "c")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert first.heldout_nll == second.heldout_nll and first.expert_usage == second.expert_usage
    assert first.key != other.key


def test_concurrent_first_use_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tmp_path / "cache"))
    folder = embedded_model_dir(SMALL, seed=1)
    assert folder == tmp_path / "cache" / "models" / f"olmoe-tiny-{model_key(SMALL, 1)}"
    logs: list[str] = []
    results = []

    def use() -> None:
        results.append(ensure_embedded_model(seed=1, recipe=SMALL, log=logs.append))

    workers = [threading.Thread(target=use) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [folder, folder]
    assert sum(line.startswith("embedded OLMoE") for line in logs) == 1  # one build, one report
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]
    digest = weights_digest(folder)
    assert ensure_embedded_model(seed=1, recipe=SMALL, force=True, log=logs.append) == folder
    assert weights_digest(folder) == digest  # rebuilt, same weights


def test_js_divergence_bits():
    assert js_divergence_bits(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == 0.0
    assert js_divergence_bits(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])) == 1.0
    assert js_divergence_bits(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(0.3112781244591328)
