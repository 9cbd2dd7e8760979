"""The compressor interface: what a user's method does to the model, named in the prereg by import path.

A prereg names its method in `params`::

    "params": {
        "compressor": "examples.int4_group64.compressor:make",   # "<importable module>:<factory>"
        "compressor_params": {"bits": 4, "group_size": 64}       # keyword arguments of the factory (optional)
    }

The factory is called once, `factory(**compressor_params)`, and returns a plain object of one of the kinds below; a
generic rung module per kind puts any such object through the five gates, the τ floor and the traps (for expert
weights: rungs/test_expert_weights.py; docs/compressors.md walks through it). A prereg binds that module with
`"rung": "expert_weights"`. Loading problems (module not found, attribute missing, factory raised, a method
missing) are `PreregError`s naming the file, the field and the fix, raised at collection: a run with a broken
compressor spends nothing.

Kinds (`KINDS`):

- **expert weights** (`ExpertWeightCompressor`, implemented in full): W -> W' for every routed expert's gate, up
  and down projections, and the bytes the compressed experts store (quantizers, low rank, pruning, merging).
- **expert outputs** (`ExpertOutputCompressor`, implemented in full): what each routed expert's output becomes
  before it is summed into the residual stream (G10-like activation quantization), calibrated on calibration tokens,
  with the bytes one token's compressed outputs take (rungs/test_expert_outputs.py, `"rung": "expert_outputs"`).
- **router** (`RouterCompressor`, implemented in full): the router weight W_r -> W_r' (low rank, quantized) and its
  stored bytes; judged by route flips per cell and ΔNLL at full depth (rungs/test_router.py, `"rung": "router"`).

Only the standard library is imported here (the plugin's collection calls `check_compressor`); torch loads with the
user's module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pytest_ladder.prereg_types import PreregError

if TYPE_CHECKING:
    import torch

    from pytest_ladder.measure.storage import Artifact

FIELD = "params.compressor"
PARAMS_FIELD = "params.compressor_params"
STACK_KEYS = ("gate", "up", "down")  # a layer's expert stacks: gate (E, I, H), up (E, I, H), down (E, H, I)
# the keys every kind's study names its compressors by (besides ("random", seed) for the τ baselines)
IDENTITY = ("identity",)  # the uncompressed pipeline
METHOD = ("method",)  # the prereg's compressor
HARMFUL = ("harmful",)  # its declared-harmful control


@runtime_checkable
class ExpertWeightCompressor(Protocol):
    """Expert weights W -> W′, with the bytes the compressed experts store.

    `compress(layer, stacks, experts)`: `stacks` holds one MoE layer's expert matrices {"gate": (e, I, H), "up":
    (e, I, H), "down": (e, H, I)} for the experts `experts` (a range of expert indices; the whole layer, or a chunk of
    it when the GPU workspace is bounded), at their stored dtype on the device the study computes on. Return W′ of the
    same keys and shapes (any float dtype; the gates read it in float64, the deployed model at the stored dtype). A
    compressor whose W′ of one expert depends on other experts (merging, shared codebooks) sets `per_expert = False`
    and is always given the whole layer.

    `storage(stacks)`: what the compressed experts of the whole model store, as a `measure.storage.Artifact` (packed
    codes, scales, zero points, factors, indices, codebooks, sign vectors...), from `stacks` = {"layers.L.<gate|up|
    down>": (stored dtype, (E, out, in))} (shapes only). Gate 1 is `global_delta_bytes(storage, dense)`; bytes never
    come from parameter counts.

    Optional: `random_control(seed)` returns the τ floor's baseline, the same storage spent on random choices (e.g.
    the same codes with random scales); without it the rung uses a random projection W Q Qᵀ whose factor W Q, kept at
    the stored dtype, takes the method's bytes (`probes.expert_weights.RandomProjection`). `harmful_control()` returns
    a compressor declared harmful (the harmful-control trap must see it fail the activation-error gate); without it,
    symmetric INT2 with one scale per row (`probes.expert_weights.RowQuant(2)`).
    """

    def compress(self, layer: int, stacks: Mapping[str, torch.Tensor], experts: range
                 ) -> Mapping[str, torch.Tensor]: ...

    def storage(self, stacks: Mapping[str, tuple[torch.dtype, tuple[int, int, int]]]) -> Artifact: ...


@runtime_checkable
class ExpertOutputCompressor(Protocol):
    """Routed expert outputs y -> y′ before the routing weight and the sum into the residual stream (G10-like).

    `calibrate(layer, outputs)`: the dense model's calibration outputs of one MoE layer, {expert: (rows, H)} for the
    experts that saw calibration tokens; return the state `compress` needs (scales, codebooks; None if nothing).
    `compress(layer, expert, outputs, state)`: y′ (rows, H) of one routed expert's outputs (rows, H), at the model's
    dtype on its device; the rung runs it on held-out outputs (output error) and inside the running model (ΔNLL).
    `storage(top_k, hidden, dtype)`: what one token's k routed outputs occupy, as a `measure.storage.Artifact` (codes,
    per-token scales, kept outliers); gate 1 subtracts the dense (k, H) outputs at `dtype`. Static side data
    (calibrated scales) is stored once, not per token.

    Optional: `random_control(seed)` (the τ floor's baseline: the same bytes spent on random choices; default a random
    projection y Q Qᵀ whose r coordinates per output take those bytes) and `harmful_control()` (must fail the
    output-error gate on the hardest cell; default a rank-one projection).
    """

    def calibrate(self, layer: int, outputs: Mapping[int, torch.Tensor]) -> Any: ...

    def compress(self, layer: int, expert: int, outputs: torch.Tensor, state: Any) -> torch.Tensor: ...

    def storage(self, top_k: int, hidden: int, dtype: torch.dtype) -> Artifact: ...


@runtime_checkable
class RouterCompressor(Protocol):
    """The router W_r (E, H) -> W_r′ per MoE layer, with its stored bytes.

    `compress(layer, router)`: the layer's router (E, H) at its stored dtype on the device the study computes on;
    return W_r′ of the same shape (any float dtype; flips are computed in float64, the deployed model gets it at the
    stored dtype). `storage(routers)`: what the compressed routers of the whole model store, as a
    `measure.storage.Artifact`, from `routers` = {"layers.L.router": (stored dtype, (E, H))} (shapes only); gate 1
    subtracts the dense routers' bytes.

    Optional: `random_control(seed)` (the τ floor's baseline: the same bytes spent on random choices; default a
    random projection W_r Q Qᵀ whose factor takes the method's bytes, `probes.routers.RandomProjectionRouter`) and
    `harmful_control()` (must fail the route-flip gate on the hardest cell; default every logit read off one random
    input direction, `probes.routers.RandomRankOneRouter`).
    """

    def compress(self, layer: int, router: torch.Tensor) -> torch.Tensor: ...

    def storage(self, routers: Mapping[str, tuple[torch.dtype, tuple[int, int]]]) -> Artifact: ...


KINDS: dict[str, type] = {
    "expert_weights": ExpertWeightCompressor,
    "expert_outputs": ExpertOutputCompressor,
    "router": RouterCompressor,
}


def _fix(prereg: Any) -> str:
    return f"re-seal with: ladder seal {prereg.display_path}"


def compressor_spec(prereg: Any) -> tuple[str, str, dict]:
    """(module, factory, keyword arguments) named by the prereg's `params.compressor` and `params.compressor_params`
    (PreregError naming the file, the field and the fix)."""
    params = prereg.params
    shown = prereg.display_path
    target = params.get("compressor")
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        got = "missing" if target is None else f"{json.dumps(target)}"
        raise PreregError(
            f"{shown}: field '{FIELD}' must name the method as \"<module>:<factory>\", e.g. "
            f"\"examples.int4_group64.compressor:make\" (got {got}). Write the import path of the function that builds "
            f"the compressor and {_fix(prereg)}")
    kwargs = params.get("compressor_params", {})
    if not isinstance(kwargs, dict):
        raise PreregError(
            f"{shown}: field '{PARAMS_FIELD}' must be an object of the factory's keyword arguments (got "
            f"{json.dumps(kwargs)}). Fix the value and {_fix(prereg)}")
    module, factory = target.split(":")
    return module, factory, dict(kwargs)


def _import(module: str, prereg: Any, root: Path | None) -> Any:
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # a compressor module beside the prereg folder imports like a test module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and (module == error.name or module.startswith(error.name + ".")):
            raise PreregError(
                f"{prereg.display_path}: field '{FIELD}' names the module {module!r}, which cannot be imported "
                f"({error}). Fix the import path (a module importable from the rootdir"
                f"{f' {root}' if root else ''} or an installed package; a folder needs no __init__.py) and "
                f"{_fix(prereg)}") from None
        raise PreregError(
            f"{prereg.display_path}: field '{FIELD}': importing {module!r} failed: {type(error).__name__}: {error}. "
            f"Install what it imports, or fix the module") from None
    except Exception as error:  # the user's module raised while importing
        raise PreregError(
            f"{prereg.display_path}: field '{FIELD}': importing {module!r} raised {type(error).__name__}: {error}. "
            f"Fix the module (it is user code: run `python -c \"import {module}\"` to see the traceback)") from None


def load_compressor(prereg: Any, kind: str = "expert_weights", *, root: Path | None = None) -> Any:
    """The compressor the prereg names, built by its factory and checked against the protocol of `kind` (its
    required methods present and callable); PreregError naming the file, the field and the fix otherwise."""
    if kind not in KINDS:
        raise ValueError(f"load_compressor: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    module_name, factory_name, kwargs = compressor_spec(prereg)
    module = _import(module_name, prereg, root)
    factory = getattr(module, factory_name, None)
    shown = prereg.display_path
    if factory is None or not callable(factory):
        found = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_")
                       and getattr(value, "__module__", None) == module.__name__)
        raise PreregError(
            f"{shown}: field '{FIELD}' names {factory_name!r} in {module_name} ({getattr(module, '__file__', '?')}), "
            f"which {'is not callable' if factory is not None else 'does not exist'}; the module defines: "
            f"{', '.join(found) or '(no functions or classes)'}. Fix the name after ':' and {_fix(prereg)}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise PreregError(
            f"{shown}: field '{PARAMS_FIELD}' does not fit {module_name}:{factory_name}{_signature(factory)}: "
            f"{error}. Fix the keyword arguments and {_fix(prereg)}") from None
    except ValueError:
        pass  # a builtin without a signature: call it and see
    try:
        compressor = factory(**kwargs)
    except Exception as error:
        raise PreregError(
            f"{shown}: {module_name}:{factory_name}(**{json.dumps(kwargs)}) (fields '{FIELD}', '{PARAMS_FIELD}') "
            f"raised {type(error).__name__}: {error}. Fix the parameters and {_fix(prereg)}, or fix the factory"
        ) from None
    missing = [name for name in _required(KINDS[kind]) if not callable(getattr(compressor, name, None))]
    if missing:
        raise PreregError(
            f"{shown}: {module_name}:{factory_name} (field '{FIELD}') returned a {type(compressor).__name__}, which "
            f"lacks {', '.join(f'{name}()' for name in missing)} of the {kind} compressor protocol "
            f"(pytest_ladder.compressors.{KINDS[kind].__name__}; docs/compressors.md). Add the method(s) to the "
            "compressor")
    for name in _required(KINDS[kind]):
        expected = _parameters(getattr(KINDS[kind], name))
        try:
            inspect.signature(getattr(compressor, name)).bind(*expected)
        except TypeError:
            raise PreregError(
                f"{shown}: {module_name}:{factory_name} (field '{FIELD}') returned a {type(compressor).__name__}, "
                f"whose {name}{_signature(getattr(compressor, name))} cannot be called as {name}"
                f"({', '.join(expected)}) of the {kind} compressor protocol (pytest_ladder.compressors."
                f"{KINDS[kind].__name__}; docs/compressors.md). Is it a compressor of another kind? Bind the prereg "
                "to that kind's rung, or give the method those parameters") from None
        except ValueError:
            pass  # no signature to check: the rung will call it
    return compressor


def own_or(compressor: Any, method: str, default: Any, *args: Any) -> Any:
    """The compressor's own optional `method(*args)` (`random_control(seed)`, `harmful_control()`) when it defines
    one, else `default` (the generic rung's built-in control of the kind)."""
    own = getattr(compressor, method, None)
    return own(*args) if callable(own) else default


def named_compressor(compressors: Mapping[tuple, Any], key: tuple, identity: Any, owner: str) -> Any:
    """A study's compressor named `key`: `identity` for ("identity",) (the uncompressed pipeline), else
    `compressors[key]` (KeyError listing the known keys)."""
    if key == ("identity",):
        return identity
    if key not in compressors:
        raise KeyError(f"{owner}: unknown compressor {key!r}; known: {sorted(compressors)}")
    return compressors[key]


def rung_compressor(cache: dict, prereg: Any, kind: str, root: Path | None) -> Any:
    """The compressor a generic rung's prereg names, loaded once per rung (kept in the rung's cache)."""
    if "compressor" not in cache:
        cache["compressor"] = load_compressor(prereg, kind, root=root)
    return cache["compressor"]


def _signature(function: Any) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(...)"


def _parameters(function: Any) -> list[str]:
    """The positional parameters a protocol method is called with (self left out)."""
    return [p.name for p in inspect.signature(function).parameters.values() if p.name != "self"]


def _required(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]


def find_compressor(prereg: Any, root: Path | None = None) -> None:
    """The collection check of a generic rung (`rung(..., check=find_compressor)`): the prereg names a compressor as
    `module:factory` and the module exists, found without importing it (collection stays free of torch; PreregError
    naming the file, the field and the fix)."""
    module_name, _, _ = compressor_spec(prereg)
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        _import(module_name, prereg, root)  # names what is missing, as an import would


def _dry_run_storage(prereg: Any, kind: str, compressor: Any, measure: Any) -> None:
    """Call the compressor's storage() on the session model's shapes before anything is measured: an exception or a
    wrong return there is a usage error naming the file and the fix, never an INVALID decision."""
    try:
        measure(compressor)
    except Exception as error:  # noqa: BLE001 - user code: whatever it raises is reported, nothing runs
        raise PreregError(
            f"{prereg.display_path}: the {kind} compressor named in '{FIELD}' ({type(compressor).__name__}) failed "
            f"its storage() on this model's shapes: {type(error).__name__}: {error}. Fix storage() (docs/"
            "compressors.md: every stored part a measure.storage.TensorStorage) and run again; nothing was measured "
            "or archived") from None


def check_expert_weights(prereg: Any, root: Path | None = None, weights: Any = None) -> None:
    """The generic expert-weights rung's session preparation (`rung(..., prepare=check_expert_weights)`, before any
    rung runs): the compressor the prereg names loads and speaks the protocol, and, given the session model's
    checkpoint view `weights`, its storage() describes that model's experts (PreregError naming the file, the field
    and the fix)."""
    compressor = load_compressor(prereg, "expert_weights", root=root)
    if weights is not None:
        from pytest_ladder.probes.expert_weights import compressor_bytes, expert_stacks

        _dry_run_storage(prereg, "expert_weights", compressor,
                         lambda c: compressor_bytes(c, expert_stacks(weights.dtype_bytes())))


def check_router(prereg: Any, root: Path | None = None, weights: Any = None) -> None:
    """The generic router rung's session preparation: the compressor the prereg names loads and speaks the router
    protocol, and its storage() describes the session model's routers (PreregError naming the file, the field and
    the fix)."""
    compressor = load_compressor(prereg, "router", root=root)
    if weights is not None:
        from pytest_ladder.probes.routers import router_bytes, router_stacks

        _dry_run_storage(prereg, "router", compressor, lambda c: router_bytes(c, router_stacks(weights.dtype_bytes())))


def check_expert_outputs(prereg: Any, root: Path | None = None, weights: Any = None) -> None:
    """The generic expert-outputs rung's session preparation: the compressor the prereg names loads and speaks the
    expert-outputs protocol, and its storage() describes one token's routed outputs of the session model
    (PreregError naming the file, the field and the fix)."""
    compressor = load_compressor(prereg, "expert_outputs", root=root)
    if weights is not None:
        from pytest_ladder.probes.expert_outputs import checkpoint_dtype
        from pytest_ladder.probes.output_compressors import output_bytes

        _dry_run_storage(prereg, "expert_outputs", compressor, lambda c: output_bytes(
            c, weights.top_k, weights.config["hidden_size"], checkpoint_dtype(weights.config)))
