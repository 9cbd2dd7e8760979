"""Model loading: an embedded model (`embedded`, `embedded-qwen`, `embedded-mixtral`), a local folder or a hub id,
through transformers `from_pretrained` and accelerate (device_map / max_memory / offload_folder), with the identity
the archive records.

Placement: no --ladder-max-memory -> the whole model on `device` (plain CPU load, or device_map {"": "cuda:N"});
with it -> device_map="auto" under those budgets, layers that do not fit go to CPU (offloaded behind the GPU) and
then to disk in `offload_dir` (a temporary folder when not given).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_DEVICE = re.compile(r"^(cpu|mps|cuda(?::\d+)?)$")
SHA_CACHE = ".ladder-sha256.json"


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message names the option and the fix."""


def parse_device(text: str) -> str:
    """'cpu', 'mps', 'cuda' or 'cuda:N' (ValueError otherwise)."""
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"--ladder-device {text!r}: expected cpu, cuda or cuda:N (e.g. cuda:0)")
    return value


def parse_dtype(text: str) -> str:
    value = text.strip().lower()
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    value = aliases.get(value, value)
    if value not in DTYPES:
        raise ValueError(f"--ladder-dtype {text!r}: expected one of {', '.join(DTYPES)}")
    return value


def parse_size(text: str) -> int:
    """'8GiB' -> 8589934592, '500MB' -> 500000000, '1024' -> 1024 bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 8GiB, 500MiB or 32GB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()])


def parse_max_memory(text: str) -> dict[int | str, int]:
    """'cuda:0=8GiB,cpu=32GiB' -> {0: 8589934592, 'cpu': 34359738368} (accelerate's max_memory: GPU index or
    'cpu'/'mps' -> bytes). ValueError names the option and shows an example."""
    example = "e.g. --ladder-max-memory cuda:0=8GiB,cpu=32GiB"
    budgets: dict[int | str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, sep, size = item.partition("=")
        device = device.strip().lower()
        if not sep:
            raise ValueError(f"--ladder-max-memory {text!r}: {item!r} is not DEVICE=SIZE; {example}")
        if re.fullmatch(r"cuda:\d+|\d+", device):
            key: int | str = int(device.split(":")[-1])
        elif device in ("cpu", "mps"):
            key = device
        else:
            raise ValueError(f"--ladder-max-memory {text!r}: unknown device {device!r} (use cuda:N, cpu or mps); "
                             f"{example}")
        try:
            budgets[key] = parse_size(size)
        except ValueError as error:
            raise ValueError(f"--ladder-max-memory {text!r}: {error}; {example}") from None
    if not budgets:
        raise ValueError(f"--ladder-max-memory {text!r} is empty; {example}")
    return budgets


def worker_device(device: str, worker: str | None, n_gpus: int) -> str:
    """The device of xdist worker `worker` ('gwN'): with several GPUs and a bare 'cuda', worker gwN takes
    cuda:(N mod n_gpus); an explicit cuda:N, a CPU, one GPU or no xdist keep `device`."""
    if device != "cuda" or n_gpus < 2 or not worker or not worker.startswith("gw"):
        return device
    return f"cuda:{int(worker[2:]) % n_gpus}"


def worker_max_memory(max_memory: dict | None, device: str) -> dict | None:
    """Move a single-GPU budget to the worker's GPU (the budget names cuda:0, the worker runs on cuda:N)."""
    if not max_memory or not device.startswith("cuda:"):
        return max_memory
    gpus = [k for k in max_memory if isinstance(k, int)]
    target = int(device.split(":")[1])
    if len(gpus) == 1 and gpus[0] != target:
        moved = {k: v for k, v in max_memory.items() if k != gpus[0]}
        moved[target] = max_memory[gpus[0]]
        return moved
    return max_memory


@dataclass(frozen=True)
class ModelSpec:
    """What to load and where: `source` "embedded", a local folder or a hub id (at `revision`)."""

    source: str = EMBEDDED
    device: str = "cpu"
    max_memory: dict | None = None
    offload_dir: str | None = None
    dtype: str = "auto"
    revision: str | None = None
    gpu_workspace: int | None = None  # bytes of GPU memory the probes may use beyond the weights (None: unbounded)


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer, MoE adapter and identity record (name, revision or weight hash, dtype,
    placement, config)."""

    model: Any
    tokenizer: Any
    adapter: Any
    identity: dict
    spec: ModelSpec
    path: Path = field(default_factory=Path)

    @property
    def offloaded(self) -> bool:
        """True when some parameter is a meta placeholder (its values live in an accelerate offload map)."""
        return any(p.device.type == "meta" for p in self.model.parameters())

    @property
    def prefix_token_id(self) -> int:
        from pytest_ladder.models.nll import prefix_token_id

        return prefix_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        from pytest_ladder.models.nll import default_max_length

        return default_max_length(self.model, self.tokenizer)


def embedded_names() -> tuple[str, ...]:
    """The names of the embedded models (models/embedded.py EMBEDDED_MODELS), `embedded` first."""
    from pytest_ladder.models.embedded import EMBEDDED_MODELS

    return tuple(EMBEDDED_MODELS)


def is_embedded(source: str) -> bool:
    """Is `source` the name of an embedded model (built here on first use) rather than a folder or hub id?"""
    return source in embedded_names()


def resolve_source(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """(local folder, hub revision or None) for an embedded model's name, a folder, or a hub id (snapshot_download)."""
    if is_embedded(source):
        from pytest_ladder.models.embedded import ensure_embedded_model, recipe_named

        return ensure_embedded_model(recipe=recipe_named(source)), None
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if path.exists() or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"--ladder-model {source!r}: not a model folder (expected config.json and "
                             "*.safetensors from save_pretrained)")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=source, revision=revision,
                                   allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"])
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise ModelLoadError(
            f"--ladder-model {source!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(error).__name__}: {error}). Pass a local folder saved with save_pretrained, or one "
            f"of the embedded models ({', '.join(embedded_names())})."
        ) from None
    folder = Path(folder)
    return folder, folder.name  # snapshots/<commit hash>


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(folder: Path) -> tuple[str, dict[str, str]]:
    """sha256 over the checkpoint's safetensors files ("<name> <sha256>" lines, sorted by name), and the per-file
    hashes. Per-file hashes are cached beside the files (keyed by size and mtime) so a reload does not rehash."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} holds no *.safetensors file; pytest-ladder reads safetensors checkpoints "
                             "(save with model.save_pretrained(folder))")
    cache_path = folder / SHA_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    hashes: dict[str, str] = {}
    stale = []
    for file in files:
        stat = file.stat()
        entry = cache.get(file.name)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            hashes[file.name] = entry["sha256"]
        else:
            stale.append((file, stat))
    # shards hash in parallel threads (hashlib releases the GIL on large blocks)
    with ThreadPoolExecutor(max_workers=max(1, min(len(stale), os.cpu_count() or 1))) as pool:
        for (file, stat), digest in zip(stale, pool.map(_file_sha256, [f for f, _ in stale])):
            hashes[file.name] = digest
            cache[file.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    changed = bool(stale)
    if changed:
        try:
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            tmp.replace(cache_path)
        except OSError:
            pass  # a read-only folder: hash again next time
    combined = hashlib.sha256("".join(f"{n} {h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
    return combined, hashes


def placement_summary(model: Any) -> dict[str, int]:
    """Number of device_map entries per device ('cuda:0', 'cpu', 'disk'), or {device: 1} without a device map."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        devices = {str(p.device) for p in model.parameters() if p.device.type != "meta"}
        return {device: 1 for device in sorted(devices)}
    return dict(sorted(Counter(_device_name(d) for d in device_map.values()).items()))


def _device_name(device: Any) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def model_identity(model: Any, adapter: Any, spec: ModelSpec, path: Path, revision: str | None) -> dict:
    """The archive's model record: name, source, revision, weights_sha256, dtype, placement, sizes, config."""
    combined, files = weights_sha256(path)
    config = model.config
    dtypes = Counter(str(p.dtype).replace("torch.", "") for p in model.parameters())
    from pytest_ladder.models.nll import default_max_length

    return {
        "name": spec.source if is_embedded(spec.source) else (Path(spec.source).name or spec.source),
        "source": spec.source if is_embedded(spec.source) or revision else str(path),
        "path": str(path),
        "revision": revision,
        "weights_sha256": combined,
        "weights_files": files,
        "dtype": dtypes.most_common(1)[0][0],
        "device": spec.device,
        "max_memory": None if spec.max_memory is None else {str(k): v for k, v in spec.max_memory.items()},
        "device_map": placement_summary(model),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "architecture": adapter.architecture,
        "class": type(model).__name__,
        "experts_implementation": getattr(config, "_experts_implementation", None),
        "max_length": default_max_length(model),
        "config": {
            "model_type": config.model_type,
            "num_hidden_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "num_experts": adapter.n_experts,
            "num_experts_per_tok": adapter.top_k,
            "intermediate_size": adapter.intermediate_size,
            "moe_layers": adapter.moe_layers(),
            "vocab_size": config.vocab_size,
            "norm_topk_prob": getattr(config, "norm_topk_prob", None),
        },
    }


def weight_bytes(path: Path, dtype: str = "auto") -> int:
    """Bytes of the checkpoint's tensors at the dtype they will be loaded in (`auto`: as stored)."""
    import torch

    from pytest_ladder.models.checkpoint import Checkpoint

    size = None if dtype == "auto" else torch.empty((), dtype=getattr(torch, dtype)).element_size()
    total = 0
    for stored, shape in Checkpoint(path).dtype_bytes().values():
        total += math.prod(shape) * (size or torch.empty((), dtype=stored).element_size())
    return total


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


def check_gpu_budget(spec: ModelSpec, path: Path) -> None:
    """Refuse, before any work, a model whose weights on the GPU plus the declared workspace do not fit it.

    Weights on the GPU: all of them, or at most the `--ladder-max-memory` budget of that GPU (the rest is
    offloaded). The message names what to lower."""
    import torch

    if not spec.device.startswith("cuda") or not torch.cuda.is_available():
        return
    device = torch.device(spec.device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    weights = weight_bytes(path, spec.dtype)
    capped = None
    if spec.max_memory:
        capped = spec.max_memory.get(index, spec.max_memory.get(f"cuda:{index}"))
        weights = min(weights, capped) if capped is not None else weights
    workspace = spec.gpu_workspace or 0
    free, total = torch.cuda.mem_get_info(index)
    if weights + workspace > free:
        raise ModelLoadError(
            f"--ladder-model {spec.source!r}: {_gib(weights)} of weights on cuda:{index}"
            f"{' (the --ladder-max-memory cap)' if capped is not None else ''} plus the {_gib(workspace)} "
            f"--ladder-gpu-workspace exceed the {_gib(free)} free of its {_gib(total)}. Lower --ladder-gpu-workspace, "
            f"or keep fewer weights on the GPU with --ladder-max-memory cuda:{index}=<size>,cpu=<size> (the rest is "
            "offloaded behind the GPU)")


TOKENIZER_PROBE = "The ladder measures what a compressed model keeps: 12 tokens, or so."


def check_tokenizer(tokenizer: Any, model: Any, spec: ModelSpec, path: Path) -> None:
    """Refuse a tokenizer that cannot feed the model: one that encodes text to no tokens (transformers builds an
    empty one, without a word, for a folder that holds no tokenizer files) or to ids past the model's vocabulary."""
    ids = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    vocab = getattr(getattr(model.config, "text_config", None) or model.config, "vocab_size", None)
    files = sorted(p.name for p in path.iterdir() if p.is_file() and ("token" in p.name or p.name in (
        "vocab.json", "merges.txt", "spiece.model")))
    if not ids:
        raise ModelLoadError(
            f"--ladder-model {spec.source!r}: the tokenizer read from {path} encodes text to no tokens (its "
            f"vocabulary has {len(tokenizer)} entries; tokenizer files there: {', '.join(files) or 'none'}). Put the "
            "model's tokenizer beside its weights (tokenizer.json and tokenizer_config.json, e.g. with "
            "tokenizer.save_pretrained(folder))")
    if vocab is not None and max(ids) >= int(vocab):
        raise ModelLoadError(
            f"--ladder-model {spec.source!r}: the tokenizer read from {path} gives id {max(ids)}, past the model's "
            f"vocabulary of {vocab} (config.json vocab_size; tokenizer files: {', '.join(files) or 'none'}): it is "
            "not this model's tokenizer; put the model's own beside its weights")


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load `spec` with transformers + accelerate, pick its MoE adapter and compute its identity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_ladder.models.adapters import adapter_for

    path, revision = resolve_source(spec.source, spec.revision)
    check_gpu_budget(spec, path)
    options: dict[str, Any] = {"dtype": "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)}
    if spec.max_memory:
        options.update(device_map="auto", max_memory=dict(spec.max_memory),
                       offload_folder=spec.offload_dir or tempfile.mkdtemp(prefix="ladder-offload-"))
    elif spec.device != "cpu":
        options["device_map"] = {"": spec.device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **options)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: weights whose shapes the config denies
        raise ModelLoadError(f"--ladder-model {spec.source!r}: loading {path} failed: {error}") from error
    check_tokenizer(tokenizer, model, spec, path)
    model.eval()
    if spec.max_memory and spec.device != "cpu":
        from pytest_ladder.models.weights import pin_offloaded

        pin_offloaded(model)  # the offloaded layers' copies onto the GPU at full speed
    adapter = adapter_for(model)
    identity = model_identity(model, adapter, spec, path, revision)
    return LoadedModel(model, tokenizer, adapter, identity, spec, path)


__all__ = ["ModelSpec", "LoadedModel", "load_model", "check_tokenizer", "parse_max_memory", "parse_device",
           "parse_dtype", "parse_size", "worker_device", "worker_max_memory", "weights_sha256", "resolve_source",
           "ModelLoadError", "EMBEDDED", "embedded_names", "is_embedded"]
