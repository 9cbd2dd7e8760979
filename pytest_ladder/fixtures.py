"""Model and corpora fixtures: `ladder_model`, `ladder_corpora`, from the options read once (options.ModelOptions).

Registered by the plugin (`pytest_plugins`); imports only the standard library and pytest at module level, so
`pytest --help` and `-m analytical` never load torch. Both fixtures are session-scoped: one model load per process
(per xdist worker), built on first use when it is the embedded default. Under xdist on a box with several GPUs and
`--ladder-device cuda`, worker gwN takes cuda:(N mod GPU count) (a single-GPU --ladder-max-memory budget moves with
it); the checkpoint view (rung_fixtures.ladder_weights) takes the same device. A model with offloaded layers gets a
preflight automatically (--ladder-preflight forces one). The session preparation (prepare.py) loads both before any
rung runs; the fixtures hand out what it loaded.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_ladder.options import ladder_options
from pytest_ladder.state import ladder_state


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

    return choose_device(ladder_options(config).model.device, _worker(config),
                         torch.cuda.device_count() if torch.cuda.is_available() else 0)


def session_model_name(config: pytest.Config) -> str:
    """The one model this process's rungs run on (model_choice.session_model over the bound preregs)."""
    from pytest_ladder.model_choice import session_model
    from pytest_ladder.models.loading import EMBEDDED

    return session_model(ladder_options(config).model, ladder_state(config).preregs.values(), EMBEDDED)


def model_spec(config: pytest.Config) -> Any:
    """The ModelSpec the options ask for, with this xdist worker's GPU."""
    from pytest_ladder.models.loading import ModelSpec, worker_max_memory

    options = ladder_options(config).model
    device = process_device(config)
    return ModelSpec(source=session_model_name(config), device=device,
                     max_memory=worker_max_memory(options.max_memory, device), offload_dir=options.offload_dir,
                     dtype=options.dtype, gpu_workspace=options.gpu_workspace)


def load_session_model(config: pytest.Config) -> Any:
    """Load the session's model (model_spec) and run its preflight when offloaded or asked for; its identity is
    recorded under the name the ladder chose it by (model_choice.py). ModelLoadError / PreflightError on failure."""
    from pytest_ladder.models.loading import load_model
    from pytest_ladder.models.preflight import preflight

    spec = model_spec(config)
    loaded = load_model(spec)
    identity = {**loaded.identity, "name": spec.source}
    if ladder_options(config).model.preflight or loaded.offloaded:
        identity["preflight"] = preflight(loaded).as_dict()
    loaded.identity = identity
    return loaded


@pytest.fixture(scope="session")
def ladder_model(request: pytest.FixtureRequest) -> Any:
    """The model the rungs run on (pytest_ladder.models.loading.LoadedModel: .model, .tokenizer, .adapter,
    .identity), loaded once per process (by the session preparation); its identity (and preflight, if run) goes
    into decision.json."""
    from pytest_ladder.models.loading import ModelLoadError
    from pytest_ladder.models.preflight import PreflightError
    from pytest_ladder.prepare import prepared
    from pytest_ladder.rung import record_context

    config = request.config
    loaded = prepared(config).model
    if loaded is None:  # asked for by name at run time (request.getfixturevalue): load it now
        try:
            loaded = load_session_model(config)
        except (ModelLoadError, PreflightError) as error:
            pytest.fail(str(error), pytrace=False)
    record_context(config, "model", loaded.identity)
    return loaded


@pytest.fixture(scope="session")
def ladder_corpora(request: pytest.FixtureRequest) -> dict:
    """Task -> Corpus (calibration and held-out splits, disjoint) for code, math, text and any --ladder-corpus task;
    the data identity (files and SHA-256, split rule) goes into decision.json."""
    from pytest_ladder.models.corpora import TASKS, CorpusError, data_identity, load_corpora
    from pytest_ladder.prepare import prepared
    from pytest_ladder.rung import record_context

    corpora = prepared(request.config).corpora
    if corpora is None:
        try:
            corpora = load_corpora(TASKS, dict(ladder_options(request.config).model.corpus))
        except CorpusError as error:
            pytest.fail(str(error), pytrace=False)
    record_context(request.config, "data", data_identity(corpora))
    return corpora
