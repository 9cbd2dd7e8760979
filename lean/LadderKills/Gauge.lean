import LadderKills.Defs

/-!
# G0: a free regauge cannot expose structure the spectrum does not have

An invertible gauge preserves every rank; an orthogonal gauge preserves the Gram matrix, hence the singular values
and the Frobenius norm. G0's kill (`LadderKills.EckartYoung`) follows: the best error at a rank budget is a function
of the singular values alone.
-/

open Matrix

namespace LadderKills

variable {m n : Type*} [Fintype m] [Fintype n] [DecidableEq m] [DecidableEq n]

/-- rung: g0
An invertible gauge leaves the rank family unchanged: for every weight `W i` of a family (layers, experts) and
invertible gauges `M i` on the left and `N i` on the right, `rank (M i * W i * N i) = rank (W i)`. -/
theorem invertible_gauge_preserves_rank_family {ι : Type*} (M : ι → Matrix m m ℝ) (N : ι → Matrix n n ℝ)
    (hM : ∀ i, IsUnit (M i).det) (hN : ∀ i, IsUnit (N i).det) (W : ι → Matrix m n ℝ) (i : ι) :
    (M i * W i * N i).rank = (W i).rank := by
  rw [Matrix.rank_mul_eq_left_of_isUnit_det (N i) (M i * W i) (hN i),
    Matrix.rank_mul_eq_right_of_isUnit_det (M i) (W i) (hM i)]

/-- rung: g0
An orthogonal matrix is invertible: `Qᵀ Q = 1` makes `det Q` a unit. -/
theorem IsOrthogonal.isUnit_det {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) : IsUnit Q.det :=
  Matrix.isUnit_det_of_left_inverse hQ.1

/-- rung: g0
In particular an orthogonal gauge preserves the rank of every weight. -/
theorem orthogonal_gauge_preserves_rank {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) (W : Matrix m n ℝ) :
    (Q * W).rank = W.rank :=
  Matrix.rank_mul_eq_right_of_isUnit_det Q W hQ.isUnit_det

/-- rung: g0
An orthogonal gauge leaves the Gram matrix unchanged: `(Q W)ᵀ (Q W) = Wᵀ W`. -/
theorem orthogonal_gauge_preserves_gram {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) (W : Matrix m n ℝ) :
    (Q * W)ᵀ * (Q * W) = Wᵀ * W := by
  rw [Matrix.transpose_mul, Matrix.mul_assoc, ← Matrix.mul_assoc Qᵀ Q W, hQ.1, Matrix.one_mul]

/-- rung: g0
An orthogonal gauge preserves the squared singular values: `λ_j((Q W)ᵀ (Q W)) = λ_j(Wᵀ W)`. -/
theorem orthogonal_gauge_preserves_sq_singular_values {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q)
    (W : Matrix m n ℝ) : sqSingularValues (Q * W) = sqSingularValues W :=
  eigenvalues_congr (gram_isHermitian (Q * W)) (gram_isHermitian W) (orthogonal_gauge_preserves_gram hQ W)

/-- rung: g0
An orthogonal gauge preserves the singular values: `σ_j(Q W) = σ_j(W)` for every `j`. -/
theorem orthogonal_gauge_preserves_singular_values {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q)
    (W : Matrix m n ℝ) (j : n) : singularValues (Q * W) j = singularValues W j := by
  unfold singularValues
  rw [orthogonal_gauge_preserves_sq_singular_values hQ W]

/-- rung: g0
An orthogonal gauge preserves the Frobenius norm: `‖Q X‖²_F = ‖X‖²_F`. -/
theorem frobSq_orthogonal_mul {Q : Matrix m m ℝ} (hQ : IsOrthogonal Q) (X : Matrix m n ℝ) :
    frobSq (Q * X) = frobSq X := by
  unfold frobSq
  rw [orthogonal_gauge_preserves_gram hQ X]

end LadderKills
