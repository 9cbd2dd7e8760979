import Lake
open Lake DSL

/-! The ladder's Lean kill theorems. Build: `lake exe cache get && lake build` (Mathlib's cache saves hours);
`ladder theorems --check` runs `lake build` here and records the result for the theorem tracker. -/

package «ladder-kills» where
  leanOptions := #[⟨`autoImplicit, false⟩, ⟨`relaxedAutoImplicit, false⟩]

require mathlib from git
  "https://github.com/leanprover-community/mathlib4" @ "v4.24.0"

@[default_target]
lean_lib LadderKills where
  -- the root module `LadderKills` imports every kill-theorem file
