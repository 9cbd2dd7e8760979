"""pytest-ladder: the Compression Falsification Ladder as a pytest plugin.

The package is layered the way the protocol flows (see README "Layout"):
prereg/seal -> models (load, capture) -> measure (gates, traps, tau) -> rung/verdict -> archive -> replay/scoreboard.
Importing the package imports nothing heavy; torch and transformers load inside the modules that need them.
"""

__version__ = "0.1.0"

from pytest_ladder.rung import rung  # noqa: E402  (re-export: rung modules write `from pytest_ladder import rung`)

__all__ = ["rung", "__version__"]
