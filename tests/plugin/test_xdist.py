"""Under xdist every worker puts the model and the checkpoint view on its own device, and `-n 2` decides every rung
as one process does, with and without kill-fast."""

from __future__ import annotations

import pytest

from pytest_ladder.fixtures import choose_device

# the hardest cell kills slowly; every other cell raises: one process under kill-fast never runs them (KILL), but a
# second xdist worker that has not heard of the kill does, and without kill-fast they make the run INVALID
SLOW_KILL_THEN_ERRORS = ("import time\n    if cell.params['true_rank'] == 8:\n        time.sleep(3)\n"
                         "    else:\n        raise RuntimeError('a cell after the kill')")


@pytest.mark.parametrize(("requested", "worker", "n_gpus", "device"), [
    (None, None, 0, "cpu"),
    (None, None, 1, "cuda:0"),
    ("cpu", "gw3", 4, "cpu"),
    ("cuda", None, 4, "cuda:0"),
    ("cuda", "gw0", 1, "cuda:0"),
    ("cuda", "gw1", 4, "cuda:1"),
    ("cuda", "gw5", 4, "cuda:1"),
    (None, "gw2", 4, "cuda:2"),
    ("cuda:3", "gw1", 4, "cuda:3"),
])
def test_each_worker_chooses_its_own_gpu(requested, worker, n_gpus, device):
    assert choose_device(requested, worker, n_gpus) == device


def test_the_checkpoint_view_is_on_the_models_device_on_every_worker(pytester):
    pytester.makepyfile("""
        import torch

        def test_same_device(ladder_model, ladder_weights):
            assert ladder_weights.device == torch.device(ladder_model.spec.device)
            assert ladder_weights.device == next(ladder_model.model.parameters()).device

        def test_same_device_again(ladder_model, ladder_weights):
            assert ladder_weights.device == torch.device(ladder_model.spec.device)
    """)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--ladder-device", "cpu")
    result.assert_outcomes(passed=2)


def _decision(record: dict) -> tuple:
    why = record["killed_by"] or record["invalid_because"] or {}
    return (record["verdict"], why.get("kind"), why.get("name"), why.get("cell"),
            (why.get("message") or "").splitlines()[:1])


@pytest.mark.parametrize(("kill_fast", "verdict"), [([], "INVALID"), (["--ladder-kill-fast"], "KILL")],
                         ids=["all-tests", "kill-fast"])
def test_two_workers_decide_as_one_process(toy, kill_fast, verdict):
    toy.rung(hook=SLOW_KILL_THEN_ERRORS)
    toy.pytester.runpytest_subprocess("-p", "xdist", "-n", "0", *kill_fast)
    toy.pytester.runpytest_subprocess("-n", "2", "--ladder-replicate", *kill_fast)
    serial, parallel = (toy.record(run) for run in toy.runs())
    assert parallel["kind"] == "replication"
    assert _decision(serial) == _decision(parallel)
    assert serial["verdict"] == verdict
