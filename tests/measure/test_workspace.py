"""to_f64 and Workspace.accumulate: float64 values moved between devices exactly, sums kept at the workspace's home."""

import pytest
import torch


def test_to_f64_is_the_float64_value_on_the_device():
    from pytest_ladder.measure.workspace import to_f64

    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = to_f64(x, "cpu")
    assert y.dtype == torch.float64 and y.device.type == "cpu"
    assert torch.equal(y, x.to(torch.float64))
    assert torch.equal(to_f64(x[1:3, ::2], torch.device("cpu")), x[1:3, ::2].double())


def _parts(n: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(33, 17, dtype=torch.float64, generator=generator) for _ in range(n)]


def test_accumulate_sums_at_home_bit_for_bit():
    from pytest_ladder.measure.workspace import Workspace

    parts = _parts()
    expected = parts[0].clone()
    for part in parts[1:]:
        expected += part
    for workspace in (Workspace.on("cpu", None), Workspace.on("cpu", 64)):
        total = None
        for part in parts:
            total = workspace.accumulate(total, part.mT.clone().mT)  # non-contiguous parts
        assert total.is_contiguous() and total.device.type == "cpu"
        assert torch.equal(total, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accumulate_a_cpu_total_on_cuda_a_block_at_a_time():
    from pytest_ladder.measure.workspace import Workspace

    parts = _parts()
    expected = parts[0].clone()
    for part in parts[1:]:
        expected += part
    workspace = Workspace.on("cuda", 8 * 17 * 8 * 5)  # an eighth of it holds 5 rows: seven blocks of 33
    total = None
    for part in parts:
        total = workspace.accumulate(total, part.to("cuda"))
    assert total.device.type == "cpu" and total.is_pinned()
    assert torch.equal(total, expected)
