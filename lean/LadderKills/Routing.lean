import LadderKills.Defs

/-!
# Gate 3: a perturbation below half the top-k margin flips no route

If the chosen experts beat every other by at least `γ` (the top-k margin) and every logit moves by less than `γ/2`,
every chosen expert still beats every other one: the top-k set, and so the route, is unchanged. The route flip rate
of such a perturbation is exactly zero.
-/

namespace LadderKills

variable {ι : Type*}

/-- rung: g6
Router logits `ℓ` whose top-k set `S` is separated by margin `γ`, perturbed by `δ` with `|δ i| < γ/2` everywhere,
still have `S` as their strict top set: no token's set of experts flips. -/
theorem route_flip_zero_above_margin (ℓ δ : ι → ℝ) (S : Finset ι) (γ : ℝ) (hsep : SeparatedBy ℓ S γ)
    (hδ : ∀ i, |δ i| < γ / 2) : StrictTop (fun i => ℓ i + δ i) S := by
  intro i hi j hj
  have h1 := hsep i hi j hj
  have h2 := (abs_lt.mp (hδ i)).1
  have h3 := (abs_lt.mp (hδ j)).2
  show ℓ j + δ j < ℓ i + δ i
  linarith

end LadderKills
