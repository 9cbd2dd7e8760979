"""Quantizers: round trips within their bound, levels, calibration, outliers, STE, storage."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ladder.measure.quant import QuantSpec, calibrate, fake_quant, fake_quant_ste, quantize, random_scales

F64 = torch.float64


def _scale_per_element(quantized) -> torch.Tensor:
    grouped_shape = quantized.codes.shape
    return quantized.params.scale.expand(grouped_shape).reshape(quantized.shape)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([8, 4, 2]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    axis=st.sampled_from([0, -1]),
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    magnitude=st.floats(1e-3, 1e3),
    offset=st.floats(-5, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_within_half_a_step(bits, symmetric, granularity, axis, rows, groups, magnitude, offset, seed):
    x = (torch.randn(rows, 4 * groups, generator=torch.Generator().manual_seed(seed), dtype=F64) + offset) * magnitude
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, group_size=4)
    quantized = quantize(x, spec)
    error = (x - quantized.dequantize()).abs()
    assert (error <= _scale_per_element(quantized) / 2 * (1 + 1e-12)).all()
    low, high = (-spec.qmax, spec.qmax) if symmetric else (0, spec.qmax)
    assert quantized.codes.min() >= low and quantized.codes.max() <= high
    # stored scales are exactly representable at the scale dtype
    scale = quantized.params.scale
    assert torch.equal(scale.to(spec.scale_dtype).to(F64), scale)


def test_scales_round_up_even_when_subnormal():
    x = torch.tensor([[1e-4, -3e-4, 2.9e-4, 5e-5]], dtype=F64)  # INT8 scale ≈ 2.4e-6: subnormal in float16
    quantized = quantize(x, QuantSpec(8))
    assert float(quantized.params.scale) >= 3e-4 / 127
    assert ((x - quantized.dequantize()).abs() <= quantized.params.scale / 2).all()
    with pytest.raises(ValueError, match="bfloat16"):
        quantize(torch.tensor([[1e7, 0.0]]), QuantSpec(8))


def test_int8_round_trip_bound_on_weights(device):
    w = torch.randn(64, 128, device=device)
    quantized = quantize(w, QuantSpec(bits=8, granularity="channel", axis=0))
    assert quantized.params.scale.shape == (64, 1)
    assert ((w.double() - quantized.dequantize()).abs() <= quantized.params.scale / 2).all()
    assert quantized.dequantize().device.type == device


def test_levels_of_int2_and_int4():
    assert [QuantSpec(b).qmax for b in (8, 4, 2, 1)] == [127, 7, 1, 1]
    assert [QuantSpec(b, symmetric=False).qmax for b in (8, 4, 2, 1)] == [255, 15, 3, 1]
    x = torch.tensor([[-3.0, -1.0, 0.4, 3.0]])
    assert fake_quant(x, QuantSpec(2)).tolist() == [[-3.0, 0.0, 0.0, 3.0]]
    assert fake_quant(x, QuantSpec(2, symmetric=False)).tolist() == [[-3.0, -1.0, 1.0, 3.0]]


def test_int1_is_sign_times_mean_abs():
    x = torch.tensor([[1.0, -3.0, 0.0, 2.0], [-1.0, -1.0, 5.0, 1.0]])
    per_row = fake_quant(x, QuantSpec(1, granularity="channel", axis=0))
    assert per_row.tolist() == [[1.5, -1.5, 1.5, 1.5], [-2.0, -2.0, 2.0, 2.0]]
    # mean|x| is the L2-optimal scale for fixed signs: any other scale does worse
    signs = torch.sign(x[0]) + (x[0] == 0)
    best = (x[0] - 1.5 * signs).square().sum()
    for scale in (1.4, 1.6):
        assert (x[0] - scale * signs).square().sum() > best
    assert QuantSpec(1).artifact("w", (2, 4)).nbytes == 1 + 2


def test_outliers_are_kept_aside_and_restored():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    x[1, 3] = 500.0
    x[2, 7] = -300.0
    plain = quantize(x, QuantSpec(4, granularity="channel", axis=0))
    kept = quantize(x, QuantSpec(4, granularity="channel", axis=0, outliers=1))
    restored = kept.dequantize()
    assert restored[1, 3] == 500.0 and restored[2, 7] == -300.0  # exact in float16
    assert kept.params.scale[1, 0] < plain.params.scale[1, 0] / 50
    kept_error, plain_error = (x - restored).abs(), (x - plain.dequantize()).abs()
    assert (kept_error <= kept.params.scale / 2).all()
    assert kept_error[1].max() < plain_error[1].max() / 5
    assert kept.outlier_index.shape == (4, 1)


def test_calibrated_scales_apply_to_other_data_and_saturate():
    calibration = torch.randn(200, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    spec = QuantSpec(8, granularity="channel", axis=-1)
    params = calibrate(calibration, spec)
    assert params.scale.shape == (1, 8)
    evaluation = torch.randn(50, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    evaluation[0, 0] = 100.0
    out = fake_quant(evaluation, spec, params)
    assert math.isclose(float(out[0, 0]), 127 * float(params.scale[0, 0]))  # saturated at the extreme code
    inside = evaluation.abs() <= 127 * params.scale
    assert ((evaluation - out).abs()[inside] <= params.scale.expand_as(evaluation)[inside] / 2).all()
    with pytest.raises(ValueError, match="same channel layout"):
        fake_quant(torch.randn(5, 4), spec, params)
    per_token = calibrate(calibration, QuantSpec(8, granularity="channel", axis=0))  # (200, 1): one per token
    with pytest.raises(ValueError, match="same channel layout"):
        fake_quant(evaluation[:1], QuantSpec(8, granularity="channel", axis=0), per_token)
    with pytest.raises(ValueError, match="zero points"):
        fake_quant(evaluation, QuantSpec(8, granularity="channel", axis=-1, symmetric=False), params)


def test_random_scales_are_seeded_and_hurt():
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    spec = QuantSpec(4, granularity="channel", axis=-1)
    params = calibrate(x, spec)
    a, b = random_scales(params, 7), random_scales(params, 7)
    assert torch.equal(a.scale, b.scale) and not torch.equal(a.scale, random_scales(params, 8).scale)
    assert ((a.scale / params.scale) >= 0.1 - 1e-12).all() and ((a.scale / params.scale) <= 10 + 1e-12).all()
    assert (x - fake_quant(x, spec, a)).norm() > 2 * (x - fake_quant(x, spec, params)).norm()


def test_straight_through_gradient_is_identity():
    x = torch.randn(3, 8, requires_grad=True)
    y = fake_quant_ste(x, QuantSpec(4))
    assert torch.allclose(y.detach(), fake_quant(x.detach(), QuantSpec(4)).float())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 8))


def test_zero_tensor_round_trips_exactly():
    for spec in (QuantSpec(8), QuantSpec(4, symmetric=False), QuantSpec(1)):
        assert torch.equal(fake_quant(torch.zeros(2, 4), spec), torch.zeros(2, 4, dtype=F64))


def test_spec_is_validated():
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(0)
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(4, granularity="group")
    with pytest.raises(ValueError, match="divide"):
        quantize(torch.zeros(2, 6), QuantSpec(4, granularity="group", group_size=4))


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([8, 4, 2, 1]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    axis=st.sampled_from([0, -1]),
    outliers=st.sampled_from([0, 2]),
    scale_dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fake_quant_is_the_codes_round_trip_bit_for_bit(bits, symmetric, granularity, axis, outliers, scale_dtype,
                                                        seed):
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed), dtype=F64) * 3 + 0.5
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, group_size=4,
                     outliers=outliers, scale_dtype=scale_dtype)
    other = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed + 1), dtype=F64) * 5  # saturates
    for params in (None, calibrate(x, spec)):
        data = x if params is None else other
        assert torch.equal(fake_quant(data, spec, params), quantize(data, spec, params).dequantize())


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([8, 4, 2, 1]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["channel", "tensor", "group"]),
    axis=st.sampled_from([0, -1]),
    outliers=st.sampled_from([0, 2]),
    scale_dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_output_scales_and_the_layers_fallback_are_each_rows_own_fit_bit_for_bit(bits, symmetric, granularity, axis,
                                                                                 outliers, scale_dtype, seed):
    """G10's calibration: every expert's scales are `calibrate` of its rows, and the layer's fallback is `calibrate` of
    all of them stacked, whether it comes from the experts' extents (per channel of the last dim, per tensor) or
    from the stacked rows (per row: only rows of equal count stack; per group; INT1's mean)."""
    from pytest_ladder.probes.expert_outputs import calibrate_outputs

    generator = torch.Generator().manual_seed(seed)
    per_row = granularity == "channel" and axis == 0
    sizes = [6, 6, 0, 6] if per_row else [5, 1, 0, 9]
    rows = {e: (torch.randn(n, 8, generator=generator, dtype=F64) * 3 - e).to(torch.float32)
            for e, n in enumerate(sizes)}
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, group_size=4,
                     outliers=outliers, scale_dtype=scale_dtype)
    found = calibrate_outputs({3: rows}, 5, spec)
    for expert, values in rows.items():
        if values.shape[0]:
            assert torch.equal(found.params[(3, expert)].scale, calibrate(values, spec).scale)
    whole = calibrate(torch.cat([v for v in rows.values() if v.shape[0]]), spec)
    assert torch.equal(found.fallback[3].scale, whole.scale)
    assert (whole.zero is None and found.fallback[3].zero is None) or torch.equal(found.fallback[3].zero, whole.zero)
    assert found.calibration_tokens[3] == sizes + [0] and (3, 2) not in found.params
