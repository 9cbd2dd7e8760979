"""Model and corpora fixtures and their options (issue 3): `ladder_model`, `ladder_corpora`.

Registered by the plugin (`pytest_plugins`); imports only the standard library and pytest at module level, so
`pytest --help` and `-m analytical` never load torch. Both fixtures are session-scoped: one model load per process
(per xdist worker), built on first use when it is the embedded default. Under xdist on a box with several GPUs and
`--ladder-device cuda`, worker gwN takes cuda:(N mod GPU count) (a single-GPU --ladder-max-memory budget moves with
it). A model with offloaded layers gets a preflight automatically (--ladder-preflight forces one).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest


def _checked(parse: Any, value: str) -> Any:
    try:
        return parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(value: str) -> str:
    from pytest_ladder.models.loading import parse_device

    return _checked(parse_device, value)


def _dtype(value: str) -> str:
    from pytest_ladder.models.loading import parse_dtype

    return _checked(parse_dtype, value)


def _max_memory(value: str) -> dict:
    from pytest_ladder.models.loading import parse_max_memory

    return _checked(parse_max_memory, value)


def _size(value: str) -> int:
    from pytest_ladder.models.loading import parse_size

    return _checked(parse_size, value)


def _offload_dir(value: str) -> str:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"--ladder-offload-dir {value!r} exists and is not a folder")
    return str(path)


def _corpus(value: str) -> tuple[str, str]:
    task, sep, source = value.partition("=")
    task, source = task.strip(), source.strip()
    if not sep or not task or not source:
        raise argparse.ArgumentTypeError(
            f"--ladder-corpus {value!r}: expected TASK=PATH, e.g. --ladder-corpus text=wiki.jsonl (a .jsonl with a "
            "\"text\" field per line, or a .txt with documents separated by blank lines) or text=hf:wikitext:"
            "wikitext-2-raw-v1:test")
    if not source.startswith("hf:") and not Path(source).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"--ladder-corpus {value!r}: {source} is not a file")
    return task, source


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ladder", "Compression Falsification Ladder")
    group.addoption("--ladder-model", dest="ladder_model", default=None, metavar="MODEL",
                    help="model the rungs run on: 'embedded' (the default: a tiny OLMoE built on first use), a "
                         "folder saved with save_pretrained, or a Hugging Face hub id")
    group.addoption("--ladder-device", dest="ladder_device", type=_device, default=None, metavar="DEVICE",
                    help="cpu, cuda or cuda:N (default: cuda when available, else cpu); under xdist with several "
                         "GPUs and 'cuda', worker gwN takes cuda:N mod count")
    group.addoption("--ladder-max-memory", dest="ladder_max_memory", type=_max_memory, default=None,
                    metavar="BUDGETS",
                    help="per-device memory budgets, e.g. cuda:0=8GiB,cpu=32GiB: layers beyond them are offloaded "
                         "(accelerate device_map='auto')")
    group.addoption("--ladder-offload-dir", dest="ladder_offload_dir", type=_offload_dir, default=None,
                    metavar="DIR", help="folder for disk-offloaded weights (default: a temporary folder)")
    group.addoption("--ladder-dtype", dest="ladder_dtype", type=_dtype, default="auto", metavar="DTYPE",
                    help="auto (the checkpoint's), float32, bfloat16 or float16")
    group.addoption("--ladder-corpus", dest="ladder_corpus", type=_corpus, action="append", default=[],
                    metavar="TASK=PATH",
                    help="use a local .jsonl/.txt file (or hf:<dataset>[:<config>[:<split>]]) as the corpus of "
                         "TASK instead of the built-in one (repeatable)")
    group.addoption("--ladder-gpu-workspace", dest="ladder_gpu_workspace", type=_size, default=None, metavar="SIZE",
                    help="GPU memory the probes may use beyond the weights, e.g. 4GiB (default: ini "
                         "ladder_gpu_workspace, 4GiB)")
    parser.addini("ladder_gpu_workspace", "GPU memory the probes may use beyond the weights (e.g. 4GiB)",
                  default="4GiB")
    group.addoption("--ladder-preflight", dest="ladder_preflight", action="store_true",
                    help="touch a real (offloaded) layer with a dense-only forward before the run (automatic when "
                         "any layer is offloaded)")


def pytest_configure(config: pytest.Config) -> None:
    gpu_workspace(config)  # a bad ini value is a usage error before anything runs


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return None


def gpu_workspace(config: pytest.Config) -> int:
    """Bytes of GPU memory the probes may use beyond the weights: --ladder-gpu-workspace, else the ini's."""
    from pytest_ladder.models.loading import parse_size

    chosen = _option(config, "ladder_gpu_workspace")
    if chosen is not None:
        return chosen
    value = config.getini("ladder_gpu_workspace")
    try:
        return parse_size(value)
    except ValueError as error:
        raise pytest.UsageError(f"ini option ladder_gpu_workspace: {error} (in {config.inipath})") from None


def _worker(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("workerid") if workerinput else os.environ.get("PYTEST_XDIST_WORKER")


def choose_device(requested: str | None, worker: str | None, n_gpus: int) -> str:
    """This process's device: `requested` (--ladder-device; None: cuda when a GPU is there, else cpu), xdist worker
    gwN on cuda:(N mod n_gpus) when several GPUs are there (models.loading.worker_device), a bare cuda as cuda:0."""
    from pytest_ladder.models.loading import worker_device

    device = requested or ("cuda" if n_gpus else "cpu")
    device = worker_device(device, worker, n_gpus if device.startswith("cuda") else 0)
    return "cuda:0" if device == "cuda" else device


def process_device(config: pytest.Config) -> str:
    """The device this process (this xdist worker) runs the model and the checkpoint view on."""
    import torch

    return choose_device(_option(config, "ladder_device"), _worker(config),
                         torch.cuda.device_count() if torch.cuda.is_available() else 0)


def model_spec(config: pytest.Config) -> Any:
    """The ModelSpec the options ask for, with this xdist worker's GPU."""
    from pytest_ladder.models.loading import EMBEDDED, ModelSpec, worker_max_memory

    device = process_device(config)
    from pytest_ladder.plugin import session_model

    return ModelSpec(source=session_model(config, EMBEDDED), device=device,
                     max_memory=worker_max_memory(_option(config, "ladder_max_memory"), device),
                     offload_dir=_option(config, "ladder_offload_dir"), dtype=_option(config, "ladder_dtype") or "auto",
                     gpu_workspace=gpu_workspace(config))


@pytest.fixture(scope="session")
def ladder_model(request: pytest.FixtureRequest) -> Any:
    """The model the rungs run on (pytest_ladder.models.loading.LoadedModel: .model, .tokenizer, .adapter,
    .identity), loaded once per process; its identity (and preflight, if run) goes into decision.json."""
    from pytest_ladder.models.loading import ModelLoadError, load_model
    from pytest_ladder.models.preflight import PreflightError, preflight
    from pytest_ladder.rung import record_context

    config = request.config
    spec = model_spec(config)
    try:
        loaded = load_model(spec)
    except ModelLoadError as error:
        pytest.fail(str(error), pytrace=False)
    identity = dict(loaded.identity)
    if _option(config, "ladder_preflight") or loaded.offloaded:
        try:
            identity["preflight"] = preflight(loaded).as_dict()
        except PreflightError as error:
            pytest.fail(str(error), pytrace=False)
    loaded.identity = identity
    record_context(config, "model", identity)
    return loaded


@pytest.fixture(scope="session")
def ladder_corpora(request: pytest.FixtureRequest) -> dict:
    """Task -> Corpus (calibration and held-out splits, disjoint) for code, math, text and any --ladder-corpus task;
    the data identity (files and SHA-256, split rule) goes into decision.json."""
    from pytest_ladder.models.corpora import TASKS, CorpusError, data_identity, load_corpora
    from pytest_ladder.rung import record_context

    sources = dict(_option(request.config, "ladder_corpus") or [])
    try:
        corpora = load_corpora(TASKS, sources)
    except CorpusError as error:
        pytest.fail(str(error), pytrace=False)
    record_context(request.config, "data", data_identity(corpora))
    return corpora
