"""G4: a static rank-r basis on the expert inputs, shared by one layer's experts, replaces what the experts see.

The experts of a layer read their input x (the router input, H wide) through gate and up; stacked, W_e = [gate_e;
up_e] (2I, H). A basis replaces x by P x with one rank-r P per layer (per task for the task-conditional variant),
so every expert stores W_e P = (W_e L)(R): a factor W_e L (2I, r) per expert and one shared R (r, H) — the static
student of the Lean theorem `static_student_bytes_lt_dense`.

The fit (calibration Grams, float64): with G = Σ_e G_e the layer's routed-input Gram, S = G^{1/2} and
M = Σ_e n_e W_eᵀ W_e (n_e tokens routed to e), V = top-r eigenvectors of S M S and P = S V Vᵀ S⁺. Writing
X = S Z, ‖W_e (I − P) X‖² = tr(W_e S (I − V Vᵀ) S W_eᵀ), so under G_e ≈ (n_e / Σ n) G this P minimises the
token-weighted activation error over rank-r input maps; on experts that are exactly rank r in a shared input
subspace it reproduces every expert exactly on the data (S⁺ inverts S on the data's span; zero eigenvalues of G
are cut at a relative 1e-12).

Gates read the held-out Grams through `measure.activation_error`; the full-depth deploy installs W_e P (or the
off-projection W_e (I − P)) in every MoE layer with `models.weights.patched_parameters` and scores routes and NLL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pytest_ladder.measure.errors import activation_error, worst_task_error
from pytest_ladder.measure.orthogonal import random_orthonormal_columns
from pytest_ladder.measure.routing import route_flip_rate
from pytest_ladder.measure.storage import Artifact, DtypeLike, TensorStorage, dense_artifact, global_delta_bytes
from pytest_ladder.measure.workspace import Workspace, nbytes, to_f64

if TYPE_CHECKING:
    from pytest_ladder.models.adapters import MoEAdapter

F64 = torch.float64
EIG_CUTOFF = 1e-12  # eigenvalues of G below EIG_CUTOFF · λ_max count as zero (outside the data's span)


@dataclass(frozen=True)
class InputBasis:
    """The rank-r input map P = L R (x -> P x) of one layer: L (H, r), R (r, H), float64."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[-1]

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """W P for W (..., out, H): what the experts compute once their inputs pass through the basis, float64, on
        the basis's device."""
        w = to_f64(w, self.left.device)
        return (w @ self.left) @ self.right

    def off(self, w: torch.Tensor) -> torch.Tensor:
        """W (I − P): the experts fed only what the basis claims to ignore (the off-projection trap)."""
        return to_f64(w, self.left.device) - self.apply(w)


def identity_basis(hidden: int, *, device: torch.device | str | None = None) -> InputBasis:
    """P = I (L = R = I): the uncompressed pipeline; `apply(W)` is W exactly (the trivial-pass trap)."""
    eye = torch.eye(hidden, dtype=F64, device=device)
    return InputBasis(eye, eye)


def random_basis(hidden: int, rank: int, seed: int, *, device: torch.device | str | None = None) -> InputBasis:
    """A Haar-random rank-r orthogonal projector Q Qᵀ (the τ baselines and the random-basis trap)."""
    q = random_orthonormal_columns(hidden, rank, seed, device=device)
    return InputBasis(q, q.mT.contiguous())


def gram_sqrt_pinv(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S⁺) with S = G^{1/2} symmetric PSD and S⁺ its pseudo-inverse (eigenvalues ≤ EIG_CUTOFF·λ_max cut)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram.to(F64))
    kept = eigenvalues > EIG_CUTOFF * eigenvalues.max().clamp_min(0)
    root = eigenvalues.clamp_min(0).sqrt()
    inv_root = torch.where(kept, 1.0 / root.where(kept, torch.ones_like(root)), torch.zeros_like(root))
    return (eigenvectors * root) @ eigenvectors.mT, (eigenvectors * inv_root) @ eigenvectors.mT


def fit_input_basis(weights: torch.Tensor, gram: torch.Tensor, counts: torch.Tensor, rank: int, *,
                    workspace: Workspace | None = None) -> InputBasis:
    """The layer's rank-r basis from expert input maps W (E, out, H), the routed-input Gram G = Σ_t x_t x_tᵀ (H, H)
    (∝ Σ_e G_e: every token reaches k experts) and the token counts n_e (E,) of the calibration tokens.

    V = top-r eigenvectors of S M S with S = G^{1/2}, M = Σ_e n_e W_eᵀ W_e; P = S V Vᵀ S⁺ (module docstring).
    With a bounded `workspace`, M is summed over chunks of experts on its device (W may wait on the CPU).
    """
    return fit_input_bases(weights, gram, counts, (rank,), workspace=workspace)[rank]


def fit_input_bases(weights: torch.Tensor, gram: torch.Tensor, counts: torch.Tensor, ranks: Sequence[int], *,
                    workspace: Workspace | None = None) -> dict[int, InputBasis]:
    """{rank: fit_input_basis(..., rank)} for several ranks from one eigendecomposition (the bases are nested: the
    rank-r basis keeps the top r eigenvectors of S M S)."""
    hidden = weights.shape[-1]
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= hidden:
            raise ValueError(f"fit_input_basis: rank must be an int in 1..{hidden} (the input width), got {rank!r}")
    if tuple(gram.shape) != (hidden, hidden) or tuple(counts.shape) != (weights.shape[0],):
        raise ValueError(f"fit_input_basis: Gram {tuple(gram.shape)} and counts {tuple(counts.shape)} do not match "
                         f"expert weights {tuple(weights.shape)}: need (H, H) and (E,) for (E, out, H)")
    device = weights.device if workspace is None else workspace.device
    n = to_f64(counts, device)
    if not float(n.sum()) > 0:
        raise ValueError("fit_input_basis: no calibration tokens were routed to this layer's experts; capture more "
                         "calibration tokens (params.calibration_points)")
    s, s_pinv = gram_sqrt_pinv(gram.to(device))
    m = token_weighted_gram(weights, n, workspace=workspace)
    _, eigenvectors = torch.linalg.eigh(s @ m @ s)
    descending = eigenvectors.flip(-1)
    return {rank: InputBasis(s @ descending[:, :rank], descending[:, :rank].mT @ s_pinv) for rank in ranks}


def rank_grid(rank: int, hidden: int) -> list[int]:
    """The ranks a failing claim is measured at to show where it would pass: 1, 2, 4, ... up to the input width,
    the width itself and the claimed rank."""
    grid = {hidden, rank}
    size = 1
    while size < hidden:
        grid.add(size)
        size *= 2
    return sorted(grid)


def token_weighted_gram(weights: torch.Tensor, counts: torch.Tensor, *, workspace: Workspace | None = None
                        ) -> torch.Tensor:
    """M = Σ_e n_e W_eᵀ W_e (H, H) float64 from expert input maps W (E, out, H) and token counts n (E,); with a
    bounded `workspace`, summed over chunks of experts on its device (each expert's float64 copy and the scaled copy
    torch.einsum makes of it count against the workspace)."""
    device = weights.device if workspace is None else workspace.device
    n = to_f64(counts, device)
    if workspace is None:
        w = weights.to(F64)
        return torch.einsum("e,eoi,eoj->ij", n, w, w)
    hidden = weights.shape[-1]
    m = torch.zeros(hidden, hidden, dtype=F64, device=device)
    for span in workspace.spans(weights.shape[0], 2 * nbytes(tuple(weights.shape[1:]))):
        w = to_f64(weights[span], device)
        m += torch.einsum("e,eoi,eoj->ij", n[span], w, w)
        del w
    return m


def fit_energy_split(weights: torch.Tensor, gram: torch.Tensor, counts: torch.Tensor, basis: InputBasis, *,
                     workspace: Workspace | None = None) -> tuple[float, float]:
    """(kept, off): the shares of the fit's own objective energy Σ_e n_e ‖W_e X‖² (X the calibration tokens,
    G = X Xᵀ) that the experts reach through `basis.apply` (W_e P X) and through `basis.off` (W_e (I − P) X), i.e.
    tr(M P G Pᵀ) / tr(M G) and tr(M (I − P) G (I − P)ᵀ) / tr(M G) with M = Σ_e n_e W_eᵀ W_e.

    The maps are applied to A = M^{1/2} (H, H), a stand-in with the stacked experts' Gram, so `apply` and `off` are
    the very maps the deploy installs. For P = S V Vᵀ S⁺ (what `fit_input_basis` builds, S = G^{1/2}, V orthonormal in
    the data's span) (I − P) G Pᵀ = 0, so kept + off = 1 whatever V is: a check of the pipeline, not of the basis.
    `off` is the fit's objective (its squared error): the fitted V minimises it over every rank-r input map
    (Eckart–Young on M^{1/2} S), so no other rank-r basis has a smaller `off` on the data it was fit on.
    """
    device = gram.device if workspace is None else workspace.device
    s = gram_sqrt_pinv(gram.to(device))[0]
    a = gram_sqrt_pinv(token_weighted_gram(weights, counts, workspace=workspace).to(device))[0]
    total = float((a @ s).square().sum())
    if not total > 0:
        raise ValueError("fit_energy_split: the experts see no calibration energy (M G = 0); capture more "
                         "calibration tokens (params.calibration_points)")
    kept = float((basis.apply(a).to(device) @ s).square().sum()) / total
    off = float((basis.off(a).to(device) @ s).square().sum()) / total
    return kept, off


def stacked_inputs(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """W_e = [gate_e; up_e]: the experts' input maps (E, 2I, H) from gate and up (E, I, H)."""
    return torch.cat([gate, up], dim=-2)


def basis_error(weights: torch.Tensor, basis: InputBasis, grams: torch.Tensor, *,
                workspace: Workspace | None = None) -> float:
    """Gate 2 on one layer: pooled ‖(W_e − W_e P) X_e‖_F / ‖W_e X_e‖_F over the experts (token-weighted)."""
    return activation_error(weights, basis.apply, grams, workspace=workspace).pooled


def student_artifact(name: str, n_experts: int, out: int, hidden: int, rank: int, dtype: DtypeLike) -> Artifact:
    """What a layer's static student stores: E factors W_e L (out, r) and the shared R (r, H), at `dtype`."""
    return Artifact((TensorStorage(f"{name}.factors", (n_experts, out, rank), dtype=dtype, kind="factor"),
                     TensorStorage(f"{name}.basis", (rank, hidden), dtype=dtype, kind="basis")))


def student_delta_bytes(stacks: Mapping[str, tuple[DtypeLike, Sequence[int]]], rank: int | None) -> int:
    """Gate 1 for the static student: its bytes minus the dense input maps, over `stacks` {layer: (stored dtype,
    (E, out, H))} (every MoE layer's stacked gate/up experts). `rank=None` is the uncompressed pipeline (the dense
    maps kept as they are): exactly 0."""
    total = 0
    for name, (dtype, (n_experts, out, hidden)) in stacks.items():
        dense = dense_artifact(f"{name}.experts.gate_up", (n_experts, out, hidden), dtype)
        student = dense if rank is None else student_artifact(f"{name}.experts.gate_up", n_experts, out, hidden,
                                                              rank, dtype)
        total += global_delta_bytes(student, dense)
    return total


def input_stacks(tensors: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> dict[str, tuple[torch.dtype, tuple]]:
    """{"layers.L": (stored dtype, (E, 2I, H))}: every MoE layer's stacked gate/up experts from a checkpoint's
    {name: (dtype, shape)} headers (models.checkpoint.Checkpoint.dtype_bytes; probes.rotorquant.expert_stacks)."""
    from pytest_ladder.probes.rotorquant import expert_stacks

    return {name.rsplit(".", 1)[0]: (dtype, (e, 2 * out, hidden))
            for name, (dtype, (e, out, hidden)) in expert_stacks(tensors).items() if name.endswith(".gate")}


def deploy_updates(adapter: MoEAdapter, bases: Mapping[int, InputBasis], *, off: bool = False
                   ) -> dict[tuple[str, int], torch.Tensor]:
    """Parameter updates installing W_e P (or W_e (I − P) with `off`) as every expert's gate and up in each layer of
    `bases`, at the stored dtype, computed and held on each basis's device (for models.weights.patched_parameters,
    which writes a GPU parameter in place and moves a value only where its parameter lives elsewhere). down is not
    rewritten; P = I writes W bit for bit. `LowRankStudy.deploy` asks for one layer at a time (one layer's updates
    held at once: 0.5 GB on OLMoE-1B-7B, not 8 GB)."""
    from pytest_ladder.models.adapters import ExpertWeights

    updates: dict[tuple[str, int], torch.Tensor] = {}
    for layer, basis in bases.items():
        for expert in range(adapter.n_experts):
            weights = adapter.expert_weights(layer, expert)
            stacked = stacked_inputs(weights.gate, weights.up)
            new = (basis.off(stacked) if off else basis.apply(stacked)).to(dtype=weights.gate.dtype)
            gate, up = new.chunk(2, dim=-2)
            found = adapter.expert_updates(layer, expert, ExpertWeights(gate, up, weights.down))
            updates.update({key: value for key, value in found.items() if value is not weights.down})
    return updates


# ------------------------------------------------------------------------------------------------ the study ---


@dataclass(frozen=True)
class Deploy:
    """One task under a full-depth deploy: its ΔNLL fraction against the dense model, both NLL records, and (when
    routes were captured) the dense and deployed top-k indices of every MoE layer on its held-out points."""

    task: str
    delta_nll: float
    nll: dict
    dense_routes: tuple[torch.Tensor, ...] = ()
    routes: tuple[torch.Tensor, ...] = ()

    @property
    def route_flip_rate(self) -> float:
        return route_flip_rate(list(self.dense_routes), list(self.routes))


def pooled_flip_rate(deploys: Sequence[Deploy]) -> float:
    """Gate 3 over every (token, MoE layer) position of several tasks' deploys."""
    return route_flip_rate([r for d in deploys for r in d.dense_routes], [r for d in deploys for r in d.routes])


class LowRankStudy:
    """G4 on one loaded model, over the shared routing data (probes.routes.RoutingStudy), each quantity once.

    Bases: "universal" (every task's calibration tokens pooled) or one task's. Deploys (every MoE layer):
    "identity" (P = I), "method" (the universal bases), "off" (W_e (I − P) with the universal bases) and "removed"
    (W_e · 0: the experts fed nothing, the most an off-projection can do).
    """

    def __init__(self, routing: Any, rank: int, tasks: Sequence[str], *, calibration_points: int) -> None:
        self.routing, self.rank, self.tasks = routing, rank, tuple(tasks)
        self.calibration_points = calibration_points
        self._bases: dict[tuple[str, int], InputBasis] = {}
        self._deploys: dict[tuple[str, str, bool], Deploy] = {}
        self._reference: dict[str, Any] = {}
        self._texts: dict[str, list[str]] = {}
        self._taus: dict[tuple, Any] = {}

    @property
    def adapter(self) -> Any:
        return self.routing.adapter

    def weights(self, layer: int) -> torch.Tensor:
        """W_e = [gate_e; up_e] (E, 2I, H) of the layer at the stored dtype, on the study's device: the fused
        parameter itself (read-only) where the layer is resident there, else its stacks concatenated."""
        fused = self.adapter.resident_experts(layer, "gate_up", self.device)
        if fused is not None:
            return fused
        stacks = self.routing.stacks(layer)
        return stacked_inputs(stacks["gate"], stacks["up"])

    @property
    def device(self) -> torch.device:
        return self.routing.device

    @property
    def workspace(self) -> Workspace | None:
        """The routing study's workspace when bounded (chunks over experts), else None (one batched product)."""
        workspace = self.routing.workspace
        return workspace if workspace.bounded else None

    def calibration(self, fit_on: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, n): the routed-input Gram and the per-expert token counts of one task's calibration tokens, or of all
        of them ("universal"): what a basis of `fit_on` is fit on."""
        tasks = self.tasks if fit_on == "universal" else (fit_on,)
        captured = [self.routing.calibration(task, layer, self.calibration_points) for task in tasks]
        return sum(c.input_gram for c in captured), sum(c.expert_tokens.to(F64) for c in captured)

    def basis(self, fit_on: str, layer: int) -> InputBasis:
        """The layer's rank-r basis fit on one task's calibration tokens, or on all of them ("universal")."""
        if (fit_on, layer) not in self._bases:
            gram, counts = self.calibration(fit_on, layer)
            self._bases[fit_on, layer] = fit_input_basis(self.weights(layer), gram, counts, self.rank,
                                                         workspace=self.workspace)
        return self._bases[fit_on, layer]

    def fit_split(self, fit_on: str, layer: int, basis: InputBasis) -> tuple[float, float]:
        """`fit_energy_split` of `basis` on the calibration data a basis of `fit_on` is fit on: (kept, off)."""
        gram, counts = self.calibration(fit_on, layer)
        return fit_energy_split(self.weights(layer), gram, counts, basis, workspace=self.workspace)

    def fit_error(self, fit_on: str, layer: int, basis: InputBasis) -> float:
        """sqrt(off) of `fit_split`: `basis`'s error on the objective the `fit_on` basis minimises (no rank-r basis
        goes below the fitted one there)."""
        return self.fit_split(fit_on, layer, basis)[1] ** 0.5

    def error(self, layer: int, task: str, basis: InputBasis) -> float:
        """Gate 2 of `basis` on the layer's held-out tokens of `task`."""
        return basis_error(self.weights(layer), basis, self.routing.expert_grams(task, layer)[0],
                           workspace=self.workspace)

    def error_by_rank(self, layer: int, task: str, ranks: Sequence[int]) -> dict[int, float]:
        """{rank: gate 2 of the universal basis of that rank} on the layer's held-out tokens of `task`: where a
        claim killed at its rank would have passed."""
        captured = [self.routing.calibration(t, layer, self.calibration_points) for t in self.tasks]
        bases = fit_input_bases(self.weights(layer), sum(c.input_gram for c in captured),
                                sum(c.expert_tokens.to(F64) for c in captured), list(ranks), workspace=self.workspace)
        return {rank: self.error(layer, task, basis) for rank, basis in bases.items()}

    def worst_task(self, layer: int) -> Any:
        """Gate 4 at one layer: every task's own basis on its held-out tokens (measure.worst_task_error)."""
        return worst_task_error(self.weights(layer), {t: self.basis(t, layer).apply for t in self.tasks},
                                {t: self.routing.expert_grams(t, layer)[0] for t in self.tasks},
                                workspace=self.workspace)

    def texts(self, task: str) -> list[str]:
        """The ΔNLL points: the first held-out documents reaching n_points tokens (probes.expert_outputs)."""
        if task not in self._texts:
            from pytest_ladder.probes.expert_outputs import heldout_texts

            self._texts[task] = heldout_texts(self.routing.corpora[task].heldout, self.routing.loaded.tokenizer,
                                              self.routing.n_points)
        return self._texts[task]

    def _nll(self, task: str) -> Any:
        from pytest_ladder.models.nll import rolling_nll

        loaded = self.routing.loaded
        return rolling_nll(loaded.model, loaded.tokenizer, self.texts(task), batch_size=self.routing.batch_size,
                           desc=f"nll {task}")

    def reference(self, task: str) -> Any:
        """The dense model's held-out NLL of `task` (nothing patched)."""
        if task not in self._reference:
            self._reference[task] = self._nll(task)
        return self._reference[task]

    def deploy_bases(self, kind: str) -> tuple[dict[int, InputBasis], bool]:
        """(the basis of every MoE layer, whether the experts get the off-projection) of a deploy kind."""
        layers, hidden = self.adapter.moe_layers(), self.adapter.hidden_size
        if kind in ("identity", "removed"):
            return {layer: identity_basis(hidden, device=self.device) for layer in layers}, kind == "removed"
        if kind in ("method", "off"):
            return {layer: self.basis("universal", layer) for layer in layers}, kind == "off"
        raise ValueError(f"unknown deploy {kind!r}: use identity, method, off or removed")

    def deploy(self, kind: str, task: str, *, routes: bool = False) -> Deploy:
        """`task` with every MoE layer patched by the deploy `kind` (class docstring): ΔNLL, and routes if asked."""
        key = (kind, task, routes)
        if key not in self._deploys:
            from pytest_ladder.measure.loss import delta_nll_fraction
            from pytest_ladder.models.capture import CaptureSpec
            from pytest_ladder.models.weights import patched_layers

            reference, layers = self.reference(task), self.adapter.moe_layers()
            dense = self.routing.heldout(task) if routes else None
            bases, off = self.deploy_bases(kind)
            with patched_layers(self.routing.loaded.model,
                                (lambda layer=layer, basis=basis: deploy_updates(self.adapter, {layer: basis}, off=off)
                                 for layer, basis in bases.items())):
                scored = self._nll(task)
                routed = self.routing.capture(task, "heldout", CaptureSpec(gram=False, topk=True)) if routes else None
            self._deploys[key] = Deploy(
                task=task,
                delta_nll=delta_nll_fraction(reference.nats, scored.nats, tokens_dense=reference.tokens,
                                             tokens_comp=scored.tokens),
                nll={"dense": reference.as_dict(), "deployed": scored.as_dict()},
                dense_routes=tuple(dense[layer].topk_index for layer in layers) if routes else (),
                routes=tuple(routed[layer].topk_index for layer in layers) if routes else (),
            )
        return self._deploys[key]

    def tau(self, layer: int, task: str, seeds: Sequence[int]) -> Any:
        """The τ floor of a cell: the errors of B Haar-random rank-r bases (measure.tau.tau_floor), once per cell."""
        key = ("tau", layer, task, tuple(seeds))
        if key not in self._taus:
            from pytest_ladder.measure.tau import tau_floor

            hidden = self.adapter.hidden_size
            self._taus[key] = tau_floor(lambda seed: random_basis(hidden, self.rank, seed, device=self.device),
                                        lambda basis: self.error(layer, task, basis), seeds)
        return self._taus[key]

    def trivial_pass(self, layer: int, task: str, stacks: Mapping[str, tuple[torch.dtype, Sequence[int]]]) -> Any:
        """The uncompressed pipeline (P = I) on one cell and its task at full depth, and the dense byte count:
        measure.traps.trivial_pass_trap of activation error, route flips, ΔNLL and byte delta (all exactly 0)."""
        from pytest_ladder.measure.traps import trivial_pass_trap

        deploy = self.deploy("identity", task, routes=True)
        identity = identity_basis(self.adapter.hidden_size, device=self.device)
        return trivial_pass_trap(activation_error=self.error(layer, task, identity),
                                 route_flip_rate=deploy.route_flip_rate, delta_nll=deploy.delta_nll,
                                 delta_bytes=student_delta_bytes(stacks, None))
