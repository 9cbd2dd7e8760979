"""A toy rung for real pytest sessions: rank-r SVD truncation of planted-rank matrices (numpy, milliseconds).

Cells are layers whose weight has a known true rank; the claim "rank 4 suffices" passes on rank-2 layers and is
killed with a known error on the rank-8 hardest cell.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from pytest_ladder.seal import compute_seal

TOY_PREREG = {
    "claim": "rank-4 truncation reproduces every toy layer",
    "metric": "relative Frobenius error of rank-r SVD truncation",
    "data_points": 32,
    "random_seeds": 3,
    "decision_threshold": "value < tau * (1 - margin)",
    "tau_margin": 0.1,
    "model": "toy-planted-rank",
    "tasks": ["text"],
    "cells": [
        {"layer": 0, "true_rank": 2},
        {"layer": 1, "true_rank": 2},
        {"layer": 3, "true_rank": 8},
    ],
    "hardest_cell": "layer=3-true_rank=8",
    "prefilters": {"bytes": {"op": "<", "threshold": 0}},
    "gates": {"relative_error": {"op": "<=", "threshold": 0.05, "vs_tau": True}},
    "traps": {"trivial_pass": "observed == 0", "random_basis": "observed > method"},
    "params": {"rank": 4, "size": 32},
}

TOY_RUNG = '''
import numpy as np
import pytest
from pytest_ladder import rung

ladder = rung("{name}")


def weight(cell, size):
    rng = np.random.default_rng(int(cell.params["layer"]))
    rank = int(cell.params["true_rank"])
    return rng.standard_normal((size, rank)) @ rng.standard_normal((rank, size))


def truncate(w, r):
    u, s, vt = np.linalg.svd(w)
    return (u[:, :r] * s[:r]) @ vt[:r]


def random_projection(w, r, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((w.shape[1], r)))
    return w @ q @ q.T


def rel(w, w_hat):
    return float(np.linalg.norm(w - w_hat) / np.linalg.norm(w))


@ladder.trap("trivial_pass")
def test_trivial_pass(trap, prereg):
    w = weight(prereg.cells[0], prereg.params["size"])
    trap.check(rel(w, w.copy()))


@ladder.prefilter("bytes")
def test_bytes(gate, prereg):
    n, r = prereg.params["size"], prereg.params["rank"]
    gate.check(2 * n * r * 4 - n * n * 4)


@ladder.gate("relative_error")
def test_relative_error(cell, gate, prereg, ladder_seeds):
    {hook}
    w = weight(cell, prereg.params["size"])
    r = prereg.params["rank"]
    baselines = [rel(w, random_projection(w, r, s)) for s in ladder_seeds]
    gate.check(rel(w, truncate(w, r)), tau={{"tau": min(baselines), "values": baselines}})


@ladder.trap("random_basis")
def test_random_basis(trap, prereg, ladder_seeds):
    w = weight(prereg.hardest_cell, prereg.params["size"])
    r = prereg.params["rank"]
    trap.check(min(rel(w, random_projection(w, r, s)) for s in ladder_seeds), method=rel(w, truncate(w, r)))
'''


class ToyLadder:
    """Writes sealed toy preregs and rung modules into a pytester folder and reads its archive."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.root = Path(pytester.path)
        (self.root / "pytest.ini").write_text(
            "[pytest]\nladder_prereg_dir = prereg\nladder_archive_dir = archive\n"
            "addopts = -p no:hypothesispytest -p no:benchmark\n"  # keep each inner session light
        )

    def prereg(self, name: str = "toy", seal: bool = True, **changes) -> Path:
        data = copy.deepcopy(TOY_PREREG)
        data.update(changes)
        if seal:
            data["seal"] = compute_seal(data)
        path = self.root / "prereg" / name / "tau.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def module(self, name: str = "toy", hook: str = "pass") -> Path:
        path = self.root / f"test_{name}.py"
        path.write_text(TOY_RUNG.format(name=name, hook=hook))
        return path

    def rung(self, name: str = "toy", hook: str = "pass", **changes) -> None:
        self.prereg(name, **changes)
        self.module(name, hook)

    def runs(self, name: str = "toy") -> list[Path]:
        folder = self.root / "archive" / name
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.exists() else []

    def record(self, run: Path) -> dict:
        for file in ("decision.json", "run.json"):
            if (run / file).exists():
                return json.loads((run / file).read_text())
        raise AssertionError(f"{run} holds neither decision.json nor run.json: {sorted(p.name for p in run.iterdir())}")


@pytest.fixture
def toy(pytester: pytest.Pytester) -> ToyLadder:
    return ToyLadder(pytester)


_MODEL_CACHE = str(Path(os.environ.get("LADDER_CACHE_DIR") or Path.home() / ".cache" / "pytest-ladder").expanduser())


@pytest.fixture(autouse=True)
def _shared_model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester points HOME at a temporary folder; inner sessions keep using the embedded model built once."""
    monkeypatch.setenv("LADDER_CACHE_DIR", _MODEL_CACHE)
