import LadderKills.Defs
import LadderKills.Measured
import LadderKills.Gauge
import LadderKills.EckartYoung
import LadderKills.Tucker
import LadderKills.Bytes
import LadderKills.Routing
import LadderKills.ActivationError
import LadderKills.TaskBasis
import LadderKills.Compounding

/-!
# The ladder's kill theorems

One file per argument; `LadderKills.Measured` holds every measured constant as a named `axiom`.
Each theorem's doc comment names its rung (`rung: g0`); `ladder theorems` reads these files and prints the status
grid (proved / sorry / axiom-dependent, checked or not).
-/
