"""The plugin's options: their names, the `type=` checks that turn a bad value into a clear argparse error, and
`LadderOptions` / `ModelOptions`, read once from the config (`ladder_options(config)`) and passed everywhere.

Import-light: the standard library and pytest at module level; the model-option parsers (models.loading) load when a
value is checked.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

# option destinations (`config.getoption(...)`) and ini names
PREREG_DIR = "ladder_prereg_dir"
ARCHIVE_DIR = "ladder_archive_dir"
REPLICATE = "ladder_replicate"
KILL_FAST = "ladder_kill_fast"
MODEL = "ladder_model"
DEVICE = "ladder_device"
MAX_MEMORY = "ladder_max_memory"
OFFLOAD_DIR = "ladder_offload_dir"
DTYPE = "ladder_dtype"
CORPUS = "ladder_corpus"
PREFLIGHT = "ladder_preflight"
GPU_WORKSPACE = "ladder_gpu_workspace"
XDIST_WORKERS = "numprocesses"  # pytest-xdist's -n, recorded in decision.json when xdist is there

DEFAULT_GPU_WORKSPACE = "4GiB"


def flag(dest: str) -> str:
    """The command-line spelling of an option: ladder_kill_fast -> --ladder-kill-fast."""
    return "--" + dest.replace("_", "-")


# ------------------------------------------------------------------------------------------- value checks ---


def _checked(parse: Callable[[str], Any], value: str) -> Any:
    try:
        return parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def directory(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} exists and is not a folder")
    return path


def device(value: str) -> str:
    from pytest_ladder.models.loading import parse_device

    return _checked(parse_device, value)


def dtype(value: str) -> str:
    from pytest_ladder.models.loading import parse_dtype

    return _checked(parse_dtype, value)


def max_memory(value: str) -> dict:
    from pytest_ladder.models.loading import parse_max_memory

    return _checked(parse_max_memory, value)


def size(value: str) -> int:
    from pytest_ladder.models.loading import parse_size

    return _checked(parse_size, value)


def offload_dir(value: str) -> str:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{flag(OFFLOAD_DIR)} {value!r} exists and is not a folder")
    return str(path)


def corpus(value: str) -> tuple[str, str]:
    task, sep, source = value.partition("=")
    task, source = task.strip(), source.strip()
    if not sep or not task or not source:
        raise argparse.ArgumentTypeError(
            f"{flag(CORPUS)} {value!r}: expected TASK=PATH, e.g. {flag(CORPUS)} text=wiki.jsonl (a .jsonl with a "
            "\"text\" field per line, or a .txt with documents separated by blank lines) or text=hf:wikitext:"
            "wikitext-2-raw-v1:test")
    if not source.startswith("hf:") and not Path(source).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{flag(CORPUS)} {value!r}: {source} is not a file")
    return task, source


# -------------------------------------------------------------------------------------------- read once ---


@dataclass(frozen=True)
class ModelOptions:
    """What the model options ask for; the device is the option as given (each process picks its own GPU)."""

    model: str | None = None  # None: the model the preregs name (model_choice.py)
    device: str | None = None  # None: cuda when a GPU is there, else cpu
    max_memory: dict | None = None
    offload_dir: str | None = None
    dtype: str = "auto"
    corpus: tuple[tuple[str, str], ...] = ()
    preflight: bool = False
    gpu_workspace: int = 4 * 2**30  # bytes


@dataclass(frozen=True)
class LadderOptions:
    """Every ladder option, resolved against the ini file and the invocation folder."""

    prereg_dir: Path
    archive_dir: Path
    replicate: bool
    kill_fast: bool
    xdist_workers: Any
    model: ModelOptions


_options_key = pytest.StashKey[LadderOptions]()


def _ini_base(config: pytest.Config) -> Path:
    return Path(config.inipath).parent if config.inipath else Path(config.rootpath)


def _folder(config: pytest.Config, dest: str) -> Path:
    given = config.getoption(dest)
    if given is not None:
        return (config.invocation_params.dir / given).resolve()
    return (_ini_base(config) / config.getini(dest)).resolve()


def _ini_size(config: pytest.Config, name: str) -> int:
    from pytest_ladder.models.loading import parse_size

    try:
        return parse_size(config.getini(name))
    except ValueError as error:
        raise pytest.UsageError(f"ini option {name}: {error} (in {config.inipath})") from None


def read_options(config: pytest.Config) -> LadderOptions:
    """Read every ladder option from `config` (a bad ini value is a UsageError naming it)."""
    get = config.getoption
    kill_fast = get(KILL_FAST)
    workspace = get(GPU_WORKSPACE)
    model = ModelOptions(
        model=get(MODEL),
        device=get(DEVICE),
        max_memory=get(MAX_MEMORY),
        offload_dir=get(OFFLOAD_DIR),
        dtype=get(DTYPE) or "auto",
        corpus=tuple(get(CORPUS) or ()),
        preflight=bool(get(PREFLIGHT)),
        gpu_workspace=_ini_size(config, GPU_WORKSPACE) if workspace is None else workspace,
    )
    return LadderOptions(
        prereg_dir=_folder(config, PREREG_DIR),
        archive_dir=_folder(config, ARCHIVE_DIR),
        replicate=bool(get(REPLICATE)),
        kill_fast=bool(config.getini(KILL_FAST) if kill_fast is None else kill_fast),
        xdist_workers=get(XDIST_WORKERS, None),
        model=model,
    )


def configure_options(config: pytest.Config) -> None:
    """pytest_configure: read the options once (errors surface before anything runs)."""
    config.stash[_options_key] = read_options(config)
    cuda_allocator_defaults(config.stash[_options_key].model.device)


ALLOCATOR_ENV, ALLOCATOR_DEFAULT = "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"


def cuda_allocator_defaults(device: str | None) -> bool:
    """A run that may use a GPU gets CUDA's caching allocator in expandable segments, unless PYTORCH_CUDA_ALLOC_CONF
    says otherwise or CUDA has started already (its allocator is fixed then). The probes' chunks change size from
    piece to piece, and the fixed segments they split held 21–26 GiB reserved for 16–17.7 GiB allocated on the H200:
    reserved memory is what the GPU budget is measured by. True when this call set it."""
    import os
    import sys

    if device is not None and not device.startswith("cuda") or ALLOCATOR_ENV in os.environ:
        return False
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return False
    os.environ[ALLOCATOR_ENV] = ALLOCATOR_DEFAULT
    return True


def ladder_options(config: pytest.Config) -> LadderOptions:
    """The options read at configure time."""
    return config.stash[_options_key]


def ini_base(config: pytest.Config) -> Path:
    """The folder relative prereg paths in rung modules are resolved against: the ini file's, else rootdir."""
    return _ini_base(config)


def add_options(parser: pytest.Parser) -> None:
    """Register the ladder's options and ini values (called from plugin.pytest_addoption)."""
    group = parser.getgroup("ladder", "Compression Falsification Ladder")
    group.addoption(flag(PREREG_DIR), dest=PREREG_DIR, type=directory, default=None, metavar="DIR",
                    help="folder holding <rung>/tau.json preregistrations (default: ini ladder_prereg_dir, 'prereg')")
    group.addoption(flag(ARCHIVE_DIR), dest=ARCHIVE_DIR, type=directory, default=None, metavar="DIR",
                    help="folder the verdicts are archived in (default: ini ladder_archive_dir, 'archive')")
    group.addoption(flag(REPLICATE), dest=REPLICATE, action="store_true",
                    help="run a prereg that is already decided on this model again, archived as a replication of "
                         "the decision")
    group.addoption(flag(KILL_FAST), dest=KILL_FAST, action="store_true", default=None,
                    help="once a rung is killed, skip its remaining tests and go on with the next rung (-x per rung)")
    group.addoption(flag(MODEL), dest=MODEL, default=None, metavar="MODEL",
                    help="model the rungs run on: 'embedded' (the default: a tiny OLMoE built on first use), a "
                         "folder saved with save_pretrained, or a Hugging Face hub id")
    group.addoption(flag(DEVICE), dest=DEVICE, type=device, default=None, metavar="DEVICE",
                    help="cpu, cuda or cuda:N (default: cuda when available, else cpu); under xdist with several "
                         "GPUs and 'cuda', worker gwN takes cuda:N mod count")
    group.addoption(flag(MAX_MEMORY), dest=MAX_MEMORY, type=max_memory, default=None, metavar="BUDGETS",
                    help="per-device memory budgets, e.g. cuda:0=8GiB,cpu=32GiB: layers beyond them are offloaded "
                         "(accelerate device_map='auto')")
    group.addoption(flag(OFFLOAD_DIR), dest=OFFLOAD_DIR, type=offload_dir, default=None, metavar="DIR",
                    help="folder for disk-offloaded weights (default: a temporary folder)")
    group.addoption(flag(DTYPE), dest=DTYPE, type=dtype, default="auto", metavar="DTYPE",
                    help="auto (the checkpoint's), float32, bfloat16 or float16")
    group.addoption(flag(CORPUS), dest=CORPUS, type=corpus, action="append", default=[], metavar="TASK=PATH",
                    help="use a local .jsonl/.txt file (or hf:<dataset>[:<config>[:<split>]]) as the corpus of "
                         "TASK instead of the built-in one (repeatable)")
    group.addoption(flag(PREFLIGHT), dest=PREFLIGHT, action="store_true",
                    help="touch a real (offloaded) layer with a dense-only forward before the run (automatic when "
                         "any layer is offloaded)")
    group.addoption(flag(GPU_WORKSPACE), dest=GPU_WORKSPACE, type=size, default=None, metavar="SIZE",
                    help=f"GPU memory the probes may use beyond the weights, e.g. 4GiB (default: ini "
                         f"{GPU_WORKSPACE}, {DEFAULT_GPU_WORKSPACE})")
    parser.addini(KILL_FAST, "skip a killed rung's remaining tests (like -x, per rung)", type="bool", default=False)
    parser.addini(PREREG_DIR, "folder of <rung>/tau.json preregistrations", default="prereg")
    parser.addini(ARCHIVE_DIR, "folder the verdicts are archived in", default="archive")
    parser.addini(GPU_WORKSPACE, "GPU memory the probes may use beyond the weights (e.g. 4GiB)",
                  default=DEFAULT_GPU_WORKSPACE)
