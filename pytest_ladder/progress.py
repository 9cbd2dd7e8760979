"""Progress on the real terminal: the bars of long computations (the embedded build, captures, τ floors, spectra) and
the lines of the build's report, visible even while pytest captures a test's output.

Library code calls `bar(...)` (a tqdm bar) and `say(line)`; it knows nothing of pytest. Outside pytest both write to
stderr. In a pytest session the plugin `attach`es a way to suspend the capture (the capture manager's public
`global_and_fixture_disabled`) and to start a fresh terminal line (the terminal reporter's `ensure_newline`), and
every write goes through them. A bar shows where stderr is a terminal (tqdm's `disable=None`), unless the caller
turns it on or off; lines are always written.

Standard library only at import time (tqdm loads when a bar is made), so the plugin can import it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, ContextManager, Iterable

_suspend: Callable[[], ContextManager] | None = None
_newline: Callable[[], None] | None = None


def attach(suspend: Callable[[], ContextManager] | None,
           newline: Callable[[], None] | None = None) -> tuple[Callable | None, Callable | None]:
    """Route progress through pytest: `suspend()` lifts the output capture for one write, `newline()` ends the
    terminal reporter's current line (the dots) so a bar or a line starts on its own. Returns what was attached
    before, for `detach` (a pytest session run inside another, as pytester does, gives the outer one back)."""
    global _suspend, _newline
    previous = (_suspend, _newline)
    _suspend, _newline = suspend, newline
    return previous


def detach(previous: tuple[Callable | None, Callable | None] = (None, None)) -> None:
    """The session ended: back to what was attached before it (plain stderr outside pytest)."""
    attach(*previous)


@contextlib.contextmanager
def _terminal(writing: bool = True) -> Any:
    """The real stderr, pytest's capture lifted meanwhile; `writing` starts a fresh line first (not for a question
    like isatty, which must leave the terminal reporter's line alone)."""
    if _suspend is None:
        yield sys.stderr
        return
    with _suspend():
        if writing and _newline is not None:
            _newline()
        yield sys.stderr


class _Terminal:
    """A file for tqdm that writes to the real terminal: each write lifts pytest's capture for its duration."""

    def write(self, text: str) -> int:
        with _terminal() as stream:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        with _terminal(writing=False) as stream:
            return bool(getattr(stream, "isatty", lambda: False)())


TERMINAL = _Terminal()


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool | None = None,
        **options: Any) -> Any:
    """A tqdm bar on the real terminal: `enabled` None shows it where stderr is a terminal, True always, False never.
    It clears itself when done (leave=False) unless `options` say otherwise."""
    from tqdm.auto import tqdm

    options.setdefault("leave", False)
    options.setdefault("mininterval", 0.5)
    return tqdm(iterable, desc=desc, total=total, disable=None if enabled is None else not enabled, file=TERMINAL,
                **options)


def say(line: str) -> None:
    """One line on the real terminal (stderr outside pytest), e.g. a build's checkpoint note or its report."""
    with _terminal() as stream:
        stream.write(line + "\n")
        stream.flush()


__all__ = ["attach", "detach", "bar", "say", "TERMINAL"]
