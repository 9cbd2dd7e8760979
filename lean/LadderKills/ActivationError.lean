import LadderKills.Defs

/-!
# Gate 2: the activation-weighted error is bounded by the Frobenius error

With `G = X Xᵀ`, `‖Δ X‖²_F = tr(Δ G Δᵀ) ≤ λ_max(G) ‖Δ‖²_F`, i.e. `‖Δ X‖_F ≤ √λ_max(G) · ‖Δ‖_F`. The statement
takes `λ` with `λ I − G` positive semidefinite, which is exactly `λ ≥ λ_max(G)`. The bound is why the data-free
Frobenius error is a proxy only: the activation-weighted error can be far smaller along directions `X` rarely uses,
and gate 2 measures it on real `X`.
-/

open Matrix

namespace LadderKills

variable {o d t : Type*} [Fintype o] [Fintype d] [Fintype t] [DecidableEq d]

/-- rung: g4
`‖Δ X‖²_F ≤ λ ‖Δ‖²_F` for every `λ ≥ λ_max(X Xᵀ)` (stated as `λ I − X Xᵀ ⪰ 0`). -/
theorem activation_weighted_error_le_frobenius (Δ : Matrix o d ℝ) (X : Matrix d t ℝ) (lam : ℝ)
    (hG : (lam • (1 : Matrix d d ℝ) - X * Xᵀ).PosSemidef) :
    frobSq (Δ * X) ≤ lam * frobSq Δ := by
  have hpsd := hG.mul_mul_conjTranspose_same Δ
  rw [Matrix.conjTranspose_eq_transpose_of_trivial] at hpsd
  have htr := hpsd.trace_nonneg
  have e1 : Δ * (lam • (1 : Matrix d d ℝ) - X * Xᵀ) * Δᵀ = lam • (Δ * Δᵀ) - (Δ * X) * (Δ * X)ᵀ := by
    simp only [Matrix.mul_sub, Matrix.sub_mul, Matrix.mul_smul, Matrix.smul_mul, Matrix.mul_one,
      Matrix.one_mul, Matrix.transpose_mul, Matrix.mul_assoc]
  rw [e1, Matrix.trace_sub, Matrix.trace_smul, smul_eq_mul, Matrix.trace_mul_comm Δ Δᵀ,
    Matrix.trace_mul_comm (Δ * X) (Δ * X)ᵀ] at htr
  unfold frobSq
  linarith

end LadderKills
