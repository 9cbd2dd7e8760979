"""Byte accounting: hand counts of known packings, dense originals, and the identity giving a zero delta."""

from __future__ import annotations

import pytest
import torch

from pytest_ladder.measure.quant import QuantSpec, quantize
from pytest_ladder.measure.storage import (
    Artifact,
    TensorStorage,
    codebook_artifact,
    combine,
    dense_artifact,
    global_delta_bytes,
    index_dtype,
    lowrank_artifact,
    quantized_artifact,
    tensors_artifact,
    tucker_artifact,
)


def test_dense_bytes_at_stored_dtype():
    assert dense_artifact("w", (1024, 2048), torch.bfloat16).nbytes == 1024 * 2048 * 2
    assert dense_artifact("w", (3, 5), "float32").nbytes == 60
    assert dense_artifact("w", (7,), "torch.int8").nbytes == 7


@pytest.mark.parametrize(
    ("shape", "bits", "expected"),
    [((3, 5), 3, 6), ((7,), 1, 1), ((8,), 1, 1), ((9,), 1, 2), ((4, 10), 4, 20), ((1, 3), 2, 1), ((5,), 8, 5)],
)
def test_packed_codes_are_ceil_of_n_times_k_over_8(shape, bits, expected):
    assert TensorStorage("codes", shape, bits=bits, kind="codes").nbytes == expected


def test_quantized_artifact_hand_count():
    artifact = quantized_artifact(
        "w", (4, 10), bits=4, granularity="group", group_size=5, symmetric=False, scale_dtype=torch.float16, outliers=2
    )
    # codes ceil(40*4/8)=20; 8 groups: scales 8*2=16, zero points 8*2=16; outliers 4 rows x 2: values 16, uint8 idx 8
    assert artifact.nbytes == 20 + 16 + 16 + 16 + 8
    assert artifact.bytes_by_kind() == {
        "codes": 20, "scales": 16, "zero_points": 16, "outlier_values": 16, "outlier_indices": 8,
    }
    per_channel = quantized_artifact("w", (6, 16), bits=8, granularity="channel", axis=0, scale_dtype=torch.bfloat16)
    assert per_channel.nbytes == 96 + 6 * 2
    per_column = quantized_artifact("w", (6, 16), bits=2, granularity="channel", axis=-1, scale_dtype=torch.float32)
    assert per_column.nbytes == 24 + 16 * 4


def test_quantized_tensor_describes_the_same_storage():
    spec = QuantSpec(bits=4, granularity="group", group_size=8, symmetric=False, outliers=1)
    quantized = quantize(torch.randn(3, 16), spec)
    assert quantized.artifact("x") == spec.artifact("x", (3, 16))
    assert quantized.artifact("x").nbytes == 24 + 6 * 2 + 6 * 2 + 3 * 2 + 3 * 1


def test_lowrank_and_tucker_hand_counts():
    assert lowrank_artifact("w", (100, 30), 4, torch.float16).nbytes == (100 * 4 + 4 * 30) * 2
    tucker = tucker_artifact("t", (16, 64, 32), (2, 8, 4), torch.float32)
    assert tucker.nbytes == (2 * 8 * 4 + 16 * 2 + 64 * 8 + 32 * 4) * 4


def test_codebook_hand_count():
    # 1000 vectors into a 256-entry codebook of 8-dim fp16 vectors: 256*8*2 bytes + 1000 one-byte indices
    assert codebook_artifact("vq", 1000, 256, 8, torch.float16).nbytes == 4096 + 1000
    # 5-entry codebook: 3-bit indices, 10 of them pack into 4 bytes
    assert codebook_artifact("vq", 10, 5, 2, torch.float32).nbytes == 40 + 4


def test_identity_has_zero_delta_even_on_meta_tensors():
    state = {"a": torch.empty(4, 8, dtype=torch.bfloat16, device="meta"), "b": torch.empty(3, dtype=torch.float32)}
    dense = tensors_artifact(state)
    assert dense.nbytes == 4 * 8 * 2 + 3 * 4
    assert global_delta_bytes(dense, tensors_artifact(state)) == 0


def test_global_delta_counts_everything_stored():
    dense = dense_artifact("w", (64, 64), torch.bfloat16)
    compressed = combine([QuantSpec(bits=4, granularity="channel").artifact("w", (64, 64)),
                          dense_artifact("w.signs", (64,), torch.int8, kind="signs")])
    assert global_delta_bytes(compressed, dense) == (2048 + 64 * 2 + 64) - 64 * 64 * 2
    assert (compressed + Artifact()).nbytes == compressed.nbytes


def test_index_dtype_thresholds():
    assert [index_dtype(n) for n in (1, 256, 257, 32768, 32769, 2**31, 2**31 + 1)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32, torch.int64,
    ]


def test_descriptions_refuse_ambiguity():
    with pytest.raises(ValueError, match="exactly one of dtype"):
        TensorStorage("x", (2,), dtype=torch.float16, bits=4)
    with pytest.raises(ValueError, match="unknown kind"):
        TensorStorage("x", (2,), dtype=torch.float16, kind="weights")
    with pytest.raises(ValueError, match="unique"):
        Artifact((TensorStorage("x", (2,), bits=4, kind="codes"), TensorStorage("x", (2,), bits=4, kind="codes")))
    with pytest.raises(ValueError, match="unknown dtype"):
        dense_artifact("x", (2,), "float17")
    with pytest.raises(ValueError, match="group_size"):
        quantized_artifact("x", (4, 10), bits=4, granularity="group", group_size=3)


def test_to_dict_is_plain_data():
    artifact = lowrank_artifact("w", (4, 6), 2, torch.bfloat16)
    assert artifact.to_dict() == {
        "nbytes": 40,
        "by_kind": {"factor": 40},
        "parts": [
            {"name": "w.a", "kind": "factor", "shape": [4, 2], "dtype": "bfloat16", "nbytes": 16},
            {"name": "w.b", "kind": "factor", "shape": [2, 6], "dtype": "bfloat16", "nbytes": 24},
        ],
    }
