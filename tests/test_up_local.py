"""`volt-ansible up`: the README's main command end to end, and a Ctrl-C at a random point followed by `up` again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.podman

OUTPUTS = ("checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors",
           "checkpoints/scaled_vfn_stage2.safetensors", "checkpoints/scaled_vfn.safetensors")


def test_up_interrupted_at_a_random_point_then_run_again_finishes_the_campaign(project):
    project.spec(volt_watch={"poll_s": 2})
    seed = int(os.environ.get("VOLT_TEST_SEED", time.time()))
    delay = random.Random(seed).uniform(2.0, 45.0)
    print(f"\nCtrl-C after {delay:.1f} s (VOLT_TEST_SEED={seed} repeats it)")

    first = subprocess.Popen([sys.executable, "-m", "volt_ansible", "up", "--backend", "local", "--yes"], cwd=project.root,
                             env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    time.sleep(delay)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        said, _ = first.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        said, _ = first.communicate()
        pytest.fail(f"up did not stop within 120 s of Ctrl-C:\n{said}")
    print(said[-2000:])
    state = project.state() if (project.volt_dir / "state.json").exists() else {"instance": None, "ledger": []}
    assert len(state["ledger"]) <= 1
    assert len(project.double().containers()) == len(state["ledger"])  # nothing rented that the state does not know

    # The README's main command: continues on the same instance, trains, brings everything home, destroys it
    out = project.cli("up", "--backend", "local", "--yes", "--watch", timeout=900).stdout
    assert "up ok" in out and "finished" in out, out
    state = project.state()
    assert len(state["ledger"]) == 1, state["ledger"]  # one instance for the whole campaign: no second rental
    assert state["ledger"][0]["end_reason"] == "finished" and state["instance"] is None
    home = json.loads((project.root / "runs" / "volt-x-phase21" / "home.json").read_text())["files"]
    for path in OUTPUTS:
        assert path in home, sorted(home)
    assert project.double().containers() == []


def test_up_on_a_ready_instance_changes_nothing(project):
    project.cli("up", "--backend", "local", "--yes", timeout=900)
    again = project.cli("up", "--yes", timeout=300).stdout
    assert "continuing on instance" in again and "up ok: changed=0" in again, again
    assert len(project.state()["ledger"]) == 1
    project.cli("destroy", "--yes", "--force")
