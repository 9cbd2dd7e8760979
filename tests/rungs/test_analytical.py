"""`pytest rungs/ -m analytical` (what CI runs): every rung collects, only the analytical prefilters run, and none of
them spends a forward pass — the model and capture fixtures are never set up and no torch module is ever called.

The run is a real pytest subprocess over the repository's rung modules and preregs (model field pointed at a tiny
random OLMoE checkpoint, re-sealed in a temporary folder), with a temporary archive and a plugin that makes any
`nn.Module.__call__` raise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from pytest_ladder.prereg import load_prereg
from pytest_ladder.seal import compute_seal

ROOT = Path(__file__).resolve().parents[2]
FORWARD_FIXTURES = {"ladder_model", "ladder_captures", "ladder_corpora"}
NO_FORWARD = '''
import torch


def pytest_configure(config):
    def refuse(module, *args, **kwargs):
        raise RuntimeError(f"forward pass of {type(module).__name__} during an analytical run")

    torch.nn.Module.__call__ = refuse
'''


def tiny_olmoe(folder: Path) -> Path:
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                         eos_token_id=1, pad_token_id=0, bos_token_id=None)
    OlmoeForCausalLM(config).save_pretrained(folder)
    return folder


def test_analytical_selection_runs_without_a_forward_pass(tmp_path):
    model = tiny_olmoe(tmp_path / "model")
    preregs = tmp_path / "prereg"
    for source in sorted((ROOT / "prereg").glob("*/tau.json")):
        data = json.loads(source.read_text())
        data["model"] = str(model)
        data["seal"] = compute_seal(data)
        (preregs / source.parent.name).mkdir(parents=True)
        (preregs / source.parent.name / "tau.json").write_text(json.dumps(data))
    (tmp_path / "no_forward.py").write_text(NO_FORWARD)
    archive = tmp_path / "archive"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "rungs/", "-m", "analytical", "-p", "no_forward", "-p", "no:cacheprovider",
         "--setup-show", "-rfE", "--ladder-prereg-dir", str(preregs), "--ladder-archive-dir", str(archive)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1), output[-4000:]  # 1: a prefilter killed its rung, which is a verdict
    assert not re.search(r"^ERROR |INTERNALERROR|forward pass of", output, re.MULTILINE), output[-4000:]
    set_up = set(re.findall(r"SETUP\s+[SPMCF]\s+(\w+)", output))
    assert not set_up & FORWARD_FIXTURES, sorted(set_up)
    with_prefilters = {p.parent.name for p in preregs.glob("*/tau.json") if load_prereg(p).prefilters}
    assert with_prefilters, "no rung declares an analytical prefilter"
    for rung in sorted(with_prefilters):
        runs = list((archive / rung).glob("*/decision.json")) + list((archive / rung).glob("*/run.json"))
        assert len(runs) == 1, f"{rung}: no archived run\n{output[-4000:]}"
        record = json.loads(runs[0].read_text())
        assert record["verdict"] in ("PREFILTER_PASS", "KILL"), (rung, record["verdict"], record["invalid_because"])
        assert {g["kind"] for g in record["gates"] if g["outcome"] != "not run"} == {"prefilter"}
