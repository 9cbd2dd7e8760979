"""Shared fixtures for rung modules: the checkpoint's weights, the shared captures, cells resolved against the model.

Registered by the plugin (import-light: heavy imports happen inside the fixtures). A rung names its model in the
prereg (`model`), `--ladder-model` overrides it; every fixture here resolves the model the requesting rung runs on
and caches per model for the session, so one capture pass serves every rung.
"""

from __future__ import annotations

import math
from fractions import Fraction
from collections.abc import Callable
from typing import Any

import pytest

_cache_key = pytest.StashKey[dict]()


def resolve_layer(spec: int | str, n_layers: int) -> int:
    """A cell's layer on an `n_layers` model: an int is absolute; "a/b" is the relative position floor(a·n/b).

    "3/16" is layer 3 of OLMoE-1B-7B's 16 and layer 1 of an 8-layer model, so one prereg serves every depth.
    """
    if isinstance(spec, bool):
        raise TypeError(f"layer {spec!r}: give an int or 'a/b'")
    if isinstance(spec, int):
        layer = spec
    else:
        try:
            fraction = Fraction(str(spec))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"layer {spec!r}: give an absolute int or a relative position like '3/16'") from None
        if not 0 <= fraction < 1:
            raise ValueError(f"layer {spec!r}: a relative position must lie in [0, 1)")
        layer = math.floor(fraction * n_layers)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {spec!r} resolves to {layer}, outside 0..{n_layers - 1}")
    return layer


def resolve_size(fraction: float, full: int, *, minimum: int = 1) -> int:
    """A size given as a fraction of a model dimension (e.g. rank 16/2048 of hidden): ceil(fraction·full), >= minimum."""
    if not 0 < fraction <= 1:
        raise ValueError(f"size fraction {fraction!r} must lie in (0, 1]")
    return max(minimum, math.ceil(fraction * full - 1e-9))


def cell_layers(prereg: Any, n_layers: int) -> dict[str, int]:
    """{cell id: layer index} of every prereg cell that names a layer, resolved against an `n_layers` model."""
    return {c.id: resolve_layer(c.params["layer"], n_layers) for c in prereg.cells if "layer" in c.params}


def compressor_study(rung_cache: dict, request: pytest.FixtureRequest, prereg: Any, n_layers: int, seeds: list[int],
                     compressor: Any, fraction: Callable[[], float], controls: tuple[Callable, Callable],
                     build: Callable[[dict], Any]) -> Any:
    """A generic rung's study, once per rung: `build({key: compressor})` over the prereg's compressor (METHOD), its
    declared-harmful control (HARMFUL) and one τ baseline per seed storing the same `fraction()` of the dense bytes
    (`controls`: the kind's random_control and harmful_control); the cells' layers (rung_cache["layers"]) and what
    was chosen are recorded in decision.json."""
    from pytest_ladder.compressors import HARMFUL, METHOD
    from pytest_ladder.rung import record_cell

    if "study" not in rung_cache:
        random_control, harmful_control = controls
        share = fraction()
        baselines = {("random", seed): random_control(compressor, seed, share) for seed in seeds}
        rung_cache["layers"] = cell_layers(prereg, n_layers)
        rung_cache["study"] = build({METHOD: compressor, HARMFUL: harmful_control(compressor), **baselines})
        record_cell(request.config, prereg.rung, {"layers": rung_cache["layers"],
                                                  "compressor": prereg.params["compressor"],
                                                  "random_control": type(baselines[("random", seeds[0])]).__name__,
                                                  "storage_fraction": share})
    return rung_cache["study"]


def budget_ranks(request: pytest.FixtureRequest, cell: Any, prereg: Any, n_layers: int,
                 spectra: Any) -> tuple[int, dict[str, int]]:
    """(layer index, {matrix kind: budget rank}) of a cell that names a layer and a prereg with `rank_fraction`, the
    ranks from `spectra(index)` ({kind: singular values}); recorded in the decision's context under
    "<rung> <cell id>" (G0 and its corrected claims)."""
    from pytest_ladder.rung import record_cell

    index = resolve_layer(cell.params["layer"], n_layers)
    ranks = {k: resolve_size(prereg.params["rank_fraction"], s.shape[-1]) for k, s in spectra(index).items()}
    record_cell(request.config, f"{prereg.rung} {cell.id}", {"layer": index, "ranks": ranks})
    return index, ranks


def resident_experts(loaded: Any, device: Any, checkpoint: Any) -> Callable[[int, str], Any]:
    """(layer, projection) -> that layer's stacked expert matrices as a view of the loaded model's parameters when
    they are resident on `device` (models.adapters.MoEAdapter.resident_experts) and hold the `checkpoint`'s values
    exactly (its dtype, or a wider float), else None. Weights-only rungs read the checkpoint for the rest: the model
    already on the GPU is not read from disk and moved there again. None throughout when `loaded` is None (the
    session loaded no model: a weights-only selection reads only the checkpoint)."""
    import torch

    def resident(layer: int, projection: str) -> Any:
        view = None if loaded is None else loaded.adapter.resident_experts(layer, projection, device)
        # exact: the view's float type holds every value of the stored one (bf16/fp16 in float32, float32 in float64)
        return view if view is not None and torch.promote_types(checkpoint.expert_dtype, view.dtype) == view.dtype \
            else None

    return resident


@pytest.fixture(scope="module")
def rung_cache() -> Any:
    """A dict that lives as long as the rung module: what its fixtures compute once for all its tests. When the
    rung ends, the GPU memory its results held goes back to the device (not kept in torch's cache)."""
    cache: dict = {}
    yield cache
    cache.clear()
    import sys

    # a killed rung's last failure keeps its frames (and their GPU tensors) in sys.last_* for post-mortem debugging
    # until the next test's call; --pdb has had them by now, so they go with the rung
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        sys.__dict__.pop(name, None)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture
def ladder_layers(ladder_weights: Any) -> int:
    """The model's number of decoder layers, from its checkpoint's config: the one source every rung resolves its
    cells' relative layers ("3/16") against."""
    return ladder_weights.n_layers


@pytest.fixture
def attention_study(rung_cache: dict, request: pytest.FixtureRequest, ladder_model: Any, ladder_corpora: Any,
                    prereg: Any, ladder_seeds: list[int], ladder_layers: int) -> Any:
    """G10-scan's and G10.5's AttentionStudy (pytest_ladder.probes.attention) from the prereg's params, once per rung:
    the cells' layers resolved against the model (rung_cache["layers"]), the sparse parts when the prereg names
    `top_k_keys` (k random keys per query for each τ seed); what it resolved is recorded in decision.json."""
    from pytest_ladder.probes.attention import AttentionStudy, SparseSpec
    from pytest_ladder.rung import record_cell

    if "study" not in rung_cache:
        p = prereg.params
        rung_cache["layers"] = cell_layers(prereg, ladder_layers)
        sparse = SparseSpec(p["top_k_keys"], tuple(ladder_seeds)) if "top_k_keys" in p else None
        rung_cache["study"] = study = AttentionStudy(
            ladder_model, ladder_corpora, rung_cache["layers"].values(), n_points=prereg.data_points,
            decays=p["decays"], ridges=p["ridges"], calibration_tokens_per_feature=p["calibration_tokens_per_feature"],
            sparse=sparse)
        record_cell(request.config, prereg.rung, {"layers": rung_cache["layers"], "n_features": study.n_features,
                                                  "calibration_tokens": study.calibration_tokens})
    return rung_cache["study"]


@pytest.fixture
def ladder_routing(request: pytest.FixtureRequest, ladder_model: Any, ladder_corpora: Any, prereg: Any) -> Any:
    """The session's routing captures (pytest_ladder.probes.routes.RoutingStudy) at the rung's held-out size: rungs
    that agree on N share one capture pass (the model and corpora are the session's; kept in the session's stash)."""
    from pytest_ladder.probes.routes import RoutingStudy

    cache = _cache(request.config)
    key = ("routing", prereg.data_points)
    if key not in cache:
        cache[key] = RoutingStudy(ladder_model, ladder_corpora, n_points=prereg.data_points)
    return cache[key]


def _cache(config: pytest.Config) -> dict:
    return config.stash.setdefault(_cache_key, {})


@pytest.fixture
def ladder_weights(request: pytest.FixtureRequest) -> Any:
    """The rung's model as a lazy safetensors view (pytest_ladder.models.checkpoint.Checkpoint): no forward pass.

    Tensors are delivered on this process's device, the model's (--ladder-device; under xdist each worker its own
    GPU), so spectra of a full-size model run on the GPU.
    """
    from pytest_ladder.fixtures import process_device, session_model_name
    from pytest_ladder.models.checkpoint import Checkpoint
    from pytest_ladder.models.loading import ModelLoadError, resolve_source

    name = session_model_name(request.config)
    cache = _cache(request.config)
    if ("weights", name) not in cache:
        try:
            folder, _ = resolve_source(name)
        except ModelLoadError as error:
            pytest.fail(str(error), pytrace=False)
        cache[("weights", name)] = Checkpoint(folder, device=process_device(request.config))
    return cache[("weights", name)]


@pytest.fixture
def ladder_workspace(request: pytest.FixtureRequest) -> Any:
    """Where this process's probes compute and how many bytes of that device they may hold at once beyond the
    weights (pytest_ladder.measure.workspace.Workspace: the process's device, --ladder-gpu-workspace)."""
    from pytest_ladder.fixtures import process_device
    from pytest_ladder.measure.workspace import Workspace
    from pytest_ladder.options import ladder_options

    return Workspace.on(process_device(request.config), ladder_options(request.config).model.gpu_workspace)
