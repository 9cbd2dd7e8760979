"""G5: linear-representation-implied compression, tested at its proxy on the residual stream.

If a layer's residual stream were a sparse superposition of few linear features, then once its few dominant
principal directions are removed (deflated: massive activations, the mean direction), a small number of further
directions would carry most of what is left. Per layer the probe counts them from the residual stream's
second-moment matrix G = Σ_t x_t x_tᵀ (held-out tokens, float64): with eigenvalues λ_1 ≥ λ_2 ≥ ... of G (the
energies σ_i² of the activations), d = the smallest count such that λ_{k+1} + ... + λ_{k+d} ≥ f · Σ_{i>k} λ_i
after deflating k directions (measure.spectra.directions_after_deflation). The claim is plausible in a layer when
d / H is small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.spectra import (
    directions_after_deflation,
    effective_rank,
    energy_at_rank,
    residual_energy,
    singular_values_from_gram,
)

F64 = torch.float64


@dataclass(frozen=True)
class Deflation:
    """Directions d needed for `fraction` of the energy left after deflating `deflated` directions, of width H."""

    directions: int
    width: int
    deflated: int
    fraction: float
    spectrum: torch.Tensor  # σ of the activations (descending), float64
    effective_rank_after: float  # r_eff of the deflated spectrum

    @property
    def width_fraction(self) -> float:
        """d / H: the share of the residual width the claim needs."""
        return self.directions / self.width

    @property
    def kept_energy(self) -> float:
        """Share of the deflated energy the d directions keep (≥ fraction)."""
        return float(energy_at_rank(self.spectrum[self.deflated:], self.directions))


def deflated_directions(gram: torch.Tensor, deflate: int, fraction: float) -> Deflation:
    """G5 on one layer from the residual stream's Gram G (H, H): see the module docstring."""
    width = gram.shape[-1]
    if not 0 <= deflate < width:
        raise ValueError(f"deflated_directions: deflate must lie in 0..{width - 1} (the residual width), got {deflate}")
    spectrum = singular_values_from_gram(gram)
    directions = int(directions_after_deflation(spectrum, deflate, fraction))
    return Deflation(directions=directions, width=width, deflated=deflate, fraction=float(fraction),
                     spectrum=spectrum, effective_rank_after=float(effective_rank(spectrum[deflate:])))


def full_width_residual(gram: torch.Tensor, deflate: int) -> float:
    """Energy left outside all H − k deflated-spectrum directions: exactly 0 (the trivial pass: nothing dropped)."""
    spectrum = singular_values_from_gram(gram)[deflate:]
    return float(residual_energy(spectrum, spectrum.shape[-1]))


def random_directions_energy(gram: torch.Tensor, deflate: int, directions: int, seed: int) -> float:
    """Share of the deflated energy a Haar-random d-dim subspace of the deflated complement keeps (random basis).

    The deflated complement is spanned by the eigenvectors k+1..H of G; a random d-subspace of it keeps
    tr(Qᵀ G Q) / Σ_{i>k} λ_i, never more than the top-d eigenvectors' share (Ky Fan)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram.to(F64))
    eigenvalues, eigenvectors = eigenvalues.flip(-1).clamp_min(0), eigenvectors.flip(-1)
    complement = eigenvectors[:, deflate:]
    q = complement @ random_orthonormal_columns(complement.shape[-1], directions, seed, device=gram.device)
    kept = (q.mT @ gram.to(F64) @ q).diagonal().sum()
    return float(kept / eigenvalues[deflate:].sum())


def residual_grams(loaded: Any, sequences: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int = 8,
                   skip_prefix: bool = True) -> dict[int, torch.Tensor]:
    """Σ_t x_t x_tᵀ (H, H) float64 of the residual stream entering each decoder layer of `layers` (the model's
    hidden_states[layer]), over the points of `sequences` (each starts with the prefix token; padding and, with
    `skip_prefix`, position 0 are not points — as in models.capture)."""
    from pytest_ladder.models.capture import batches, model_device, pad_batch

    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    pad = loaded.prefix_token_id if pad is None else pad
    grams: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches(sequences, batch_size):
                ids, mask = pad_batch(batch, pad, model_device(model))
                valid = mask.bool().clone()
                if skip_prefix:
                    valid[:, 0] = False
                hidden = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
                for layer in layers:
                    x = hidden.hidden_states[layer][valid.to(hidden.hidden_states[layer].device)].to(F64)
                    grams[layer] = grams.get(layer, 0) + x.mT @ x
    finally:
        model.train(was_training)
    return grams
