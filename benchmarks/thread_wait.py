"""How OpenMP's wait policy changes the embedded build's training steps, on a quiet machine and beside a busy one.

    python benchmarks/thread_wait.py [--steps 12] [--policies default,PASSIVE,spin10000]

Each policy runs `--steps` training steps of the embedded OLMoE recipe (its model, batch shape, AdamW and thread
count) in a fresh process, since OpenMP reads the policy when torch loads: `default` (OMP_WAIT_POLICY unset: threads
spin a while before sleeping), `PASSIVE` (they sleep at once), `spinN` (GOMP_SPINCOUNT=N: spin N iterations, then
sleep). Quiet, then again beside one busy process spinning on a core. Prints seconds per step and each policy's
ratio to `default` under the same condition.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEPS = r"""
import sys, time, torch, transformers
from pytest_ladder.models.embedded import RECIPE, family_of
steps = int(sys.argv[1])
torch.set_num_threads(RECIPE.threads)
torch.manual_seed(0)
model = getattr(transformers, family_of(RECIPE).model_class)(RECIPE.model_config()).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
batch = torch.randint(2, RECIPE.vocab_size, (3 * RECIPE.rows_per_task, RECIPE.seq_len))
def step():
    out = model(input_ids=batch, labels=batch, output_router_logits=True)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step()
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""


def environment(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin")
    return env


def seconds_per_step(policy: str, steps: int) -> float:
    done = subprocess.run([sys.executable, "-c", STEPS, str(steps)], env=environment(policy), capture_output=True,
                          text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--policies", default="default,PASSIVE,spin10000")
    args = parser.parse_args()
    policies = args.policies.split(",")
    for condition in ("quiet", "beside a busy process"):
        busy = None
        if condition != "quiet":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1)
        try:
            found = {policy: seconds_per_step(policy, args.steps) for policy in policies}
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        base = found[policies[0]]
        for policy, seconds in found.items():
            print(f"{condition:24s} {policy:12s} {seconds:.3f} s/step  ratio to {policies[0]} {seconds / base:.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
