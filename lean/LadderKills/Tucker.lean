import LadderKills.Measured

/-!
# G2: no cross-mode Tucker reshape compresses past the budget

A Tucker model with mode ranks `r` stores `r₁ r₂ r₃ + Σ_k d_k r_k` parameters. Fitting the budget caps every mode
rank at `budget / d_k`; its mode-`k` unfolding then has rank at most `r_k`, so by Eckart–Young
(`LadderKills.eckart_young_floor`) it misses at least the tail energy of that unfolding's spectrum past `r_k`. The
measured spectra (`LadderKills.Measured`) put that tail above 99.6% of the energy at the budget rank; the tail only
grows as the rank shrinks. The measured values are the only non-algebraic input, and they are named axioms.
-/

namespace LadderKills

/-- rung: g2
The tail energy shrinks as the kept rank grows (for a nonnegative spectrum). -/
theorem tailEnergy_antitone (s : ℕ → ℝ) (hs : ∀ i, 0 ≤ s i) (d : ℕ) {r R : ℕ} (h : r ≤ R) :
    tailEnergy s d R ≤ tailEnergy s d r := by
  unfold tailEnergy
  exact Finset.sum_le_sum_of_subset_of_nonneg (Finset.Ico_subset_Ico_left h) (fun i _ _ => hs i)

/-- rung: g2
Every mode of the expert tensor is nonempty. -/
theorem modeDim_pos (k : TuckerMode) : 0 < modeDim k := by
  cases k <;> decide

/-- rung: g2
One factor matrix alone already costs `d_k r_k` of the Tucker parameters. -/
theorem modeDim_mul_rank_le_tuckerParams (r : TuckerMode → ℕ) (k : TuckerMode) :
    modeDim k * r k ≤ tuckerParams r := by
  have h1 : modeDim k * r k ≤ tuckerFactorParams r := by
    unfold tuckerFactorParams
    exact Finset.single_le_sum (f := fun j => modeDim j * r j) (fun j _ => Nat.zero_le _) (Finset.mem_univ k)
  unfold tuckerParams
  exact le_trans h1 (Nat.le_add_left _ _)

/-- rung: g2
The byte closed form caps every mode rank: a Tucker model within `P` parameters has `r_k ≤ P / d_k`. -/
theorem mode_rank_le_budget (r : TuckerMode → ℕ) (P : ℕ) (h : tuckerParams r ≤ P) (k : TuckerMode) :
    r k ≤ P / modeDim k := by
  rw [Nat.le_div_iff_mul_le (modeDim_pos k), Nat.mul_comm]
  exact le_trans (modeDim_mul_rank_le_tuckerParams r k) h

/-- rung: g2
No cross-mode Tucker reshape of OLMoE-1B-7B's layer × expert × hidden expert tensor compresses past the G2 budget:
for every choice of mode ranks within the budget, every mode unfolding keeps at most `0.4%` of its energy, i.e. the
Eckart–Young floor of its relative residual is at least `99.6%`. Conditional only on the measured spectra. -/
theorem olmoe_tucker_cross_mode_no_compression (r : TuckerMode → ℕ)
    (hbudget : tuckerParams r ≤ olmoe_g2_budget_params) (k : TuckerMode) :
    (0.996 : ℝ) * tailEnergy (olmoe_mode_sq_sigma k) (modeDim k) 0 ≤
      tailEnergy (olmoe_mode_sq_sigma k) (modeDim k) (r k) :=
  le_trans (olmoe_mode_residual_at_budget k)
    (tailEnergy_antitone _ (olmoe_mode_sq_sigma_nonneg k) _ (mode_rank_le_budget r _ hbudget k))

end LadderKills
