import LadderKills.Defs

/-!
# Gate 1: the byte count in closed form

A static low-rank student replaces one layer's `E` expert weights (`out × H` each) by `E` factors `out × r` and one
shared basis `H × r`. At equal bytes per value it is smaller exactly when `r (E·out + H) < E·out·H`. The Python
side (`pytest_ladder.measure.storage`) counts the same parts byte by byte; the property tests check that the two
agree.
-/

namespace LadderKills

/-- rung: g4
The static student stores fewer bytes than the dense experts whenever `r (E·out + H) < E·out·H` (at `b > 0`
bytes per value): `global_delta_bytes < 0`. -/
theorem static_student_bytes_lt_dense (E out H r b : ℕ) (hb : 0 < b) (hr : r * (E * out + H) < E * out * H) :
    staticStudentBytes E out H r b < denseExpertBytes E out H b := by
  unfold staticStudentBytes denseExpertBytes
  have h : E * out * r + H * r = r * (E * out + H) := by ring
  rw [h]
  exact mul_lt_mul_of_pos_left hr hb

/-- rung: g4
OLMoE-1B-7B: 64 experts whose fused gate/up weight is `2048 × 2048`, a rank-24 static basis, bf16 (2 bytes). -/
theorem olmoe_static_student_bytes_lt_dense :
    staticStudentBytes 64 2048 2048 24 2 < denseExpertBytes 64 2048 2048 2 :=
  static_student_bytes_lt_dense 64 2048 2048 24 2 (by norm_num) (by norm_num)

end LadderKills
