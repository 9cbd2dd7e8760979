"""The repository's conftest: `pytest rungs/` and `pytest archive/` work from a plain checkout too.

Installed (`pip install -e .`), pytest-ladder registers its plugin through the `pytest11` entry point and this file
does nothing. A checkout used without installing it (`PYTHONPATH=. pytest rungs/`, e.g. on a GPU box whose image
already has torch and transformers) gets the same plugin from here. Nothing else lives here on purpose: the rungs'
fixtures are the plugin's, so rung modules run the same in any project that installs pytest-ladder.
"""

import importlib.metadata
import os


def _registered_by_entry_point() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == "pytest_ladder.plugin" for ep in importlib.metadata.entry_points(group="pytest11"))


pytest_plugins = [] if _registered_by_entry_point() else ["pytest_ladder.plugin"]
