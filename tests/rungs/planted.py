"""Planted models for the rung tests: tiny OLMoE checkpoints whose weights make a claim true or false by
construction, and a helper that runs the real rung modules on them in a pytest subprocess.

A planted checkpoint is a real `save_pretrained` folder of OlmoeForCausalLM (safetensors, config, and for rungs that
run a forward pass a BPE tokenizer trained on the corpora), so the rung reads it exactly as it reads any model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def olmoe_config(*, layers: int, experts: int, hidden: int, intermediate: int, vocab: int, **tokens: int | None):
    """A tiny OLMoE config (4 heads, top-2); `tokens` sets bos/eos/pad ids."""
    from transformers import OlmoeConfig

    ids = {"eos_token_id": 1, "pad_token_id": 0, "bos_token_id": None, **tokens}
    return OlmoeConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=4, num_experts=experts, num_experts_per_tok=2,
                       max_position_embeddings=128, **ids)


def save_experts(folder: Path, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> Path:
    """save_pretrained of a tiny OLMoE whose experts are gate/up (L, E, I, H) and down (L, E, H, I), float32; the
    rest of the model is a seeded random init (weight-only rungs never read it)."""
    from transformers import OlmoeForCausalLM

    layers, experts, intermediate, hidden = gate.shape
    torch.manual_seed(0)
    model = OlmoeForCausalLM(olmoe_config(layers=layers, experts=experts, hidden=hidden, intermediate=intermediate,
                                          vocab=64))
    with torch.no_grad():
        for layer in range(layers):
            block = model.model.layers[layer].mlp.experts
            block.gate_up_proj.copy_(torch.cat([gate[layer], up[layer]], dim=1))
            block.down_proj.copy_(down[layer])
    model.save_pretrained(folder)
    return folder


def signed_permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random signed permutation matrix (n, n): orthogonal with entries in {−1, 0, 1}, exact in any dtype."""
    signs = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
    return torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=generator)] * signs


def planted_spectrum(batch: tuple[int, ...], sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """Matrices P diag(σ) Q (batch…, n, n) with P, Q random signed permutations: singular values exactly σ."""
    generator = torch.Generator().manual_seed(seed)
    n = sigma.numel()
    count = int(torch.tensor(batch).prod()) if batch else 1
    mats = [signed_permutation(n, generator) @ torch.diag(sigma.double()) @ signed_permutation(n, generator)
            for _ in range(count)]
    return torch.stack(mats).reshape(*batch, n, n)


def run_rungs(tmp: Path, model: Path, rungs: list[str], *extra: str, changes: dict | None = None,
              timeout: float = 900) -> dict[str, dict]:
    """Run the real rung modules on `model` in one pytest subprocess: the repository's preregs with `model` (and
    `changes`, e.g. data_points) pointed at the test's and re-sealed; returns each rung's archived decision."""
    from pytest_ladder.seal import compute_seal

    prereg_dir, archive = tmp / "prereg", tmp / "archive"
    for name in rungs:
        data = json.loads((ROOT / "prereg" / name / "tau.json").read_text())
        data.update(model=str(model), **(changes or {}))
        data["seal"] = compute_seal(data)
        (prereg_dir / name).mkdir(parents=True)
        (prereg_dir / name / "tau.json").write_text(json.dumps(data))
    command = [sys.executable, "-m", "pytest", *(f"rungs/test_{name}.py" for name in rungs), "-p", "no:cacheprovider",
               "-q", "--ladder-model", str(model), "--ladder-prereg-dir", str(prereg_dir),
               "--ladder-archive-dir", str(archive), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny matrices: one thread, no spin-waiting on a busy machine
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    records = {}
    for name in rungs:
        runs = sorted((archive / name).glob("*/decision.json"))
        assert len(runs) == 1, f"{name}: no decision archived\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
        records[name] = json.loads(runs[0].read_text())
    return records


def run_generic_rung(tmp: Path, module: str, model: Path, prereg: dict, name: str, *extra: str,
                     data_points: int = 160) -> subprocess.CompletedProcess:
    """A generic rung module (e.g. "rungs/test_router.py") on `model` with `prereg` (model and N pointed at the
    test's, sealed) as the only prereg bound to it, in a pytest subprocess from the repository root."""
    from pytest_ladder.seal import compute_seal

    data = {**prereg, "model": str(model), "data_points": data_points}
    data["seal"] = compute_seal(data)
    (tmp / "prereg" / name).mkdir(parents=True)
    (tmp / "prereg" / name / "tau.json").write_text(json.dumps(data))
    command = [sys.executable, "-m", "pytest", module, "-p", "no:cacheprovider", "-q", "--ladder-model", str(model),
               "--ladder-prereg-dir", str(tmp / "prereg"), "--ladder-archive-dir", str(tmp / "archive"), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def generic_decision(tmp: Path, name: str, done: subprocess.CompletedProcess) -> dict:
    """The one decision `run_generic_rung` archived for `name` (its output shown when there is none)."""
    runs = sorted((tmp / "archive" / name).glob("*/decision.json"))
    assert len(runs) == 1, f"no decision archived\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    return json.loads(runs[0].read_text())


def gate_values(record: dict) -> dict[tuple[str, str | None], float | None]:
    """{(gate name, cell): value} of every gate and prefilter of a decision."""
    return {(g["name"], g["cell"]): g["value"] for g in record["gates"]}


def tokenizer_for_tests():
    """A 384-token byte-level BPE trained on the first calibration documents of every task (seconds)."""
    from pytest_ladder.models.corpora import load_corpora
    from pytest_ladder.models.embedded import train_tokenizer

    corpora = load_corpora()
    return train_tokenizer([d.text for c in corpora.values() for d in c.calibration[:60]], 384, 128)


def save_input_rank_model(folder: Path, tokenizer, *, rank: int, hidden: int = 64, layers: int = 4) -> Path:
    """A tiny OLMoE (4 experts, top-2, I = 32) whose experts read only hidden channels 0..rank−1: every gate and up
    matrix is exactly rank `rank` in one shared input subspace (float32 zeros elsewhere); down scaled by 10 so that
    the experts matter to the NLL. Saved with `tokenizer`."""
    from transformers import OlmoeForCausalLM

    torch.manual_seed(0)
    config = olmoe_config(layers=layers, experts=4, hidden=hidden, intermediate=32, vocab=len(tokenizer),
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    model = OlmoeForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.gate_up_proj[..., rank:] = 0.0
            layer.mlp.experts.down_proj.mul_(10.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_forward_model(tokenizer, *, layers: int = 2, hidden: int = 64, seed: int = 0):
    """A randomly initialised tiny OLMoE (4 experts, top-2, I = H) for probe-level tests, in eval mode."""
    from transformers import OlmoeForCausalLM

    torch.manual_seed(seed)
    config = olmoe_config(layers=layers, experts=4, hidden=hidden, intermediate=hidden, vocab=len(tokenizer),
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    return OlmoeForCausalLM(config).eval()


def planted_and_random_folders(tokenizer, folder: Path, plant) -> dict[str, Path]:
    """{"planted": a 4-layer tiny OLMoE (seed 0) changed in place by `plant(model)`, "random": one left as drawn
    (seed 1)}, each saved with the tokenizer under `folder`: a generic rung's PASS and KILL models."""
    folders = {}
    for name, seed in (("planted", 0), ("random", 1)):
        model = tiny_forward_model(tokenizer, layers=4, seed=seed)
        if name == "planted":
            plant(model)
        folders[name] = folder / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def loaded_model(model, tokenizer, adapter=None):
    """models.loading.LoadedModel around an in-memory model (the probes' input), with the default ModelSpec."""
    from pytest_ladder.models.adapters import adapter_for
    from pytest_ladder.models.loading import LoadedModel, ModelSpec

    return LoadedModel(model, tokenizer, adapter or adapter_for(model), {}, ModelSpec())


def gate_spec(rung: str, gate: str):
    """The sealed prereg's GateSpec of `gate` (its locked op and threshold), read from the repository's prereg."""
    from pytest_ladder.prereg import load_prereg

    found = load_prereg(ROOT / "prereg" / rung / "tau.json")
    return {**found.prefilters, **found.gates}[gate]
