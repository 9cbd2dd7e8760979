"""pytest-ladder: the Compression Falsification Ladder as a pytest plugin.

The package is layered the way the protocol flows (see README "Layout"):
prereg/seal -> models (load, capture) -> measure (gates, traps, tau) -> rung/verdict -> archive -> replay/scoreboard.
Importing the package imports nothing heavy; torch and transformers load inside the modules that need them.
"""

__version__ = "0.1.0"

from pytest_ladder.rung import rung  # noqa: E402  (re-export: rung modules write `from pytest_ladder import rung`)


def registered_by_entry_point() -> bool:
    """Whether pytest loads the plugin through its pytest11 entry point (the package installed, plugin autoloading
    on). A checkout used without installing it loads the plugin otherwise (the repository's conftest)."""
    import importlib.metadata
    import os

    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == "pytest_ladder.plugin" for ep in importlib.metadata.entry_points(group="pytest11"))


__all__ = ["rung", "registered_by_entry_point", "__version__"]
