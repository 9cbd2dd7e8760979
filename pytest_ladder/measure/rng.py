"""Reproducible randomness: every random matrix in the library is drawn from a seed on the CPU.

Drawing on the CPU (then moving the result to the caller's device) makes a seed give the same baseline on every
machine, so a τ floor computed in CI and on a GPU box uses the same random matrices.
"""

from __future__ import annotations

import torch

Seed = int | torch.Generator


def cpu_generator(seed: Seed) -> torch.Generator:
    """A CPU generator seeded with `seed` (a CPU generator given as the seed is returned as is)."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(
                f"cpu_generator: got a generator on {seed.device}; pass an int seed or a CPU torch.Generator "
                "(random matrices are drawn on the CPU so that a seed means the same matrix on every device)"
            )
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"cpu_generator: seed must be an int or a CPU torch.Generator, got {type(seed).__name__}")
    return torch.Generator(device="cpu").manual_seed(int(seed))
