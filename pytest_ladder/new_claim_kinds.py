"""`ladder new NAME --kind expert-weights|expert-outputs|router`: a new claim about a compressor of one kind, ready
to edit, seal and run.

Writes an unsealed `<prereg dir>/NAME/tau.json` bound to the kind's generic rung module (`"rung": "expert_weights"`,
rungs/test_expert_weights.py; `"rung": "expert_outputs"`, rungs/test_expert_outputs.py; `"rung": "router"`,
rungs/test_router.py) whose `params.compressor` names a skeleton
compressor it writes beside it
(`<compressor dir>/NAME/compressor.py`, importable from the project root), then prints the three commands to run
next. Every field is present and says what it is for (gate and trap `note`s, the top-level `notes`). The standard
library only; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# --kind -> the generic rung module it binds
KINDS = {"expert-weights": "expert_weights", "expert-outputs": "expert_outputs", "router": "router"}
NAME = re.compile(r"[a-z0-9_]+")

SKELETON = '''"""{name}: what the method does to every routed expert's weights (the claim of {prereg}).

The rung (rungs/test_expert_weights.py) calls two methods (pytest_ladder.compressors.ExpertWeightCompressor):
- compress(layer, stacks, experts): W′ for one MoE layer's experts, stacks = {{"gate": (e, I, H), "up": (e, I, H),
  "down": (e, H, I)}} at their stored dtype, for the experts in `experts` (a range); return the same keys and shapes.
- storage(stacks): every byte the compressed experts store, as a pytest_ladder.measure.storage.Artifact, from
  stacks = {{"layers.L.<gate|up|down>": (dtype, (E, out, in))}}: gate 1 subtracts the dense experts' bytes.
Optional: random_control(seed) (the τ floor's baseline: the same bytes spent on random choices; default a random
projection of equal size) and harmful_control() (must fail the activation-error gate; default INT2 per row).

This skeleton is a placeholder to replace: symmetric INT8 with one float16 scale per output row.
"""

from __future__ import annotations

from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.measure.storage import combine


class Method:
    def __init__(self, bits: int) -> None:
        self.bits = bits

    def spec(self, in_features: int) -> QuantSpec:
        return QuantSpec(bits=self.bits, granularity="group", group_size=in_features, scale_dtype="float16")

    def compress(self, layer, stacks, experts):
        return {{name: fake_quant(w, self.spec(w.shape[-1])) for name, w in stacks.items()}}

    def storage(self, stacks):
        return combine(self.spec(shape[-1]).artifact(name, shape) for name, (dtype, shape) in stacks.items())


def make(bits: int = 8) -> Method:
    """Built once per run with params.compressor_params as keyword arguments."""
    return Method(bits)
'''


ROUTER_SKELETON = '''"""{name}: what the method does to every MoE layer's router (the claim of {prereg}).

The rung (rungs/test_router.py) calls two methods (pytest_ladder.compressors.RouterCompressor):
- compress(layer, router): W_r′ for one MoE layer's router (E, H) at its stored dtype; return the same shape.
- storage(routers): every byte the compressed routers store, as a pytest_ladder.measure.storage.Artifact, from
  routers = {{"layers.L.router": (dtype, (E, H))}}: gate 1 subtracts the dense routers' bytes.
Optional: random_control(seed) (the τ floor's baseline: the same bytes spent on random choices; default a random
projection of equal size) and harmful_control() (must fail the route-flip gate; default a rank-one router).

This skeleton is a placeholder to replace: symmetric INT8 with one float16 scale per router row.
"""

from __future__ import annotations

from pytest_ladder.measure.quant import QuantSpec, fake_quant
from pytest_ladder.measure.storage import combine


class Method:
    def __init__(self, bits: int) -> None:
        self.bits = bits

    def spec(self, hidden: int) -> QuantSpec:
        return QuantSpec(bits=self.bits, granularity="group", group_size=hidden, scale_dtype="float16")

    def compress(self, layer, router):
        return fake_quant(router, self.spec(router.shape[-1]))

    def storage(self, routers):
        return combine(self.spec(shape[-1]).artifact(name, shape) for name, (dtype, shape) in routers.items())


def make(bits: int = 8) -> Method:
    """Built once per run with params.compressor_params as keyword arguments."""
    return Method(bits)
'''


OUTPUTS_SKELETON = '''"""{name}: what the method does to every routed expert's output (the claim of {prereg}).

The rung (rungs/test_expert_outputs.py) calls three methods (pytest_ladder.compressors.ExpertOutputCompressor):
- calibrate(layer, outputs): the state compress needs, from the dense model's calibration outputs of one MoE layer,
  outputs = {{expert: (rows, H)}} (every task's calibration tokens).
- compress(layer, expert, outputs, state): y′ (rows, H) for one expert's routed outputs; return the same shape.
- storage(top_k, hidden, dtype): what one token's k outputs occupy, as a pytest_ladder.measure.storage.Artifact:
  gate 1 subtracts the dense (k, H) outputs at `dtype` (static scales are stored once, not per token).
Optional: random_control(seed) (the τ floor's baseline: the same bytes spent on random choices; default a random
projection of equal size) and harmful_control() (must fail the output-error gate; default a rank-one projection).

This skeleton is a placeholder to replace: symmetric INT8 with one static scale per (layer, expert, channel).
"""

from __future__ import annotations

import torch

from pytest_ladder.measure.quant import QuantSpec, calibrate, fake_quant
from pytest_ladder.measure.storage import Artifact, TensorStorage


class Method:
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.spec = QuantSpec(bits=bits, granularity="channel", axis=-1, scale_dtype="float32")

    def calibrate(self, layer, outputs):
        return {{"experts": {{e: calibrate(y, self.spec) for e, y in outputs.items()}},
                "layer": calibrate(torch.cat(list(outputs.values())), self.spec)}}

    def compress(self, layer, expert, outputs, state):
        return fake_quant(outputs, self.spec, params=state["experts"].get(expert, state["layer"]))

    def storage(self, top_k, hidden, dtype):
        return Artifact((TensorStorage("token.expert_outputs.codes", (top_k, hidden), bits=self.bits, kind="codes"),))


def make(bits: int = 8) -> Method:
    """Built once per run with params.compressor_params as keyword arguments."""
    return Method(bits)
'''


def _kind_prereg(rung: str, claim: str, metric: str, bytes_note: str, gates: dict, unchanged: str, harmful: str,
                 params: dict, notes: str) -> dict:
    """The fields every kind's template shares (N, B, the τ rule, model, tasks, relative cells, the two traps) around
    what differs: the claim, the metric, the gates and their notes."""
    cells = [{"layer": layer, "task": task} for layer in ("0/16", "3/16", "8/16", "15/16")
             for task in ("code", "math", "text")]
    return {
        "rung": rung,
        "claim": claim,
        "metric": metric,
        "data_points": 1000,
        "random_seeds": 10,
        "decision_threshold": "value < tau * (1 - margin)",
        "tau_margin": 0.1,
        "model": "embedded",
        "tasks": ["code", "math", "text"],
        "requires": [],
        "cells": cells,
        "hardest_cell": "layer:3/16-task:text",
        "prefilters": {"bytes": {"op": "<", "threshold": 0, "note": bytes_note}},
        "gates": gates,
        "traps": {
            "trivial_pass": {"expect": "observed == 0",
                             "note": f"{unchanged} through the whole pipeline: every gate exactly 0"},
            "harmful_control": {"expect": "observed > threshold",
                                "note": f"the declared-harmful control fails the {harmful} gate on the hardest cell"},
        },
        "params": params,
        "notes": notes,
    }


DELTA_NLL = {"op": "<=", "threshold": 0.05, "note": "gate 5: (NLL' - NLL) / NLL, full depth, worst task"}
BEATS_TAU = "must also beat the tau floor by tau_margin"
EDIT = ("thresholds, cells (layer 'a/b' is floor(a*n/b) of an n-layer model) and hardest_cell BEFORE sealing; after "
        "`ladder seal` the file is locked and gets one decision.")


def expert_outputs_prereg(name: str, compressor: str) -> dict:
    """The template prereg of an expert-outputs claim (unsealed): the per-token bytes prefilter, the output error per
    cell against the τ floor of random controls of the same bytes, ΔNLL with every layer's outputs compressed, the
    two traps."""
    return _kind_prereg(
        "expert_outputs",
        f"{name}: EDIT ME, e.g. \"<method> on every routed expert's output takes bytes off each token's routed "
        "outputs, keeps them within 5% and raises no task's NLL by more than 5%\"",
        "bytes (prefilter): one token's k compressed outputs as declared minus the dense (k, H) outputs. output_error "
        "per cell: ||y' - y|| / ||y|| pooled over the layer's experts on held-out routed outputs, against the tau "
        "floor (the best of B random controls storing the same bytes). delta_nll: every layer's outputs compressed, "
        "worst task.",
        "gate 1: per-token wire bytes < 0 (must save)",
        {"output_error": {"op": "<=", "threshold": 0.05, "vs_tau": True, "note": f"gate 2 per cell; {BEATS_TAU}"},
         "delta_nll": dict(DELTA_NLL)},
        "y' = y", "output-error",
        {"compressor": compressor, "compressor_params": {"bits": 8}, "calibration_tokens": 1000},
        "Written by `ladder new --kind expert-outputs`. Edit claim, params (compressor_params are the factory's "
        f"keyword arguments; calibration_tokens per task), {EDIT}")


def router_prereg(name: str, compressor: str) -> dict:
    """The template prereg of a router claim (unsealed): the bytes prefilter, route flips per cell against the τ
    floor of random controls of the same bytes, ΔNLL with every router replaced, the two traps."""
    return _kind_prereg(
        "router",
        f"{name}: EDIT ME, e.g. \"<method> on every MoE layer's router takes bytes off the routers, flips at most "
        "10% of routes and raises no task's NLL by more than 5%\"",
        "bytes (prefilter): the compressor's declared storage minus the dense routers at their stored dtype. "
        "route_flip_rate per cell: the share of held-out tokens whose top-k set changes under the compressed router "
        "(the dense model's router inputs), against the tau floor (the best of B random controls storing the same "
        "bytes). delta_nll: every router replaced, worst task.",
        "gate 1: global_delta_bytes < 0 (must save)",
        {"route_flip_rate": {"op": "<=", "threshold": 0.1, "vs_tau": True, "note": f"gate 3 per cell; {BEATS_TAU}"},
         "delta_nll": dict(DELTA_NLL)},
        "W_r' = W_r", "route-flip",
        {"compressor": compressor, "compressor_params": {"bits": 8}},
        f"Written by `ladder new --kind router`. Edit claim, params (compressor_params are the factory's keyword "
        f"arguments), {EDIT}")


def expert_weights_prereg(name: str, compressor: str) -> dict:
    """The template prereg of an expert-weights claim (unsealed): the five gates at the protocol's defaults, the τ
    floor against random controls of the same bytes, the two traps, relative layers that fit any depth."""
    return _kind_prereg(
        "expert_weights",
        f"{name}: EDIT ME, e.g. \"<method> on every routed expert takes bytes off the experts and passes all five "
        "gates\"",
        "bytes (prefilter): the compressor's declared storage minus the dense experts at their stored dtype. "
        "activation_error per cell: sqrt(sum tr(D G D') / sum tr(W G W')) over the layer's experts and weight types "
        "on held-out routed inputs, against the tau floor (the best of B random controls spending the same bytes). "
        "task_conditioning: worst task of activation_error. route_flip_rate and delta_nll: every layer's experts "
        "replaced, worst task.",
        "gate 1: global_delta_bytes < 0 (must save)",
        {"activation_error": {"op": "<=", "threshold": 0.1, "vs_tau": True, "note": f"gate 2 per cell; {BEATS_TAU}"},
         "task_conditioning": {"op": "<=", "threshold": 0.1, "note": "gate 4: the worst task's activation error"},
         "route_flip_rate": {"op": "<=", "threshold": 0.1, "note": "gate 3: full depth, worst task"},
         "delta_nll": dict(DELTA_NLL)},
        "W' = W", "activation-error",
        {"compressor": compressor, "compressor_params": {"bits": 8}},
        f"Written by `ladder new --kind expert-weights`. Edit claim, params (compressor_params are the factory's "
        f"keyword arguments), {EDIT}")


def write_kind_template(kind: str, name: str, prereg_dir: Path | str, *, compressor_dir: Path | str = "claims",
                        root: Path | str = ".") -> tuple[Path, Path]:
    """Write `<prereg_dir>/<name>/tau.json` (unsealed) and the skeleton `<compressor_dir>/<name>/compressor.py` it
    names by import path (relative to `root`); returns both paths. ValueError naming the problem and the fix."""
    if kind not in KINDS:
        raise ValueError(f"unknown --kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not NAME.fullmatch(name):
        raise ValueError(f"the claim name {name!r} becomes a folder name: use lowercase letters, digits and _ only")
    root = Path(root).resolve()
    prereg = Path(prereg_dir) / name / "tau.json"
    module = Path(compressor_dir) / name / "compressor.py"
    try:
        parts = module.resolve().relative_to(root).with_suffix("").parts
    except ValueError:
        raise ValueError(f"--compressor-dir {compressor_dir} is outside the project root {root}: the compressor must "
                         "import from the root (pass a folder inside it)") from None
    if not all(part.isidentifier() for part in parts):
        raise ValueError(f"{module}: every folder on the import path must be a Python name (got {'.'.join(parts)})")
    for path in (prereg, module):
        if path.exists():
            raise ValueError(f"{path} exists already; pick another NAME (a sealed claim is never rewritten)")
    prereg.parent.mkdir(parents=True, exist_ok=True)
    module.parent.mkdir(parents=True, exist_ok=True)
    skeleton, template = {"expert-weights": (SKELETON, expert_weights_prereg),
                          "expert-outputs": (OUTPUTS_SKELETON, expert_outputs_prereg),
                          "router": (ROUTER_SKELETON, router_prereg)}[kind]
    module.write_text(skeleton.format(name=name, prereg=prereg.as_posix()), encoding="utf-8")
    data = template(name, f"{'.'.join(parts)}:make")
    prereg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return prereg, module


def next_steps(kind: str, name: str, prereg: Path, module: Path) -> str:
    """The three commands to run after `ladder new`."""
    return "\n".join([
        f"wrote {prereg.as_posix()} (unsealed) and {module.as_posix()}",
        "next:",
        f"  1. edit {module.as_posix()} (your method) and {prereg.as_posix()} (claim, thresholds, cells)",
        f"  2. ladder seal {prereg.as_posix()}",
        f"  3. pytest rungs/test_{KINDS[kind]}.py -k {name}",
    ])


def main(argv: list[str]) -> int:
    """`ladder new NAME --kind expert-weights|expert-outputs|router [--prereg-dir DIR] [--compressor-dir DIR]`."""
    parser = argparse.ArgumentParser(prog="ladder new", description="Write a new claim (unsealed) to edit and seal.")
    parser.add_argument("name", help="the claim's name: its folder under the prereg dir ([a-z0-9_]+)")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS),
                        help="the kind of compressor: its generic rung module tests the claim")
    parser.add_argument("--prereg-dir", default="prereg", metavar="DIR", help="default: ./prereg")
    parser.add_argument("--compressor-dir", default="claims", metavar="DIR",
                        help="where the skeleton compressor goes, importable from the current folder (default: "
                             "./claims)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        prereg, module = write_kind_template(args.kind, args.name, args.prereg_dir, compressor_dir=args.compressor_dir)
    except ValueError as error:
        print(f"ladder new: {error}", file=sys.stderr)
        return 2
    print(next_steps(args.kind, args.name, prereg, module))
    return 0
