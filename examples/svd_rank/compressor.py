"""Low rank: every routed expert matrix W (out, in) replaced by its best rank-r approximation A B (truncated SVD,
Eckart–Young), the two factors stored at the experts' own dtype: the claim of prereg/svd_rank32_experts/tau.json
(run with `pytest rungs/test_expert_weights.py`).

No random_control() here: the rung's default τ baseline is a random projection W Q Qᵀ whose factor W Q takes the
same bytes as A and B (pytest_ladder.probes.expert_weights.RandomProjection).
"""

from __future__ import annotations

import torch

from pytest_ladder.measure.storage import Artifact, TensorStorage


class TruncatedSVD:
    """W′ = U_r diag(s_r) V_rᵀ per expert matrix; stores A = U_r diag(s_r) (out, r) and B = V_rᵀ (r, in)."""

    def __init__(self, rank: int) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = rank

    def compress(self, layer, stacks, experts):
        out = {}
        for name, w in stacks.items():
            u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
            r = min(self.rank, s.shape[-1])
            out[name] = (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]
        return out

    def storage(self, stacks):
        parts = []
        for name, (dtype, (experts, rows, cols)) in stacks.items():
            r = min(self.rank, rows, cols)
            parts += [TensorStorage(f"{name}.a", (experts, rows, r), dtype=dtype, kind="factor"),
                      TensorStorage(f"{name}.b", (experts, r, cols), dtype=dtype, kind="factor")]
        return Artifact(tuple(parts))


def make(rank: int = 32) -> TruncatedSVD:
    return TruncatedSVD(rank)
