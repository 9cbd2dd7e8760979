"""Preflight (protocol §6.4, smoke discipline): before a long run on an offloaded model, touch a real offloaded layer.

Static checks cannot catch meta-tensor placeholders (`.detach().float().cpu()` on one type-checks and explodes at
run time). The preflight picks the first offloaded decoder layer (the last layer when nothing is offloaded), reads
one of its weights through the meta-safe path (pytest_ladder.models.weights) and checks it against the checkpoint
file where the checkpoint stores it under the same name, then runs a dense-only forward (no compression) that must
pass through that layer and give finite logits. Any failure raises PreflightError naming the layer, the parameter
and what to do.

Before a session measures anything, `check_device` and `check_model_folder` say whether the device the options ask
for exists and whether a model folder holds a loadable checkpoint (the plugin's session preparation,
pytest_ladder.prepare, turns their PreflightError into a usage error).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_ladder.models.weights import locate, read_parameter


class PreflightError(RuntimeError):
    """The preflight failed; the message names the layer, the parameter and the fix."""


@dataclass
class PreflightReport:
    layer: int
    module: str
    parameter: str
    storage: str
    checked_against_checkpoint: bool
    offloaded_layers: list[int]
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_device(device: str, given: str | None = None) -> None:
    """PreflightError unless `device` (cpu, mps, cuda:N) exists here; `given` is the --ladder-device value as typed."""
    shown = f"--ladder-device {given}" if given else f"device {device}"
    fix = "run with --ladder-device cpu, or leave --ladder-device out (cuda when a GPU is there, else cpu)"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise PreflightError(f"{shown}: no CUDA device is available on this machine (torch {torch.__version__}, "
                                 f"{build}). Fix: {fix}")
        index, count = torch.device(device).index or 0, torch.cuda.device_count()
        if index >= count:
            raise PreflightError(f"{shown}: this machine has {count} CUDA device{'s' * (count != 1)} "
                                 f"(cuda:0..cuda:{count - 1}). Fix: pick one of them, or --ladder-device cuda")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise PreflightError(f"{shown}: Apple's MPS backend is not available here. Fix: {fix}")


def check_model_folder(folder: Path, source: str) -> None:
    """PreflightError unless `folder` (where --ladder-model `source` resolved) holds config.json and safetensors."""
    missing = [what for what, found in (("config.json", (folder / "config.json").is_file()),
                                        ("*.safetensors", any(folder.glob("*.safetensors")))) if not found]
    if missing:
        raise PreflightError(f"--ladder-model {source!r}: {folder} holds no {' and no '.join(missing)}. Fix: pass a "
                             "folder saved with model.save_pretrained(folder) (config.json and *.safetensors), a "
                             "Hugging Face hub id, or 'embedded'")


def offloaded_layers(loaded: Any) -> list[int]:
    """Decoder layers with at least one meta (offloaded) parameter."""
    return [i for i, layer in enumerate(loaded.adapter.decoder_layers())
            if any(p.device.type == "meta" for p in layer.parameters())]


def _checkpoint_value(folder: Path, name: str) -> torch.Tensor | None:
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    return None


def preflight(loaded: Any, text: str = "The ladder preflight touches an offloaded layer.") -> PreflightReport:
    """Read a weight of an offloaded layer and run a dense-only forward through it; PreflightError on failure."""
    started = time.perf_counter()
    adapter, model = loaded.adapter, loaded.model
    offloaded = offloaded_layers(loaded)
    layer = offloaded[0] if offloaded else len(adapter.decoder_layers()) - 1
    module = adapter.decoder_layers()[layer]
    module_name = adapter.name_of(module)
    where = f"layer {layer} ({module_name}, {'offloaded' if offloaded else 'in memory'})"
    fix = ("check that --ladder-offload-dir exists, is writable and has room for the offloaded weights, or raise "
           "--ladder-max-memory so fewer layers are offloaded; rerun with --ladder-preflight to check again")
    if layer in adapter.moe_layers():
        parameter = f"{adapter.name_of(adapter.router_module(layer))}.weight"
    else:
        parameter = next(f"{module_name}.{n}" for n, _ in module.named_parameters())
    try:
        located = locate(model, parameter)
        value = read_parameter(model, parameter)
    except Exception as error:  # noqa: BLE001 - every failure gets the same report
        raise PreflightError(f"preflight: reading {parameter} of {where} failed: {type(error).__name__}: {error}. "
                             f"Fix: {fix}") from error
    if value.device.type == "meta" or tuple(value.shape) != tuple(located.param.shape):
        raise PreflightError(f"preflight: {parameter} of {where} read back as {value.device.type} tensor of shape "
                             f"{tuple(value.shape)} (expected {tuple(located.param.shape)}). Fix: {fix}")
    if not torch.isfinite(value.float()).all():
        raise PreflightError(f"preflight: {parameter} of {where} holds non-finite values: the offloaded copy is "
                             f"corrupt. Fix: delete the offload folder and reload; {fix}")
    stored = _checkpoint_value(Path(loaded.path), parameter) if loaded.path else None
    if stored is not None and not torch.equal(stored.to(value.dtype), value.cpu()):
        raise PreflightError(f"preflight: {parameter} of {where} differs from the checkpoint file in {loaded.path}: "
                             f"the offloaded copy is stale or corrupt. Fix: delete the offload folder and reload")
    ran: list[bool] = []
    handle = module.register_forward_hook(lambda *_: ran.append(True))
    try:
        from pytest_ladder.models.capture import model_device

        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:16]
        inputs = torch.tensor([[loaded.prefix_token_id, *ids]], device=model_device(model))
        with torch.no_grad():
            logits = model(input_ids=inputs, use_cache=False).logits
    except Exception as error:  # noqa: BLE001
        raise PreflightError(f"preflight: the dense-only forward through {where} failed: {type(error).__name__}: "
                             f"{error}. Fix: {fix}") from error
    finally:
        handle.remove()
    if not ran:
        raise PreflightError(f"preflight: the dense-only forward never ran {where}; the model's layers are not "
                             "wired as its adapter expects (please report)")
    if not torch.isfinite(logits.float()).all():
        raise PreflightError(f"preflight: the dense-only forward through {where} gave non-finite logits. Fix: "
                             f"{fix}; with --ladder-dtype float16, try bfloat16 or float32")
    return PreflightReport(layer, module_name, parameter, located.storage, stored is not None, offloaded,
                           round(time.perf_counter() - started, 3))


__all__ = ["preflight", "PreflightError", "PreflightReport", "offloaded_layers", "check_device", "check_model_folder"]
