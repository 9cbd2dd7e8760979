import Mathlib

/-!
# Definitions shared by the kill theorems

Real matrices `Matrix m n ℝ` (rows × columns). Conventions follow protocol.md §3: a weight `W` (out × in) acts on
activations `X` (in × tokens) as `W * X`; `G = X * Xᵀ` is the Gram matrix of the inputs and
`‖ΔX‖²_F = tr(Δ G Δᵀ)`. Everything measured on a model lives in `LadderKills.Measured`, not here.
-/

noncomputable section

open Matrix

namespace LadderKills

variable {m n : Type*} [Fintype m] [Fintype n]

/-- Squared Frobenius norm `‖X‖²_F = tr(Xᵀ X)`. -/
def frobSq (X : Matrix m n ℝ) : ℝ := (Xᵀ * X).trace

/-- `Q` is orthogonal: `Qᵀ Q = 1` and `Q Qᵀ = 1`. -/
def IsOrthogonal [DecidableEq m] (Q : Matrix m m ℝ) : Prop := Qᵀ * Q = 1 ∧ Q * Qᵀ = 1

/-- rung: g0
The Gram matrix `Wᵀ W` is symmetric (Hermitian over `ℝ`). -/
theorem gram_isHermitian (W : Matrix m n ℝ) : (Wᵀ * W).IsHermitian := by
  rw [Matrix.IsHermitian, Matrix.conjTranspose_eq_transpose_of_trivial, Matrix.transpose_mul,
    Matrix.transpose_transpose]

/-- rung: g0
Equal Hermitian matrices have equal eigenvalue families (the proofs of hermiticity do not matter). -/
theorem eigenvalues_congr [DecidableEq n] {A B : Matrix n n ℝ} (hA : A.IsHermitian) (hB : B.IsHermitian)
    (h : A = B) : hA.eigenvalues = hB.eigenvalues := by
  subst h
  rfl

/-- Squared singular values of `W`: the eigenvalues of its Gram matrix `Wᵀ W`, one per column. -/
def sqSingularValues [DecidableEq n] (W : Matrix m n ℝ) : n → ℝ := (gram_isHermitian W).eigenvalues

/-- Singular values `σ_j(W) = √(λ_j(Wᵀ W))`. -/
def singularValues [DecidableEq n] (W : Matrix m n ℝ) (j : n) : ℝ := Real.sqrt (sqSingularValues W j)

/-- Energy outside the top `r` directions of a spectrum `s` (squared singular values sorted in descending order)
of length `d`: `Σ_{r ≤ i < d} s i`. By Eckart–Young it is the least squared error of a rank-`r` approximation. -/
def tailEnergy (s : ℕ → ℝ) (d r : ℕ) : ℝ := ∑ i ∈ Finset.Ico r d, s i

/-- The three modes of the expert tensor a G2 Tucker model factorizes: layer × expert × hidden. -/
inductive TuckerMode
  | layer
  | expert
  | hidden
  deriving DecidableEq, Fintype

/-- Mode sizes of OLMoE-1B-7B's expert tensor (architecture, `OlmoeConfig`): 16 layers, 64 experts, hidden 2048. -/
def modeDim : TuckerMode → ℕ
  | .layer => 16
  | .expert => 64
  | .hidden => 2048

/-- Parameters of the Tucker factor matrices: `Σ_k d_k r_k`. -/
def tuckerFactorParams (r : TuckerMode → ℕ) : ℕ := ∑ k, modeDim k * r k

/-- Parameters a Tucker model with mode ranks `r` stores: the core `r₁ r₂ r₃` plus the factors `Σ_k d_k r_k`
(the closed form of `pytest_ladder.measure.storage.tucker_artifact`). -/
def tuckerParams (r : TuckerMode → ℕ) : ℕ :=
  r .layer * r .expert * r .hidden + tuckerFactorParams r

/-- Bytes a static low-rank student stores for one layer's experts: `E` factors `out × r` (each expert's weight
times the basis) plus one shared basis `H × r`, at `b` bytes per value. -/
def staticStudentBytes (E out H r b : ℕ) : ℕ := b * (E * out * r + H * r)

/-- Bytes of the dense experts it replaces: `E` weights `out × H` at `b` bytes per value. -/
def denseExpertBytes (E out H b : ℕ) : ℕ := b * (E * out * H)

variable {ι : Type*}

/-- The chosen experts `S` beat every other expert by at least `γ`: `ℓ j + γ ≤ ℓ i` for `i ∈ S`, `j ∉ S`.
For top-k routing with `S` the top-k set, the largest such `γ` is the top-k margin `ℓ_(k) − ℓ_(k+1)`. -/
def SeparatedBy (ℓ : ι → ℝ) (S : Finset ι) (γ : ℝ) : Prop := ∀ i ∈ S, ∀ j ∉ S, ℓ j + γ ≤ ℓ i

/-- `S` is the top-`|S|` set of `ℓ` without a tie at its boundary, so top-`|S|` routing picks exactly `S`. -/
def StrictTop (ℓ : ι → ℝ) (S : Finset ι) : Prop := ∀ i ∈ S, ∀ j ∉ S, ℓ j < ℓ i

end LadderKills
