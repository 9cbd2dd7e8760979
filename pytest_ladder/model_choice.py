"""Which model a rung runs on: --ladder-model when given, else the model its prereg names. One name everywhere: the
launch guard's one-decision-per-model check, the fixtures that load the model and the archived record use it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from pytest_ladder.options import ModelOptions, flag, MODEL


def rung_model(options: ModelOptions, prereg: Any) -> str:
    """The model a rung runs on: --ladder-model, else the prereg's `model` (one decision per prereg and model)."""
    return options.model or prereg.model


def session_model(options: ModelOptions, preregs: Iterable[Any], default: str) -> str:
    """The model this process loads: --ladder-model, else the one model the bound preregs name, else `default`.

    A session fixture loads one model; rungs naming different models need separate runs (or --ladder-model).
    """
    if options.model:
        return options.model
    named = {prereg.model: prereg.display_path for prereg in preregs}
    if len(named) > 1:
        raise pytest.UsageError(
            "the selected rungs name different models in their preregs ("
            + ", ".join(f"{path}: {model!r}" for model, path in sorted(named.items()))
            + f"); run them separately or choose one with {flag(MODEL)}"
        )
    return next(iter(named), default)
