import LadderKills.Defs

/-!
# Gate 5: per-layer error compounds across layers

If every one of `L` layers inflates the loss by a factor at least `1 + ε`, the end-to-end inflation is at least
`(1 + ε)^L − 1 ≥ L ε` (Bernoulli). A per-layer error that looks harmless in a 4-layer scope can therefore exceed the
loss gate at 16 layers — the lesson of G4's full deploy, and the reason 1-bit experts (R1) must pass gate 5 at full
depth.
-/

namespace LadderKills

/-- rung: r1
Bernoulli's inequality for `ε ≥ 0`: `1 + L ε ≤ (1 + ε)^L`. -/
theorem one_add_mul_le_pow_of_nonneg (ε : ℝ) (hε : 0 ≤ ε) (L : ℕ) : 1 + (L : ℝ) * ε ≤ (1 + ε) ^ L := by
  induction L with
  | zero => simp
  | succ n ih =>
    have h1 : (0 : ℝ) ≤ 1 + ε := by linarith
    have h2 := mul_le_mul_of_nonneg_right ih h1
    have h3 : (0 : ℝ) ≤ (n : ℝ) * (ε * ε) := mul_nonneg (Nat.cast_nonneg n) (mul_nonneg hε hε)
    rw [pow_succ]
    push_cast
    nlinarith

/-- rung: r1
`L` layers each inflating by at least `1 + ε` (`ε ≥ 0`) exceed a loss gate below `L ε`:
`gate < (1 + ε)^L − 1`. -/
theorem one_bit_compounding_exceeds_gate (ε gate : ℝ) (L : ℕ) (hε : 0 ≤ ε) (h : gate < L * ε) :
    gate < (1 + ε) ^ L - 1 := by
  have hb := one_add_mul_le_pow_of_nonneg ε hε L
  linarith

/-- rung: r1
OLMoE-1B-7B's 16 layers against the 5% loss gate: a per-layer inflation of `1/256` or more fails gate 5. -/
theorem olmoe_sixteen_layer_compounding_exceeds_loss_gate (ε : ℝ) (hε : 1 / 256 ≤ ε) :
    (0.05 : ℝ) < (1 + ε) ^ 16 - 1 :=
  one_bit_compounding_exceeds_gate ε 0.05 16 (by linarith) (by norm_num; linarith)

end LadderKills
