import LadderKills.Gauge

/-!
# G0: the Eckart–Young consequence

G0 claimed that a free orthogonal regauge (rotating or permuting weight axes) exposes compressible structure. The
kill: the least error at a rank budget depends on the singular values only (Eckart–Young), and an orthogonal gauge
does not move them (`LadderKills.Gauge`). `orthogonal_gauge_cannot_lower_rank_floor` is the part that needs no
Eckart–Young at all: whatever floor holds for `W` at rank `r` holds for every regauged `Q W`.
-/

open Matrix

namespace LadderKills

variable {m n : Type*} [Fintype m] [Fintype n] [DecidableEq m] [DecidableEq n]

/-- rung: g0
Eckart–Young–Mirsky, Frobenius form without sorting: a matrix `B` of rank at most `r` leaves at least the energy of
all but some `r` of `A`'s squared singular values, `Σ_{j ∉ S} σ_j²(A) ≤ ‖A − B‖²_F` with `|S| ≤ r` (take `S` = the
indices of the `r` largest). Not in Mathlib; the proof (Weyl's inequality for singular values) is not written yet. -/
theorem eckart_young_floor (A B : Matrix m n ℝ) (r : ℕ) (hB : B.rank ≤ r) :
    ∃ S : Finset n, S.card ≤ r ∧ ∑ j ∈ Sᶜ, sqSingularValues A j ≤ frobSq (A - B) := by
  sorry

/-- rung: g0
The consequence G0 rests on: no orthogonal regauge lowers the best error at a rank budget. If every rank-≤ r
approximation of `W` leaves squared error at least `floor`, so does every rank-≤ r approximation of `Q W`
(an approximation `B` of `Q W` gives `Qᵀ B` for `W`, of no larger rank and with the same error). -/
theorem orthogonal_gauge_cannot_lower_rank_floor {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) (W : Matrix m n ℝ)
    (r : ℕ) (floor : ℝ) (hfloor : ∀ B : Matrix m n ℝ, B.rank ≤ r → floor ≤ frobSq (W - B)) :
    ∀ B : Matrix m n ℝ, B.rank ≤ r → floor ≤ frobSq (Q * W - B) := by
  intro B hB
  have key : Q * W - B = Q * (W - Qᵀ * B) := by
    rw [Matrix.mul_sub, ← Matrix.mul_assoc, hQ.2, Matrix.one_mul]
  rw [key, frobSq_orthogonal_mul hQ]
  exact hfloor _ (le_trans (Matrix.rank_mul_le_right _ _) hB)

/-- rung: g0
G0's kill: after any orthogonal regauge `Q`, a rank-≤ r approximation of `Q W` still leaves the energy of all but
`r` of `W`'s own squared singular values (Eckart–Young on `Q W`, whose spectrum is `W`'s). -/
theorem regauge_residual_floor {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) (W B : Matrix m n ℝ) (r : ℕ)
    (hB : B.rank ≤ r) :
    ∃ S : Finset n, S.card ≤ r ∧ ∑ j ∈ Sᶜ, sqSingularValues W j ≤ frobSq (Q * W - B) := by
  obtain ⟨S, hS, h⟩ := eckart_young_floor (Q * W) B r hB
  refine ⟨S, hS, ?_⟩
  rwa [orthogonal_gauge_preserves_sq_singular_values hQ W] at h

end LadderKills
