"""Meta-safe parameter access (protocol §6.4): real values of any parameter, in memory or offloaded by accelerate.

Under accelerate offload a parameter is a `meta` placeholder and its real values live in the owning module's hook
(`module._hf_hook.weights_map`): a CPU state dict (CPU offload) or an index of safetensors / .dat files (disk
offload, possibly the user's own checkpoint). Reads go through that map, never `.cpu()` on the placeholder. Writes
never touch the stored values: an offloaded parameter is overridden by an entry in the loader's in-memory
state dict (which accelerate consults first) and restored by removing or re-inserting the original entry; an
in-memory parameter gets its `.data` swapped and swapped back. Originals are therefore restored bit for bit and
the offload files (and the checkpoint they may point at) are never written.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter


class WeightAccessError(RuntimeError):
    """A parameter cannot be located or its offloaded values cannot be reached; the message names it."""


@dataclass
class Located:
    """Where a parameter's real values live: `mapping[key]` when offloaded (`mapping` is the loader's override
    dict, `loader` the full map), else the in-memory `param`."""

    name: str
    module: nn.Module
    short: str
    param: torch.Tensor
    loader: Any = None  # the unwrapped weights map (OffloadedWeightsLoader or a dict) when offloaded
    key: str | None = None  # the parameter's key in `loader`

    @property
    def offloaded(self) -> bool:
        return self.loader is not None

    @property
    def storage(self) -> str:
        """"memory", "offload:cpu" (a CPU state dict) or "offload:disk" (safetensors / .dat files)."""
        if not self.offloaded:
            return "memory"
        overrides = _override_dict(self.loader)
        if self.key in overrides:
            return "offload:cpu"
        return "offload:disk"


def _unwrap(weights_map: Any, key: str) -> tuple[Any, str]:
    """Follow PrefixedDataset wrappers down to the base map; returns (base map, full key)."""
    while hasattr(weights_map, "dataset") and hasattr(weights_map, "prefix"):
        key = f"{weights_map.prefix}{key}"
        weights_map = weights_map.dataset
    return weights_map, key


def _override_dict(loader: Any) -> MutableMapping:
    """The in-memory dict accelerate consults first: OffloadedWeightsLoader.state_dict, or the map itself."""
    if hasattr(loader, "state_dict") and isinstance(loader.state_dict, MutableMapping):
        return loader.state_dict
    if isinstance(loader, MutableMapping):
        return loader
    raise WeightAccessError(f"unsupported accelerate weights map {type(loader).__name__}: expected an "
                            "OffloadedWeightsLoader or a dict; please report the accelerate version")


def locate(model: nn.Module, name: str) -> Located:
    """Find parameter (or buffer) `name` and, if its module is offloaded, the weights-map entry holding it."""
    module_name, _, short = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise WeightAccessError(f"{name}: no module {module_name!r} in {type(model).__name__}") from None
    tensor = module._parameters.get(short)
    if tensor is None:
        tensor = module._buffers.get(short)
    if tensor is None:
        raise WeightAccessError(f"{name}: {module_name or type(model).__name__} has no parameter or buffer {short!r}")
    # the hook holding the values is on the owning module or (place_submodules=True) on an ancestor
    parts = module_name.split(".") if module_name else []
    for depth in range(len(parts), -1, -1):
        owner_name = ".".join(parts[:depth])
        owner = model.get_submodule(owner_name) if owner_name else model
        hook = getattr(owner, "_hf_hook", None)
        relative = name[len(owner_name) + 1:] if owner_name else name
        for single in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            weights_map = getattr(single, "weights_map", None)
            if getattr(single, "offload", False) and weights_map is not None:
                loader, key = _unwrap(weights_map, relative)
                if key in _override_dict(loader) or key in getattr(loader, "index", {}) or key in loader:
                    return Located(name, module, short, tensor, loader, key)
    if tensor.device.type == "meta":
        raise WeightAccessError(f"{name} is a meta placeholder and no accelerate hook holds its values; load the "
                                "model with device_map/offload_folder through pytest_ladder.models.load_model")
    return Located(name, module, short, tensor)


def _stored(located: Located) -> torch.Tensor:
    overrides = _override_dict(located.loader)
    if located.key in overrides:
        return overrides[located.key]
    return located.loader[located.key]


def read_parameter(model: nn.Module, name: str, index: int | slice | None = None) -> torch.Tensor:
    """The real values of parameter `name` (optionally `[index]` along dim 0, e.g. one expert of a fused tensor),
    bit-exact, on the device they live on (CPU for offloaded ones). Never a meta tensor. Read-only: for an
    in-memory parameter it is a view of the live values, so clone it to keep old values across write_parameter
    and across patched_parameters on a GPU (which writes in place)."""
    located = locate(model, name)
    if not located.offloaded:
        value = located.param.detach()
        return value if index is None else value[index]
    overrides = _override_dict(located.loader)
    info = getattr(located.loader, "index", {}).get(located.key)
    if index is not None and located.key not in overrides and info and info.get("safetensors_file"):
        from safetensors import safe_open

        with safe_open(info["safetensors_file"], framework="pt", device="cpu") as handle:
            value = handle.get_slice(info.get("weight_name", located.key))[index]
        if "dtype" in info:
            value = value.to(getattr(torch, info["dtype"]))
        return value
    value = _stored(located)
    if value.device.type == "meta":
        raise WeightAccessError(f"{name}: the offload map returned a meta tensor; the offload folder is incomplete")
    return value if index is None else value[index]


def _current(located: Located) -> torch.Tensor:
    return _stored(located) if located.offloaded else located.param.detach()


def _assembled(located: Located, parts: list[tuple[int | slice | None, torch.Tensor]]) -> torch.Tensor:
    """The full new tensor for `located`: the last whole value given, with every `[index]` part applied on top of
    it (or on top of a copy of the current values). Never aliases the caller's tensors or the current storage."""
    whole = [value for index, value in parts if index is None]
    indexed = [(index, value) for index, value in parts if index is not None]
    dtype = located.param.dtype
    if whole:
        full = whole[-1].detach()
        device = full.device if located.offloaded or _on_accelerator(located) else located.param.device
        full = full.to(device=device, dtype=dtype, copy=True)
    elif _on_accelerator(located):  # assembled on the CPU, then copied into the GPU parameter in place
        full = _current(located).to("cpu", copy=True)
    else:
        full = _current(located).clone()
    for index, value in indexed:
        full[index] = value.detach().to(device=full.device, dtype=full.dtype)
    if tuple(full.shape) != tuple(located.param.shape):
        raise WeightAccessError(f"{located.name}: new value has shape {tuple(full.shape)}, the parameter "
                                f"{tuple(located.param.shape)}")
    return full


def _on_accelerator(located: Located) -> bool:
    return not located.offloaded and located.param.device.type not in ("cpu", "meta")


def _check_parts(located: Located, parts: list[tuple[int | slice | None, torch.Tensor]]) -> None:
    for index, value in parts:
        shape = located.param.shape if index is None else located.param[index].shape
        if tuple(value.shape) != tuple(shape):
            raise WeightAccessError(f"{located.name}{'' if index is None else f'[{index}]'}: new value has shape "
                                    f"{tuple(value.shape)}, the parameter {tuple(shape)}")


class _Restore:
    """Undo record of one write: puts back the exact original object (or, for a parameter held on a GPU, which is
    patched in place so that a patch costs no second copy in GPU memory, the original values from a CPU copy)."""

    def __init__(self, located: Located) -> None:
        self.located = located
        if located.offloaded:
            overrides = _override_dict(located.loader)
            self.had_override = located.key in overrides
            self.original = overrides.get(located.key)
        elif _on_accelerator(located):
            self.original = _host(located.param.detach())
        else:
            self.original = located.param.data

    def __call__(self) -> None:
        located = self.located
        if located.offloaded:
            overrides = _override_dict(located.loader)
            if self.had_override:
                overrides[located.key] = self.original
            else:
                overrides.pop(located.key, None)
        elif _on_accelerator(located):
            located.param.data.copy_(self.original)
        else:
            located.param.data = self.original


def _host(value: torch.Tensor) -> torch.Tensor:
    """`value` in CPU memory: page-locked where CUDA is available, so a copy onto the GPU is a DMA transfer at the
    link's speed (several times a pageable copy), as the offloaded originals are (`pin_offloaded`)."""
    if not torch.cuda.is_available():
        return value.to("cpu").contiguous()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
    host.copy_(value)
    return host


def offload_maps(model: nn.Module) -> list[MutableMapping]:
    """The in-memory state dicts behind the model's offloading accelerate hooks, each once: CPU-offloaded values
    (and patches of offloaded parameters) by full parameter name. Disk-offloaded values are not in them."""
    from pytest_ladder.models.sequential import _offloading_hooks

    maps: dict[int, MutableMapping] = {}
    for _, hook in _offloading_hooks(model):
        if getattr(hook, "weights_map", None) is not None:
            overrides = _override_dict(_unwrap(hook.weights_map, "")[0])
            maps.setdefault(id(overrides), overrides)
    return list(maps.values())


def pin_offloaded(model: nn.Module) -> int:
    """Page-lock the CPU-offloaded values behind the model's accelerate hooks (`offload_maps`) and return the bytes
    pinned. accelerate copies an offloaded block's weights onto the GPU before each of its forwards: from pageable
    memory that copy runs at a fraction of the link's speed, and a layer-sequential pass (models.sequential) makes
    one per offloaded layer. Values are unchanged bit for bit; a no-op without CUDA."""
    if not torch.cuda.is_available():
        return 0
    pinned = 0
    for overrides in offload_maps(model):
        for key, value in list(overrides.items()):
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.is_pinned():
                overrides[key] = _host(value)
                pinned += value.numel() * value.element_size()
    return pinned


def _install(located: Located, full: torch.Tensor) -> None:
    if located.offloaded:
        _override_dict(located.loader)[located.key] = _host(full)
    elif _on_accelerator(located):
        located.param.data.copy_(full)
    else:
        located.param.data = full


def write_parameter(model: nn.Module, name: str, value: torch.Tensor, index: int | slice | None = None) -> None:
    """Replace the values of `name` (or of `[index]` along dim 0) for good. In-memory parameters are written in
    place; offloaded ones get an in-memory override, so offload files and checkpoints are never written."""
    located = locate(model, name)
    with torch.no_grad():
        if not located.offloaded:
            target = located.param.data if index is None else located.param.data[index]
            if tuple(target.shape) != tuple(value.shape):
                raise WeightAccessError(f"{name}{'' if index is None else f'[{index}]'}: new value has shape "
                                        f"{tuple(value.shape)}, expected {tuple(target.shape)}")
            target.copy_(value)
        else:
            _install(located, _assembled(located, [(index, value)]))


@contextlib.contextmanager
def patched_parameters(model: nn.Module, updates: dict[str, torch.Tensor] | dict[tuple[str, Any], torch.Tensor]
                       ) -> Iterator[None]:
    """Temporarily replace parameters; on exit the original values are back, bit for bit.

    `updates` maps a parameter name, or (name, index along dim 0), to its new value; several entries may patch
    different indices of one parameter (e.g. experts of a fused tensor), which is then assembled once. Parameters
    held on a GPU are written in place (their originals wait on the CPU), so views read earlier by
    read_parameter see the patch; every other parameter gets new storage."""
    restores: list[_Restore] = []
    try:
        _apply(model, updates, restores)
        del updates  # the new values are installed; holding them would keep a second copy alive
        yield
    finally:
        for restore in reversed(restores):
            restore()


def _apply(model: nn.Module, updates: dict, restores: list[_Restore]) -> None:
    """Install `updates` (see patched_parameters), appending each parameter's undo record to `restores` first."""
    grouped: dict[str, list[tuple[Any, torch.Tensor]]] = {}
    for target, value in updates.items():
        name, index = target if isinstance(target, tuple) else (target, None)
        grouped.setdefault(name, []).append((index, value))
    with torch.no_grad():
        for name, parts in grouped.items():
            located = locate(model, name)
            if _on_accelerator(located):  # written in place, part by part: no assembled copy anywhere
                _check_parts(located, parts)
                restores.append(_Restore(located))
                for index, value in parts:
                    target = located.param.data if index is None else located.param.data[index]
                    target.copy_(value.detach().to(dtype=target.dtype), non_blocking=False)
                continue
            full = _assembled(located, parts)
            restores.append(_Restore(located))
            _install(located, full)


@contextlib.contextmanager
def patched_layers(model: nn.Module, layers: Iterable[Callable[[], dict]]) -> Iterator[None]:
    """`patched_parameters` for updates made a layer at a time: each callable gives one layer's updates, which are
    installed before the next layer's are made, so only one layer's new values exist at once (on a GPU, beside the
    model, that is what keeps a full-depth deploy inside the workspace). On exit every original is back."""
    with contextlib.ExitStack() as stack:
        for make in layers:
            updates = make()
            stack.enter_context(patched_parameters(model, updates))
            del updates
        yield


# ------------------------------------------------------------------------------------ per-expert output patch ---

ExpertTransform = Callable[[int, int, torch.Tensor], torch.Tensor]


def routed_rows(top_k_index: torch.Tensor, n_experts: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, top_k_pos, token_idx) for every expert routed a token, in expert order, each with the rows
    `torch.where(one_hot(top_k_index)[..., expert].T)` gives in transformers' eager loop (by top-k slot, then token).

    One stable sort of the routes and one count per expert read back at once replace a `torch.where` per expert, so
    on a GPU the loop queues its work without waiting on each expert. Index `n_experts` (a padding route) is skipped,
    as the eager loop skips it."""
    n_tokens = top_k_index.shape[0]
    with torch.no_grad():
        routes = top_k_index.mT.reshape(-1)  # position p = slot · T + token: torch.where's order within an expert
        order = torch.sort(routes, stable=True).indices
        counts = torch.bincount(routes, minlength=n_experts + 1).tolist()
    start = 0
    for expert, count in enumerate(counts[:n_experts]):
        if count:
            positions = order[start:start + count]
            yield expert, positions // n_tokens, positions % n_tokens
        start += count


def _experts_loop(adapter: "MoEAdapter", layer: int, transform: ExpertTransform, weighted: bool) -> Callable:
    """An experts forward equivalent to transformers' eager loop, with `transform(layer, expert, output)` applied to
    each routed expert's output (before the routing weight, or after it when `weighted`) before it is summed. Each
    expert gets the eager loop's rows in its order (`routed_rows`), and the experts are summed in its order, so the
    result is the eager loop's bit for bit."""

    def forward(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        for expert, top_k_pos, token_idx in routed_rows(top_k_index, adapter.n_experts):
            output = adapter.expert_forward_module(module, expert, hidden_states[token_idx])
            if not weighted:
                output = transform(layer, expert, output)
            output = output * top_k_weights[token_idx, top_k_pos, None]
            if weighted:
                output = transform(layer, expert, output)
            final.index_add_(0, token_idx, output.to(final.dtype))
        return final

    return forward


@contextlib.contextmanager
def transformed_expert_outputs(adapter: "MoEAdapter", transform: ExpertTransform, layers: list[int] | None = None,
                               weighted: bool = False) -> Iterator[None]:
    """Temporarily run each MoE layer's experts as a per-expert loop that passes every routed expert's output
    through `transform(layer, expert, output)` before the outputs are summed (G10: quantize expert outputs).

    With the identity transform the model's output equals the fused forward: bit for bit against transformers'
    eager experts, to float rounding against grouped_mm. Works under offload: the accelerate hook still moves the
    weights in before the (replaced) forward runs."""
    swapped: list[tuple[nn.Module, str, Any]] = []
    try:
        for layer in adapter.moe_layers() if layers is None else layers:
            module = adapter.experts_module(layer)
            loop = types.MethodType(_experts_loop(adapter, layer, transform, weighted), module)
            attribute = "_old_forward" if hasattr(module, "_old_forward") else "forward"  # accelerate wraps forward
            previous = module.__dict__.get(attribute, _MISSING)
            setattr(module, attribute, loop)
            swapped.append((module, attribute, previous))
        yield
    finally:
        for module, attribute, previous in reversed(swapped):
            if previous is _MISSING:
                delattr(module, attribute)
            else:
                setattr(module, attribute, previous)


_MISSING = object()

__all__ = ["locate", "read_parameter", "write_parameter", "patched_parameters", "transformed_expert_outputs",
           "pin_offloaded", "offload_maps", "WeightAccessError", "Located"]
