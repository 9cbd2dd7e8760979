"""Read a checkpoint's tensors straight from its safetensors files, without building the model.

This is what the analytical prefilters use (`pytest -m analytical`): no forward pass, no accelerate hooks, no meta
placeholders — each tensor is memory-mapped from disk on demand. MoE expert weights are found under either layout:
per-expert keys as checkpoints store them (`model.layers.L.mlp.experts.E.gate_proj.weight`, (I, H)) or the fused
layout of transformers 5.x modules (`model.layers.L.mlp.experts.gate_up_proj`, (E, 2I, H)); the block, router and
per-expert names are the family's (models.adapters.stored_layout: Mixtral's `block_sparse_moe.experts.E.w1`, ...).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ExpertWeights:
    """One expert's matrices in nn.Linear layout: gate (I, H), up (I, H), down (H, I)."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    def __getitem__(self, projection: str) -> torch.Tensor:
        return {"gate_proj": self.gate, "up_proj": self.up, "down_proj": self.down,
                "gate": self.gate, "up": self.up, "down": self.down}[projection]


class Checkpoint:
    """Lazy, read-only view of a `save_pretrained` folder (config.json + *.safetensors)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)  # where tensors are delivered (the analytical work runs there)
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(f"{self.folder}: no config.json — not a save_pretrained model folder")
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: self.folder / file for name, file in weight_map.items()}
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.folder}: no *.safetensors files")
            self._files = {}
            for file in files:
                with safe_open(file, "pt") as handle:
                    self._files.update({name: file for name in handle.keys()})
        self._prefix = "model." if any(n.startswith("model.layers.") for n in self._files) else ""

    def on(self, device: str | torch.device) -> "Checkpoint":
        """The same view delivering tensors on `device` (e.g. the CPU, for tensors too large for the GPU)."""
        view = copy.copy(self)
        view.device = torch.device(device)
        return view

    @cached_property
    def config(self) -> dict:
        return json.loads((self.folder / "config.json").read_text())

    @property
    def names(self) -> list[str]:
        return sorted(self._files)

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def n_experts(self) -> int:
        for key in ("num_experts", "num_local_experts", "n_routed_experts"):
            if key in self.config:
                return int(self.config[key])
        raise KeyError(f"{self.folder}/config.json names no expert count (num_experts / num_local_experts)")

    @property
    def top_k(self) -> int:
        return int(self.config["num_experts_per_tok"])

    def tensor(self, name: str) -> torch.Tensor:
        """The stored tensor `name` at its stored dtype, bit for bit."""
        if name not in self._files:
            raise KeyError(f"{self.folder}: no tensor {name!r}")
        with safe_open(self._files[name], "pt") as handle:
            return handle.get_tensor(name).to(self.device)

    def dtype_bytes(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """name -> (stored dtype, shape), read from the headers only."""
        out = {}
        for file in sorted(set(self._files.values())):
            with safe_open(file, "pt") as handle:
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    out[name] = (getattr(torch, _DTYPES[sl.get_dtype()]), tuple(sl.get_shape()))
        return out

    @cached_property
    def expert_dtype(self) -> torch.dtype:
        """The stored dtype of the expert matrices (the first MoE layer's, from the files' headers: `dtype_bytes`)."""
        stored = self.dtype_bytes()
        for layer in range(self.n_layers):
            base = self._layer(layer)
            for name in (self._per_expert(base, 0, "gate"), f"{base}.experts.gate_up_proj"):
                if name in stored:
                    return stored[name][0]
        raise KeyError(f"{self.folder}: no expert weights under {self._layer(0)}")

    @cached_property
    def layout(self) -> Any:
        """How this family's checkpoints name the MoE block (models.adapters.StoredLayout)."""
        from pytest_ladder.models.adapters import stored_layout

        return stored_layout(self.config.get("model_type"))

    def _layer(self, layer: int) -> str:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} outside 0..{self.n_layers - 1} of {self.folder}")
        return f"{self._prefix}layers.{layer}.{self.layout.block}"

    def _per_expert(self, base: str, expert: int, projection: str) -> str:
        return f"{base}.experts.{expert}.{self.layout.names()[projection]}.weight"

    def router(self, layer: int) -> torch.Tensor:
        """Router weight (E, H)."""
        return self.tensor(f"{self._layer(layer)}.{self.layout.router}.weight")

    def expert(self, layer: int, expert: int) -> ExpertWeights:
        """Expert `expert` of MoE layer `layer` in either checkpoint layout."""
        base = self._layer(layer)
        if self._per_expert(base, expert, "gate") in self._files:
            return ExpertWeights(*(self.tensor(self._per_expert(base, expert, p)) for p in ("gate", "up", "down")))
        gate_up = self.tensor(f"{base}.experts.gate_up_proj")[expert]
        inter = gate_up.shape[0] // 2
        return ExpertWeights(gate_up[:inter], gate_up[inter:], self.tensor(f"{base}.experts.down_proj")[expert])

    def experts(self, layer: int, projection: str) -> torch.Tensor:
        """All experts' `projection` matrices of a layer, stacked: (E, I, H) for gate/up, (E, H, I) for down; only
        that projection is read."""
        if projection not in ("gate", "up", "down"):
            raise ValueError(f"experts: projection must be gate, up or down, got {projection!r}")
        base = self._layer(layer)
        if self._per_expert(base, 0, "gate") in self._files:
            return torch.stack([self.tensor(self._per_expert(base, e, projection)) for e in range(self.n_experts)])
        if projection == "down":
            return self.tensor(f"{base}.experts.down_proj")
        gate_up = self.tensor(f"{base}.experts.gate_up_proj")
        inter = gate_up.shape[1] // 2
        return gate_up[:, :inter] if projection == "gate" else gate_up[:, inter:]


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
