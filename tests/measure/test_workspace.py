"""to_f64: the float64 value of a tensor, converted on the device it is moved to."""

import torch


def test_to_f64_is_the_float64_value_on_the_device():
    from pytest_ladder.measure.workspace import to_f64

    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = to_f64(x, "cpu")
    assert y.dtype == torch.float64 and y.device.type == "cpu"
    assert torch.equal(y, x.to(torch.float64))
    assert torch.equal(to_f64(x[1:3, ::2], torch.device("cpu")), x[1:3, ::2].double())
