"""Progress of long computations reaches the real terminal while pytest captures the test's output."""

from __future__ import annotations

import sys

from pytest_ladder import progress

INSIDE = """
import sys

from pytest_ladder import progress


def test_long_computation():
    print("captured line, shown only on failure", file=sys.stderr)
    progress.say("built 3 of 3 layers")
    for _ in progress.bar(range(3), desc="spectra", enabled=True, mininterval=0):
        pass
"""


def test_lines_and_bars_written_inside_a_test_reach_the_terminal(pytester):
    pytester.makepyfile(INSIDE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    err = "\n".join(result.errlines)
    assert "built 3 of 3 layers" in err
    assert "spectra: 100%" in err and "3/3" in err
    assert "captured line" not in err + "\n".join(result.outlines)


def test_outside_pytest_a_line_goes_to_stderr(capsys):
    previous = progress.attach(None)  # as in a plain script: nothing attached
    try:
        progress.say("a plain line")
    finally:
        progress.detach(previous)
    assert capsys.readouterr().err == "a plain line\n"


def test_a_bar_follows_the_terminal_unless_told(capsys):
    previous = progress.attach(None)
    try:
        assert progress.bar(range(2), desc="auto").disable is not sys.stderr.isatty()
        assert progress.bar(range(2), desc="off", enabled=False).disable is True
        assert progress.bar(range(2), desc="on", enabled=True).disable is False
    finally:
        progress.detach(previous)


QUIET = """
from pytest_ladder import progress


def test_a():
    for _ in progress.bar(range(3), desc="spectra"):
        pass


def test_b():
    pass
"""


def test_a_bar_off_the_terminal_leaves_the_dots_alone(pytester):
    pytester.makepyfile(QUIET)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a_bar_off_the_terminal_leaves_the_dots_alone.py .. *"])
