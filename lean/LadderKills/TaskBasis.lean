import LadderKills.Defs

/-!
# Gate 4: a union basis contains every task's basis

The span of the union of the task bases contains each task's span, so projecting onto the union never does worse on
a task than that task's own basis; a task-conditional basis can only win by spending fewer directions on each task,
and gate 4 measures whether it does on the worst task.
-/

namespace LadderKills

variable {E : Type*} [NormedAddCommGroup E] [NormedSpace ℝ E] {τ : Type*}

/-- rung: g4
The span of the union of the task bases contains the span of every task's basis. -/
theorem task_union_basis_contains_task_basis (B : τ → Set E) (t : τ) :
    Submodule.span ℝ (B t) ≤ Submodule.span ℝ (⋃ s, B s) :=
  Submodule.span_mono (Set.subset_iUnion B t)

/-- rung: g4
Hence the distance of any activation `x` to the union span is at most its distance to the task's own span. -/
theorem task_union_basis_error_le (B : τ → Set E) (t : τ) (x : E) :
    Metric.infDist x (Submodule.span ℝ (⋃ s, B s) : Set E) ≤
      Metric.infDist x (Submodule.span ℝ (B t) : Set E) :=
  Metric.infDist_le_infDist_of_subset
    (SetLike.coe_subset_coe.mpr (task_union_basis_contains_task_basis B t))
    ⟨0, Submodule.zero_mem (Submodule.span ℝ (B t))⟩

end LadderKills
