"""Device discipline of the G2 and G3 probes: every tensor of a computation lives on its input's device.

A CPU-only box cannot see a CPU/GPU mix happen, so the audit looks for what causes one: a tensor constructor called
without `device=` (it lands on the CPU whatever the input's device), a `.cpu()`/`.numpy()` inside the computation,
and, where a GPU is present, any operation whose tensor arguments sit on different devices. Seeded random draws are
made on the CPU by design (measure.rng) and moved afterwards, so a constructor given a `generator` is allowed.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from pytest_ladder.probes import routes, spectral

F64 = torch.float64
CONSTRUCTORS = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "eye", "arange", "linspace", "rand", "randn",
                "randint", "randperm"}
HOST_COPIES = {"cpu", "numpy", "tolist"}


class DeviceAudit(TorchFunctionMode):
    """Records constructors without `device=`, host copies, and operations over tensors on several devices."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in CONSTRUCTORS and "device" not in kwargs and "generator" not in kwargs:
            self.problems.append(f"torch.{name} without device=")
        if name in HOST_COPIES:
            self.problems.append(f".{name}() inside the computation")
        devices = {leaf.device for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        if len(devices) > 1:
            self.problems.append(f"{name} over tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def audited(fn):
    with DeviceAudit() as audit:
        out = fn()
    assert audit.problems == [], audit.problems
    return out


@pytest.fixture
def tucker_tensor(device):
    return torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)


def test_g2_pipeline_stays_on_the_tensors_device(tucker_tensor, device):
    t = tucker_tensor
    floor = audited(lambda: spectral.tucker_floor(t, 200))
    ranks = floor.ranks
    for factors in (audited(lambda: spectral.hosvd_factors(t, ranks)),
                    audited(lambda: spectral.random_factors(t.shape, ranks, 7, device=t.device)),
                    audited(lambda: spectral.identity_factors(t.shape, device=t.device)),
                    audited(lambda: spectral.hosvd_factors(t, (0, 1, 1, 1)))):
        assert all(u.device == t.device and u.dtype == F64 for u in factors)
        audited(lambda: spectral.projection_residual(t, factors))
    assert audited(lambda: spectral.projection_residual(t, spectral.identity_factors(t.shape, device=device))) == 0.0


def test_g2_projection_takes_factors_made_anywhere(tucker_tensor):
    """Factors made on the CPU (the old default) are moved to T's device, not mixed with it."""
    t = tucker_tensor
    on_cpu = spectral.identity_factors(t.shape)
    assert all(u.device.type == "cpu" for u in on_cpu)
    assert audited(lambda: spectral.projection_residual(t, on_cpu)) == 0.0


def test_g3_pipeline_stays_on_the_weights_device(device):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 10, 20, generator=g, dtype=F64).to(device)
    index = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(30)]).to(device)
    gates = torch.rand(30, 2, generator=g, dtype=F64).to(device)
    found = audited(lambda: routes.route_energy(w, index, gates, 2, max_bytes=8 * 800))
    reff = audited(lambda: found.effective_rank)
    random = audited(lambda: routes.random_subspace_energy(w, index, gates, 2, seed=3))
    assert found.energy.device == reff.device == random.device == w.device
    assert audited(lambda: routes.full_rank_residual(w, index, gates))[0] == 0.0


def test_the_audit_sees_a_constructor_without_device():
    with DeviceAudit() as audit:
        torch.zeros(3)
        torch.eye(2, device="cpu")
        torch.ones(2).cpu()
    assert audit.problems == ["torch.zeros without device=", "torch.ones without device=",
                              ".cpu() inside the computation"]
