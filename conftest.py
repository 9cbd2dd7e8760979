"""The repository's conftest: `pytest rungs/` and `pytest archive/` work from a plain checkout too.

Installed (`pip install -e .`), pytest-ladder registers its plugin through the `pytest11` entry point and this file
does nothing. A checkout used without installing it (`PYTHONPATH=. pytest rungs/`, e.g. on a GPU box whose image
already has torch and transformers) gets the same plugin from here. Nothing else lives here on purpose: the rungs'
fixtures are the plugin's, so rung modules run the same in any project that installs pytest-ladder.
"""

from pytest_ladder import registered_by_entry_point

pytest_plugins = [] if registered_by_entry_point() else ["pytest_ladder.plugin"]
