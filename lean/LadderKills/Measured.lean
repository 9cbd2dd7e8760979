import LadderKills.Defs

/-!
# Measured constants

Every number measured on a model (or locked in a prereg) enters the kill theorems here, as a named `axiom`, and
nowhere else. The algebra downstream of these lines is what Lean checks; the lines themselves are only as good as
the measurement that produced them. A wrong measurement voids the kill; it cannot make the algebra wrong.
`ladder theorems` lists, for every theorem, which of these axioms it depends on.

The axioms are consistent (all-zero spectra satisfy them), so they cannot be used to prove `False`.
-/

namespace LadderKills

/-- rung: g2
Measured: the squared singular values, in descending order, of each mode unfolding of OLMoE-1B-7B's expert tensor
(layer × expert × hidden); `olmoe_mode_sq_sigma k i` is the `i`-th of mode `k`. -/
axiom olmoe_mode_sq_sigma : TuckerMode → ℕ → ℝ

/-- rung: g2
Measured: the squared singular values are nonnegative (eigenvalues of Gram matrices). -/
axiom olmoe_mode_sq_sigma_nonneg : ∀ (k : TuckerMode) (i : ℕ), 0 ≤ olmoe_mode_sq_sigma k i

/-- rung: g2
Locked in `prereg/g2/tau.json`: the number of parameters a Tucker model of the expert tensor may store. -/
axiom olmoe_g2_budget_params : ℕ

/-- rung: g2
Measured (seeds: residual ≥ 99.6%): at the largest rank the budget leaves a mode,
`olmoe_g2_budget_params / modeDim k`, at least 99.6% of that mode's energy lies outside the kept directions. -/
axiom olmoe_mode_residual_at_budget : ∀ k : TuckerMode,
    (0.996 : ℝ) * tailEnergy (olmoe_mode_sq_sigma k) (modeDim k) 0 ≤
      tailEnergy (olmoe_mode_sq_sigma k) (modeDim k) (olmoe_g2_budget_params / modeDim k)

end LadderKills
