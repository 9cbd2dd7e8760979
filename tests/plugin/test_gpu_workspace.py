"""--ladder-gpu-workspace / ini ladder_gpu_workspace: the GPU memory budget the model fixture hands to ModelSpec."""

from __future__ import annotations

import os
import pytest

CHECK = """
def test_workspace(ladder_model):
    assert ladder_model.spec.gpu_workspace == {expected}
"""


@pytest.mark.parametrize(("args", "ini", "expected"), [
    ([], "", 4 * 2**30),
    (["--ladder-gpu-workspace", "512MiB"], "", 512 * 2**20),
    ([], "ladder_gpu_workspace = 2GB\n", 2 * 10**9),
    (["--ladder-gpu-workspace", "1.5GiB"], "ladder_gpu_workspace = 2GB\n", int(1.5 * 2**30)),
])
def test_the_model_fixture_passes_the_workspace_into_the_spec(pytester, args, ini, expected):
    pytester.makeini("[pytest]\n" + ini)
    pytester.makepyfile(CHECK.format(expected=expected))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--ladder-device", "cpu", *args).assert_outcomes(passed=1)


def test_a_bad_size_is_a_usage_error_naming_the_option(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--ladder-gpu-workspace", "4 gigs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --ladder-gpu-workspace: '4 gigs' is not a size; write e.g. 8GiB*"])


def test_a_bad_ini_size_is_a_usage_error_naming_the_ini_option(pytester):
    pytester.makeini("[pytest]\nladder_gpu_workspace = lots\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option ladder_gpu_workspace: 'lots' is not a size; write e.g. 8GiB*"])


def test_a_gpu_run_gets_expandable_segments_unless_the_user_chose_an_allocator(monkeypatch):
    from pytest_ladder.options import ALLOCATOR_DEFAULT, ALLOCATOR_ENV, cuda_allocator_defaults

    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    assert not cuda_allocator_defaults("cpu") and ALLOCATOR_ENV not in os.environ
    assert cuda_allocator_defaults("cuda:1") and os.environ[ALLOCATOR_ENV] == ALLOCATOR_DEFAULT
    monkeypatch.setenv(ALLOCATOR_ENV, "max_split_size_mb:128")
    assert not cuda_allocator_defaults(None) and os.environ[ALLOCATOR_ENV] == "max_split_size_mb:128"
    monkeypatch.delenv(ALLOCATOR_ENV)
    assert cuda_allocator_defaults(None) and os.environ[ALLOCATOR_ENV] == ALLOCATOR_DEFAULT
