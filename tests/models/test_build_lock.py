"""The embedded model's build lock says who holds it and since when; a waiter shows it (a real second process); a
killed build resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pytest_ladder.models.embedded import (Recipe, build_embedded_model, build_lock, checkpoint_path,
                                           embedded_model_dir, ensure_embedded_model, read_report)

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from pytest_ladder.models.embedded import build_lock
with build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(folder: Path, seconds: float) -> tuple[subprocess.Popen, dict]:
    """A real process holding the build lock of `folder` for `seconds`; its holder note once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert holder.stdout.readline() == "held\n"
    return holder, json.loads(Path(f"{folder}.lock.holder").read_text())


def test_waiter_names_the_holder_until_it_releases(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, note = hold(folder, 1.5)
    assert note["pid"] == holder.pid and note["host"] == socket.gethostname()
    logs: list[str] = []
    start = time.monotonic()
    with build_lock(folder, log=logs.append, notice_every=0.25):
        waited = time.monotonic() - start
        mine = json.loads(Path(f"{folder}.lock.holder").read_text())
    holder.wait(timeout=30)
    line = f"waiting for the build of {folder} held by pid {holder.pid} on {socket.gethostname()} since {note['since']}"
    assert 3 <= len(logs) <= waited / 0.25 + 2 and set(logs) == {line}
    assert mine["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{folder.name}.lock"]  # the note goes with the holder


def test_timeout_names_the_holder(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, note = hold(folder, 5)
    logs: list[str] = []
    with pytest.raises(RuntimeError) as error:
        with build_lock(folder, log=logs.append, timeout=0.6, notice_every=0.2):
            pass
    holder.kill()
    holder.wait(timeout=30)
    who = f"held by pid {holder.pid} on {socket.gethostname()} since {note['since']}"
    assert str(error.value) == (
        f"waited 0.6 seconds for the build of {folder} ({who}; lock {folder}.lock); if no build is running, delete "
        "the lock file and retry"
    )
    assert logs[0] == f"waiting for the build of {folder} {who}"


def test_a_killed_holder_frees_the_lock(tmp_path):
    folder = tmp_path / "olmoe-tiny-0123"
    holder, _ = hold(folder, 60)
    holder.kill()
    holder.wait(timeout=30)
    with build_lock(folder, log=[].append, timeout=5):
        assert json.loads(Path(f"{folder}.lock.holder").read_text())["pid"] == os.getpid()


KILLED_AT = """
import os, signal, sys
from pathlib import Path
from pytest_ladder.models.embedded import ensure_embedded_model
from tests.models.test_build_lock import RESUMABLE

def log(line):
    print(line, flush=True)
    if line.startswith("checkpoint: step " + sys.argv[1] + " "):
        os.kill(os.getpid(), signal.SIGKILL)  # killed right after that checkpoint, mid-training

ensure_embedded_model(seed=2, recipe=RESUMABLE, log=log, checkpoint_every=5)
"""
RESUMABLE = Recipe(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_experts=4,
                   num_experts_per_tok=2, intermediate_size=16, seq_len=32, steps=17, rows_per_task=1, warmup=2,
                   eval_documents=2, eval_tokens=64, threads=1)


def test_a_killed_build_resumes_from_its_checkpoint_with_the_same_weights(tmp_path, monkeypatch):
    """A real build process is SIGKILLed right after its step-10 checkpoint; the next build continues at step 10 and
    ends with the weights of an uninterrupted build, bit for bit."""
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "10"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert killed.stdout.splitlines()[-2:] == [
        f"checkpoint: step 5 of 17 saved to {checkpoint_path(embedded_model_dir(RESUMABLE, 2))}",
        f"checkpoint: step 10 of 17 saved to {checkpoint_path(embedded_model_dir(RESUMABLE, 2))}"]
    folder = embedded_model_dir(RESUMABLE, seed=2)
    assert not folder.exists() and checkpoint_path(folder).is_file()

    logs: list[str] = []
    assert ensure_embedded_model(seed=2, recipe=RESUMABLE, log=logs.append, checkpoint_every=5) == folder
    assert logs[0] == f"resuming the build from its checkpoint at step 10 ({checkpoint_path(folder)})"
    assert logs[1] == f"checkpoint: step 15 of 17 saved to {checkpoint_path(folder)}"
    assert not checkpoint_path(folder).exists()  # gone once the model is in place
    uninterrupted = build_embedded_model(tmp_path / "whole", RESUMABLE, seed=2, log=[].append)
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert read_report(folder).final_train_loss == uninterrupted.final_train_loss
    assert read_report(folder).heldout_nll == uninterrupted.heldout_nll


def test_a_checkpoint_of_another_build_is_not_used(tmp_path):
    folder = tmp_path / "olmoe-tiny-x"
    torch.save({"key": "not this one", "step": 3}, checkpoint_path(folder))
    logs: list[str] = []
    build_embedded_model(tmp_path / "built", RESUMABLE, seed=2, log=logs.append, checkpoint=checkpoint_path(folder),
                         checkpoint_every=100)
    assert logs[0] == (f"checkpoint {checkpoint_path(folder)} belongs to another build (key not this one); "
                       "starting from step 0")
    checkpoint_path(folder).write_bytes(b"\x00 torn")
    logs.clear()
    build_embedded_model(tmp_path / "again", RESUMABLE, seed=2, log=logs.append, checkpoint=checkpoint_path(folder),
                         checkpoint_every=100)
    assert logs[0].startswith(f"checkpoint {checkpoint_path(folder)} could not be read (")
    assert logs[0].endswith("); starting from step 0")
    assert (tmp_path / "built" / "model.safetensors").read_bytes() == (
        tmp_path / "again" / "model.safetensors").read_bytes()
