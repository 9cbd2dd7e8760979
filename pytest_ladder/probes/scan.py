"""The scan of G10-scan and G10.5: decaying accumulations of a layer's attention input and their ridge readouts.

Per decay λ the contractive accumulation e_λ,t = λ e_λ,t−1 + (1 − λ) x_t, features φ_t = [x_t, e_λ1,t, ...], and the
readout W = (ΦᵀΦ + α I)⁻¹ ΦᵀO fit from float64 sufficient statistics (`Normal`), with α = ridge · tr(ΦᵀΦ) / d
(probes.attention's docstring has the whole method).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.workspace import Workspace, to_f64

if TYPE_CHECKING:
    from pytest_ladder.probes.attention import Calibration

F64 = torch.float64


def scan_features(x: torch.Tensor, decays: Sequence[float]) -> torch.Tensor:
    """φ = [x, e_λ1, ..., e_λm] (T, H·(m+1)) of one sequence x (T, H), e_λ,t = Σ_{s≤t} (1 − λ) λ^{t−s} x_s, float64."""
    x = x.to(F64)
    t = torch.arange(x.shape[0], device=x.device)
    lag = (t[:, None] - t[None, :]).to(F64)
    causal = lag >= 0
    parts = [x]
    for decay in decays:
        if not 0 <= decay < 1:
            raise ValueError(f"scan decays must lie in [0, 1) (contractive), got {decay}")
        kernel = torch.where(causal, (1 - decay) * torch.tensor(decay, dtype=F64, device=x.device).pow(
            lag.clamp_min(0)), torch.zeros((), dtype=F64, device=x.device))
        parts.append(kernel @ x)
    return torch.cat(parts, dim=-1)


@dataclass
class Normal:
    """Sufficient statistics of least squares Ô = Φ W over points: ΦᵀΦ (d, d), ΦᵀY (d, H) and Σ‖Y‖² per target.

    The statistics stay where they are computed, or at the home of the bounded workspace `add` is given (the CPU,
    page-locked: G10.5 on OLMoE-1B-7B keeps ~2.9 GB per layer and fold); the fits run on `device` (default: where the
    statistics are), which holds the factor of ΦᵀΦ + α I (or, for ridge 0, its eigendecomposition) and ΦᵀΦ they
    reuse until `release`."""

    ftf: torch.Tensor | None = None
    fty: dict[str, torch.Tensor] = field(default_factory=dict)
    yy: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    device: torch.device | None = None
    _eigh: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)
    _ftf: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    _factor: tuple[tuple[int, float], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def add(self, phi: torch.Tensor, targets: dict[str, torch.Tensor], *, workspace: Workspace | None = None
            ) -> None:
        """Fold in points with features phi (n, d) and each target (n, H), computed where phi is: one matmul for all
        targets, or, under a bounded `workspace`, for groups of targets whose products fit a quarter of it, the sums
        kept at its home (the CPU) and taken on the GPU a block at a time (`Workspace.accumulate`)."""
        phi = phi.to(F64)
        bounded = workspace is not None and workspace.bounded
        store = workspace if bounded else Workspace.on(phi.device, None)  # unbounded: the sums stay where computed
        max_bytes = workspace.limit // 4 if bounded else None
        self.ftf = store.accumulate(self.ftf, phi.mT @ phi)
        names, group, groups, width = list(targets), [], [], 0
        for name in names:  # consecutive targets whose ΦᵀY and float64 Y fit max_bytes together
            size = targets[name].shape[-1]
            if group and max_bytes is not None and (width + size) * (phi.shape[-1] + phi.shape[0]) * 8 > max_bytes:
                groups.append(group)
                group, width = [], 0
            group.append(name)
            width += size
        groups.append(group)
        for group in groups:
            self._add_products(phi, {name: targets[name] for name in group}, store)
        self.n_points += phi.shape[0]
        self.release()

    def _add_products(self, phi: torch.Tensor, targets: dict[str, torch.Tensor], store: Workspace) -> None:
        """Fold ΦᵀY and Σ‖Y‖² of a group of targets in with one product (its temporaries end with this call)."""
        sizes = [y.shape[-1] for y in targets.values()]
        ys = torch.cat([to_f64(y, phi.device) for y in targets.values()], dim=-1)
        for name, part, y in zip(targets, (phi.mT @ ys).split(sizes, dim=-1), ys.split(sizes, dim=-1)):
            self.fty[name] = store.accumulate(self.fty.get(name), part)
            self.yy[name] = self.yy.get(name, 0.0) + float(y.square().sum())

    def __add__(self, other: Normal) -> Normal:
        if other.ftf is None:
            return self
        if self.ftf is None:
            return other
        return Normal(self.ftf + other.ftf, {k: v + other.fty[k] for k, v in self.fty.items()},
                      {k: v + other.yy[k] for k, v in self.yy.items()}, self.n_points + other.n_points, self.device)

    @property
    def compute_device(self) -> torch.device:
        return self.device if self.device is not None else self.ftf.device

    def gram(self, width: int) -> torch.Tensor:
        """The leading (width, width) block of ΦᵀΦ on the compute device, kept until `release`."""
        if width not in self._ftf:
            self._ftf[width] = self.ftf[:width, :width].to(self.compute_device)
        return self._ftf[width]

    def products(self, target: str, width: int) -> torch.Tensor:
        """The first `width` rows of ΦᵀY of `target` on the compute device."""
        return self.fty[target][:width].to(self.compute_device)

    def eigh(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigendecomposition of the leading (width, width) block of ΦᵀΦ (the ridge-0 pseudo-inverse), computed once
        for every target (until `release`)."""
        if width not in self._eigh:
            self._eigh[width] = torch.linalg.eigh(self.gram(width))
            if self.ftf.device != self.compute_device:
                del self._ftf[width]  # only the decomposition stays on the device
        return self._eigh[width]

    def solve(self, rhs: torch.Tensor, width: int, ridge: float) -> torch.Tensor:
        """(A + α I)⁻¹ rhs, A the leading (width, width) block of ΦᵀΦ and α = ridge · tr(A) / width, on the compute
        device: through a Cholesky factor of A + α I for ridge > 0 (a third of an eigendecomposition's flops, a
        fraction of its time on a GPU, and factored in place: one matrix on the device), through the
        eigendecomposition's pseudo-inverse for ridge 0. The last factor is kept for the next target with the same
        (width, ridge), until `release`."""
        if ridge == 0:
            evals, evecs = self.eigh(width)
            evals = evals.clamp_min(0)
            kept = evals > EIG_CUTOFF * evals.max()
            inverse = torch.where(kept, 1.0 / evals.where(kept, torch.ones_like(evals)), torch.zeros_like(evals))
            return evecs @ (inverse[:, None] * (evecs.mT @ rhs))
        if self._factor is None or self._factor[0] != (width, ridge):
            self._factor = None  # the previous factor goes before the next is made
            cached = self._ftf.get(width)
            m = cached.clone() if cached is not None else self.ftf[:width, :width].to(self.compute_device, copy=True)
            m.diagonal().add_(ridge * float(m.diagonal().sum()) / width)
            self._factor = ((width, ridge), torch.linalg.cholesky(m, out=m))
        return torch.cholesky_solve(rhs, self._factor[1])

    def release(self) -> None:
        """Drop what the fits keep on the compute device (the statistics stay)."""
        self._eigh.clear()
        self._ftf.clear()
        self._factor = None


EIG_CUTOFF = 1e-12  # ridge 0: eigenvalues of ΦᵀΦ below EIG_CUTOFF · λ_max count as zero (pseudo-inverse)


def fit_scan(normal: Normal, target: str, ridge: float, *, width: int | None = None) -> torch.Tensor:
    """W = (ΦᵀΦ + α I)⁻¹ ΦᵀY with α = ridge · tr(ΦᵀΦ) / d (ridge 0: the least-squares pseudo-inverse), float64,
    through a factor of ΦᵀΦ + α I shared by every target fit in a row with the same ridge (`Normal.solve`).

    `width` keeps the first `width` features only (H of them: the memoryless map x_t -> o_t)."""
    if normal.ftf is None:
        raise ValueError("fit_scan: no calibration points were accumulated")
    d = normal.ftf.shape[0] if width is None else width
    return normal.solve(normal.products(target, d), d, ridge)


def fit_error(normal: Normal, target: str, w: torch.Tensor) -> float:
    """‖Φ W − Y‖_F / ‖Y‖_F on the accumulated (calibration) points, from the sufficient statistics."""
    d = w.shape[0]
    a, b = normal.gram(d), normal.products(target, d)
    w = w.to(a.device)
    sq = float((w * (a @ w)).sum() - 2 * (w * b).sum()) + normal.yy[target]
    return (max(sq, 0.0) / normal.yy[target]) ** 0.5


VALIDATION_EVERY = 5  # every fifth calibration sequence validates the ridge


def choose_ridges(calibration: Calibration, targets: Sequence[str], ridges: Sequence[float], *,
                  width: int | None = None) -> dict[str, float]:
    """Per target, the ridge of `ridges` whose fit on the fitting sequences has the lowest error on the validation
    sequences (a single ridge is used as is); what the choice kept on the compute device is released after it."""
    ridges = list(ridges)
    if not ridges:
        raise ValueError("readout: no ridge given; params.ridges must list at least one value")
    if len(ridges) == 1:
        return {target: ridges[0] for target in targets}
    calibration.flush()
    if calibration.validation.ftf is None or calibration.fit.ftf is None:
        raise ValueError(f"readout: choosing among {len(ridges)} ridges needs at least {VALIDATION_EVERY} "
                         "calibration sequences; raise params.calibration_tokens_per_feature")
    errors: dict[str, list[float]] = {target: [] for target in targets}
    for r in ridges:  # ridge by ridge: one factor of the fitting sequences' ΦᵀΦ + α I serves every target
        for target in targets:
            errors[target].append(fit_error(calibration.validation, target,
                                            fit_scan(calibration.fit, target, r, width=width)))
    chosen = {target: ridges[min(range(len(ridges)), key=errors[target].__getitem__)] for target in targets}
    calibration.fit.release()
    calibration.validation.release()
    return chosen


def readout(calibration: Calibration, target: str, ridges: Sequence[float], *, width: int | None = None
            ) -> tuple[torch.Tensor, float]:
    """(W, ridge): the ridge chosen on the validation sequences (`choose_ridges`), W refit with it on every
    calibration sequence."""
    chosen = choose_ridges(calibration, [target], ridges, width=width)[target]
    return fit_scan(calibration.normal, target, chosen, width=width), chosen


def random_readout(normal: Normal, target: str, seed: int) -> torch.Tensor:
    """The random-basis trap's readout: Haar-random orthonormal columns Q (d, H) scaled by the least-squares scalar
    c = tr(QᵀΦᵀY) / tr(QᵀΦᵀΦQ) on calibration — a scan of the same size whose readout was not fit."""
    d, h = normal.fty[target].shape
    q = random_orthonormal_columns(d, h, seed, device=normal.compute_device, qr_on_device=True)
    c = (q * normal.products(target, d)).sum() / (q * (normal.gram(d) @ q)).sum()
    return c * q
