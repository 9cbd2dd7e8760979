"""Fixtures shared by the test folders; OpenMP threads that sleep while they wait (set before any test module loads
torch: two xdist workers building the embedded models on two cores would otherwise spin against each other)."""

from __future__ import annotations

import os

import pytest

from pytest_ladder import registered_by_entry_point
from pytest_ladder.models.embedded import passive_threads

passive_threads()

# A checkout used without installing the package (`PYTHONPATH=. pytest tests -k cuda` on a GPU box) has no pytest11
# entry point: the repository's conftest gives this session the plugin, and PYTEST_PLUGINS gives it to the sessions
# the tests start (pytester, in process or not), as the installed entry point would.
if not registered_by_entry_point():
    os.environ.setdefault("PYTEST_PLUGINS", "pytest_ladder.plugin")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and small matrices gain nothing from intra-op threads, and on a busy CI box two threads per xdist
    worker stall: torch runs on one thread for the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
