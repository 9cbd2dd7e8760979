"""The ladder's options, read once into LadderOptions / ModelOptions at configure time."""

from __future__ import annotations

from pytest_ladder.options import ModelOptions, flag

READ = """
from pathlib import Path

from pytest_ladder.options import LadderOptions, ModelOptions, ladder_options


def test_read_once(request):
    options = ladder_options(request.config)
    assert options is ladder_options(request.config)
    here = Path.cwd().resolve()
    assert options == LadderOptions(
        prereg_dir=here / "rules", archive_dir=here / "archive", replicate=True, kill_fast=True,
        xdist_workers=None, model={model!r},
    )
"""


def test_every_option_is_read_once_into_one_object(pytester, tmp_path):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("One paragraph.\n\nAnother one.\n")
    model = ModelOptions(model="embedded", device="cpu", max_memory={"cpu": 2**30}, offload_dir=str(tmp_path),
                         dtype="float32", corpus=(("text", str(corpus)),), preflight=True, gpu_workspace=2**29)
    (pytester.path / "pytest.ini").write_text("[pytest]\nladder_kill_fast = true\n")
    pytester.makepyfile(READ.format(model=model))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", "--ladder-prereg-dir", "rules", "--ladder-replicate",
        "--ladder-model", "embedded", "--ladder-device", "cpu", "--ladder-max-memory", "cpu=1GiB",
        f"--ladder-offload-dir={tmp_path}", "--ladder-dtype", "float32", "--ladder-corpus", f"text={corpus}",
        "--ladder-preflight", "--ladder-gpu-workspace", "512MiB")
    result.assert_outcomes(passed=1)


def test_option_names_are_the_flags():
    assert flag("ladder_gpu_workspace") == "--ladder-gpu-workspace"

