"""Postmortems a researcher acts on: resolved parameters first, how far a killed gate was from passing, where a
swept claim would have passed, plots with labelled axes and real x values, plain skip reasons."""

from __future__ import annotations

import pytest

from pytest_ladder.postmortem import distance_to_passing, plain_skip_reason, plot_figures, render_postmortem

SWEEP = {"param": "rank", "values": [1, 2, 4, 8, 16], "results": [0.9, 0.6, 0.31, 0.05, 0.0]}


def g4_kill(record) -> dict:
    """The G4 kill of the shared sample at rank 4, with the sweep G4 records when it kills and its resolved rank."""
    data = record()
    data["gates"][1]["extra"] = {"rank": 4, "layer": 3, "sweep": SWEEP}
    data["model"]["config"] = {"hidden_size": 128, "num_hidden_layers": 8}
    data["context"] = {"cells": {
        "g4": {"rank": 4, "layers": {"layer=3-task=text": 1, "layer=3-task=code": 1, "deep": 3}, "resolved": {
            "rank": {"value": 4, "of": "hidden_size", "size": 128, "param": "rank_fraction", "given": 0.03125}}},
        "g0 layer=3/16": {"layer": 1},  # another rung's: not in this rung's postmortem
    }}
    return data


def test_resolved_parameters_come_first(record):
    lines = render_postmortem(g4_kill(record)).splitlines()
    start = lines.index("## Resolved parameters")
    assert start < lines.index("## Claim")
    assert lines[start + 2: start + 6] == [
        "- rank 4 of hidden_size 128 = rank_fraction 0.03125",
        "- layer 3 → 1, 7 → 3 (of 8 layers)",
        "- rank 4",
        "- locked in the prereg: rank 16",
    ]
    assert "g0 layer=3/16" not in "\n".join(lines)


def test_a_killed_gate_says_how_far_it_was_and_where_it_would_pass(record):
    lines = render_postmortem(g4_kill(record)).splitlines()
    section = lines.index("### gate activation_error @ layer=3-task=text")
    assert lines[section + 4: section + 6] == [
        "- how far from passing: 0.11 above the threshold 0.2 (+55% of it); passing needs value <= 0.2",
        ("- would pass at rank 8 (value 0.05 <= 0.2; the τ floor was measured only at the claim's own rank); "
         "measured at rank 1, 2, 4, 8, 16"),
    ]


def test_a_gate_without_tau_names_its_passing_point_without_one(record):
    """G7's cache coverage has no τ floor: its passing cache size is stated without a word on τ."""
    data = g4_kill(record)
    gate = data["gates"][1]
    gate["tau"] = None
    gate["extra"]["sweep"] = {"param": "cache size", "values": [6, 12, 24], "results": [0.5, 0.1, 0.0]}
    assert ("- would pass at cache size 12 (value 0.1 <= 0.2); measured at cache size 6, 12, 24"
            in render_postmortem(data).splitlines())


def test_a_sweep_where_nothing_passes_says_so(record):
    data = g4_kill(record)
    data["gates"][1]["extra"]["sweep"] = {"param": "rank", "values": [2, 4], "results": [0.5, 0.31]}
    assert "- no measured rank meets the threshold (measured at rank 2, 4)" in render_postmortem(data).splitlines()


@pytest.mark.parametrize(("value", "op", "threshold", "says"), [
    (0.31, "<=", 0.2, "0.11 above the threshold 0.2 (+55% of it); passing needs value <= 0.2"),
    (0.2, "<", 0.2, "0 above the threshold 0.2 (+0% of it); passing needs value < 0.2"),
    (0.581, ">=", 0.95, "0.369 below the threshold 0.95 (-39% of it); passing needs value >= 0.95"),
    (-0.267003, ">", 0, "0.267003 below the threshold 0; passing needs value > 0"),
    (0.1, "<=", 0.2, ""),  # it passed
    (None, "<=", 0.2, ""),
])
def test_distance_to_passing(value, op, threshold, says):
    assert distance_to_passing(value, op, threshold) == says


def test_plots_have_labelled_axes_real_x_values_threshold_and_baselines(record):
    data = g4_kill(record)
    data["gates"][2]["series"] = {"flip_rate_by_rank": [0.3, 0.2, 0.1, 0.05]}
    data["gates"][2]["extra"] = {"curve_ranks": [2, 4, 8, 12]}
    figures = plot_figures(data)
    assert sorted(figures) == ["activation_error-layer_3-task_text-sweep.png", "activation_error-spectrum.png",
                               "gates.png", "route_flip_rate-flip_rate_by_rank.png"]

    gates = figures["gates.png"].axes
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in gates] == [
        ("cell", "bytes value"), ("cell", "activation_error value"), ("cell", "route_flip_rate value")]
    error = gates[1]
    assert [t.get_text() for t in error.get_xticklabels()] == ["layer=3-task=text", "layer=3-task=code"]
    assert [line.get_label() for line in error.get_lines()] == ["threshold: value <= 0.2"]
    assert error.get_lines()[0].get_ydata()[0] == 0.2
    baselines = next(c for c in error.collections if c.get_label().startswith("random baselines"))
    assert baselines.get_label() == "random baselines (B = 3)"
    assert sorted(baselines.get_offsets()[:, 1].tolist()) == [0.35, 0.35, 0.37, 0.37, 0.41, 0.41]

    (sweep,) = figures["activation_error-layer_3-task_text-sweep.png"].axes
    assert (sweep.get_xlabel(), sweep.get_ylabel()) == ("rank", "activation_error value")
    curve, threshold, claimed = sweep.get_lines()
    assert curve.get_xdata().tolist() == [1, 2, 4, 8, 16] and curve.get_ydata().tolist() == SWEEP["results"]
    assert threshold.get_ydata()[0] == 0.2 and claimed.get_xdata()[0] == 4
    assert claimed.get_label() == "claimed rank 4"

    (flips,) = figures["route_flip_rate-flip_rate_by_rank.png"].axes
    assert (flips.get_xlabel(), flips.get_ylabel()) == ("rank", "flip_rate")
    assert flips.get_lines()[0].get_xdata().tolist() == [2, 4, 8, 12]
    (spectrum,) = figures["activation_error-spectrum.png"].axes
    assert spectrum.get_xlabel() == "position in spectrum (1 = first)" and spectrum.get_ylabel() == "spectrum"
    assert spectrum.get_lines()[0].get_xdata().tolist() == [1, 2, 3, 4, 5]


def test_per_task_series_are_plotted_against_the_tasks(record):
    data = record()
    data["gates"][2]["series"] = {"route_flip_rate_by_task": [0.01, 0.04, 0.02]}
    (ax,) = plot_figures(data)["route_flip_rate-route_flip_rate_by_task.png"].axes
    assert ax.get_xlabel() == "task" and [t.get_text() for t in ax.get_xticklabels()] == ["code", "math", "text"]
    assert [line.get_label() for line in ax.get_lines()] == ["threshold: value <= 0.1"]


def test_skip_reasons_are_plain_text(record):
    assert plain_skip_reason("('/root/work/rungs/test_g3.py', 45, 'Skipped: kill-fast: g3 is already KILLED')") == (
        "kill-fast: g3 is already KILLED")
    assert plain_skip_reason("needs a CUDA device") == "needs a CUDA device"
    data = record()
    data["selection"]["skip_reasons"] = ["('/root/work/rungs/test_g3.py', 45, 'Skipped: needs a CUDA device')"]
    assert '- skip_reasons: ["needs a CUDA device"]' in render_postmortem(data).splitlines()
