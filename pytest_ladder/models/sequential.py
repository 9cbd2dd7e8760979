"""Layer-sequential execution: many batches through the model, every batch through decoder layer l before l+1.

Why: under accelerate offload a plain forward moves every offloaded layer's weights onto the GPU once per batch,
so a capture or an NLL pass over B batches moves them B times (the offloaded OLMoE-1B-7B forward is ~10x the
in-memory one). Run layer by layer instead, as llm-compressor's sequential pipeline and GPTQ do: the decoder
stack's inputs of every batch are caught at the first layer (embeddings, rotary tables and masks computed by the
model itself), each layer's weights are brought in once (`resident`) and every batch goes through it, the hidden
states are kept between layers (1,000 tokens x 2048 x 4 bytes is 8 MB). Module hooks (models.capture) fire as in a
plain forward, batch by batch within each layer. The final norm and the output embedding then give the logits.

`forward_batches` picks the path: layer-sequential when some parameter is offloaded (or when asked), else a plain
forward per batch; both stop after `last_layer` when no logits are needed (a capture of a few layers runs only
the layers up to the last one it records).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask)


class _Caught(Exception):
    """Raised by the first decoder layer's pre-hook: carries the layer's (args, kwargs) and ends the forward."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.args, self.kwargs = args, kwargs


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder stack of a transformers causal LM (`model.model.layers`)."""
    return model.model.layers


def is_offloaded(model: nn.Module) -> bool:
    """True when some parameter is an accelerate meta placeholder (its values live in an offload map)."""
    return any(p.device.type == "meta" for p in model.parameters())


def _offloading_hooks(module: nn.Module) -> list[tuple[nn.Module, Any]]:
    """(submodule, AlignDevicesHook) of every submodule whose accelerate hook offloads its weights."""
    found = []
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        for single in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            if getattr(single, "offload", False) and hasattr(single, "pre_forward"):
                found.append((sub, single))
    return found


@contextlib.contextmanager
def resident(module: nn.Module) -> Iterator[None]:
    """Bring an offloaded block's weights onto their execution device once for every forward inside the block.

    Each offloading accelerate hook loads its module's weights (from the weights map, so parameter patches made by
    models.weights are honoured) and stops offloading until exit, when the weights go back to meta placeholders.
    A block held in memory is left as it is."""
    hooks = _offloading_hooks(module)
    loaded = []
    try:
        for sub, hook in hooks:
            hook.pre_forward(sub)
            hook.offload = False
            loaded.append((sub, hook))
        yield
    finally:
        for sub, hook in reversed(loaded):
            hook.offload = True
            hook.post_forward(sub, None)


def execution_device(module: nn.Module, default: torch.device) -> torch.device:
    """Where accelerate runs `module` (its hook's execution device), else where its first real parameter is."""
    hook = getattr(module, "_hf_hook", None)
    for single in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(single, "execution_device", None) is not None:
            return torch.device(single.execution_device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return default


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _StopAfter(Exception):
    """Ends a plain forward once the last layer anyone needs has run."""


@contextlib.contextmanager
def stopping_after(model: nn.Module, last_layer: int | None) -> Iterator[Callable[..., None]]:
    """A forward that runs no decoder layer after `last_layer` (None: all): yields `run(**inputs)`, which calls the
    model and ends it once the layers anyone records have run (hooks of later layers never fire)."""
    layers = decoder_layers(model)
    handle = None
    if last_layer is not None and last_layer + 1 < len(layers):
        def raise_stop(module: nn.Module, args: tuple) -> None:
            raise _StopAfter

        handle = layers[last_layer + 1].register_forward_pre_hook(raise_stop)

    def run(**inputs: Any) -> None:
        try:
            model(**inputs)
        except _StopAfter:
            pass

    try:
        yield run
    finally:
        if handle is not None:
            handle.remove()


def _plain(model: nn.Module, batches: Sequence[Batch], logits: bool, last_layer: int | None,
           before_batch: Callable[[int], None], bar: Any) -> Iterator[tuple[int, torch.Tensor | None]]:
    layers = decoder_layers(model)
    stop = None
    if not logits and last_layer is not None and last_layer + 1 < len(layers):
        def raise_stop(module: nn.Module, args: tuple) -> None:
            raise _StopAfter

        stop = layers[last_layer + 1].register_forward_pre_hook(raise_stop)
    try:
        for index, (ids, mask) in enumerate(batches):
            before_batch(index)
            try:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopAfter:
                out = None
            bar.update(1)
            yield index, out.logits if logits else None
    finally:
        if stop is not None:
            stop.remove()


def _sequential(model: nn.Module, batches: Sequence[Batch], logits: bool, last_layer: int | None,
                before_batch: Callable[[int], None], keep: torch.device | None, bar: Any
                ) -> Iterator[tuple[int, torch.Tensor | None]]:
    layers = decoder_layers(model)
    first = layers[0]

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Caught(args, kwargs)

    inputs: list[tuple[torch.Tensor, dict]] = []
    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids, mask in batches:
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Caught as caught:
                args, kwargs = caught.args, dict(caught.kwargs)
                hidden = args[0] if args else kwargs.pop("hidden_states")
                kwargs.update({f"__arg{i}": a for i, a in enumerate(args[1:])})
                inputs.append((hidden, kwargs))
            else:
                raise RuntimeError("layer-sequential execution: the model never called its first decoder layer")
    finally:
        handle.remove()
    end = len(layers) if logits or last_layer is None else last_layer + 1
    device = execution_device(first, inputs[0][0].device)
    store = keep or device
    hidden = [h.to(store) for h, _ in inputs]
    for layer in layers[:end]:
        run_on = execution_device(layer, device)
        with resident(layer), torch.no_grad():
            for index, (_, kwargs) in enumerate(inputs):
                before_batch(index)
                extra = {k: v for k, v in kwargs.items() if not k.startswith("__arg")}
                positional = [kwargs[k] for k in sorted(k for k in kwargs if k.startswith("__arg"))]
                out = layer(hidden[index].to(run_on), *_to(positional, run_on), **_to(extra, run_on))
                hidden[index] = _hidden(out).to(store)
        bar.update(1)
    if not logits:
        for index in range(len(inputs)):
            yield index, None
        return
    norm, head = model.model.norm, model.get_output_embeddings()
    with resident(norm), resident(head), torch.no_grad():
        for index in range(len(inputs)):
            h = hidden[index].to(execution_device(norm, device))
            h = norm(h)
            yield index, head(h.to(execution_device(head, device)))
            hidden[index] = None


def supports_sequential(model: nn.Module) -> bool:
    """Layer-sequential execution reuses the first layer's keyword arguments (mask, rotary tables) for every
    layer: true for models whose layers share one attention type (OLMoE, Qwen-MoE, Mixtral, DeepSeek-V3), not for
    models that mix sliding-window and full attention layers (GPT-OSS), which run plain."""
    config = getattr(model.config, "text_config", None) or model.config
    return len(set(getattr(config, "layer_types", None) or ["full_attention"])) == 1


def forward_batches(model: nn.Module, batches: Sequence[Batch], *, logits: bool = True,
                    sequential: bool | None = None, last_layer: int | None = None,
                    before_batch: Callable[[int], None] = lambda index: None,
                    keep: torch.device | str | None = None, desc: str = "forward",
                    progress: bool | None = None) -> Iterator[tuple[int, torch.Tensor | None]]:
    """Run `batches` through `model` (no grad, eval mode set by the caller) and yield (batch index, logits or None).

    `sequential`: None picks layer-sequential execution when some parameter is offloaded (and the model supports
    it). `last_layer`: without logits, decoder layers after it are not run. `before_batch(index)` is called before
    the batch's forward (plain) or before each layer's call on that batch (sequential), so hook state can follow the
    batch. `keep`: where the hidden states wait between layers (default: the first layer's execution device).
    A progress bar counts batches (plain) or layers (sequential)."""
    if not batches:
        return iter(())
    if sequential is None:
        sequential = is_offloaded(model) and supports_sequential(model)
    from pytest_ladder.progress import bar as progress_bar

    if sequential:
        bar = progress_bar(total=len(decoder_layers(model)), desc=f"{desc} (layer by layer)", enabled=progress)
        steps = _sequential(model, batches, logits, last_layer, before_batch,
                            None if keep is None else torch.device(keep), bar)
    else:
        bar = progress_bar(total=len(batches), desc=desc, enabled=progress)
        steps = _plain(model, batches, logits, last_layer, before_batch, bar)
    return _closing(steps, bar)


def _closing(steps: Iterator, bar: Any) -> Iterator:
    try:
        yield from steps
    finally:
        bar.close()


__all__ = ["forward_batches", "resident", "is_offloaded", "supports_sequential", "decoder_layers",
           "execution_device"]
