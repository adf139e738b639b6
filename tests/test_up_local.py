"""`volt-ansible up`: the README's main command end to end, and Ctrl-C at each of a fixed list of points followed by
`up` again (it finishes the campaign with one instance and nothing done twice).

The points are state changes a user can interrupt at, watched from outside the command (the double's records, the
campaign state, the instance itself), not moments in time: every run tests the same points and a failure replays
with `-k <point>`. Together they cover each stretch of `up`: renting, the instance prepared, compiling, the data
moving, the training running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import buildshare
import pytest
from procs import comm, descendants
from testhost import container_pid, container_root

pytestmark = pytest.mark.podman

OUTPUTS = ("checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors",
           "checkpoints/scaled_vfn_stage2.safetensors", "checkpoints/scaled_vfn.safetensors")
DEST = "/root/volt-x"


def _json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def double_instances(project) -> list[dict]:
    return list(_json(project.volt_dir / "local" / "vast.json").get("instances", {}).values())


def recorded(project) -> dict | None:
    return _json(project.volt_dir / "state.json").get("instance")


def instance_container(project) -> str:
    """The name of the instance's container ("" before there is a started one)."""
    live = [i for i in double_instances(project) if i.get("ssh_port") and not i.get("destroyed")]
    return live[0]["container"] if live else ""


def on_instance_file(project, path: str) -> str:
    """The text of `path` on the instance ("" when there is no instance or no such file), read from this machine."""
    root = container_root(name) if (name := instance_container(project)) else None
    try:
        return (root / path.lstrip("/")).read_text() if root else ""
    except OSError:
        return ""


def on_instance_running(project, *names: str) -> bool:
    """Whether a process named one of `names` runs in the instance's container (under its init: in its pid namespace,
    even a daemonized job is reparented there)."""
    pid = container_pid(name) if (name := instance_container(project)) else 0
    return bool(pid) and any(comm(p) in names for p in descendants(pid))


def create_in_flight(project) -> bool:
    """The double has made the instance and is still starting it: the create request has not been answered."""
    return any(i.get("ssh_port") == 0 for i in double_instances(project))


def rented(project) -> bool:
    """The instance is recorded, running and reachable; nothing of the campaign is on it yet."""
    return bool((inst := recorded(project)) and inst.get("ready"))


def compiling(project) -> bool:
    return on_instance_running(project, "cargo", "rustc")


def sending(project) -> bool:
    """The background transfer is moving an item (throttled for this point, see SPECS)."""
    inst = recorded(project)
    status = _json(project.volt_dir / "data-sync" / f"volt-{inst['id']}.json") if inst else {}
    return any(item.get("state") == "sending" for item in status.get("items", {}).values())


def stage1_started(project) -> bool:
    return bool(on_instance_file(project, f"{DEST}/logs/stage1.status").strip())


# point -> (the state change to interrupt at, how often to look in seconds)
POINTS: dict[str, tuple[Callable, float]] = {
    "create-in-flight": (create_in_flight, 0.01),
    "rented-before-prepare": (rented, 0.05),
    "mid-build": (compiling, 0.3),
    "mid-transfer": (sending, 0.05),
    "stage1-started": (stage1_started, 0.2),
}
# Spec changes a point needs to be reachable: the fixture's 0.6 MB of data would otherwise move in a blink.
SPECS = {"mid-transfer": {"data_sync_bwlimit_kbps": 40}}
# Points that need a compile to happen; the others start from binaries an earlier test built (tests/buildshare.py).
BUILDS = {"mid-build"}


def interrupt_at(project, point: str, timeout: float = 420) -> str:
    """Start `up`, press Ctrl-C the moment `point` is reached; what up said."""
    reached, every = POINTS[point]
    if project.reuse_build:  # what an earlier test built since this one started (project.cli does this for its commands)
        buildshare.seed(project.build_cache)
    first = subprocess.Popen([sys.executable, "-m", "volt_ansible", "up", "--backend", "local", "--yes"], cwd=project.root,
                             env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not reached(project):
        if first.poll() is not None or time.monotonic() > deadline:
            os.killpg(first.pid, signal.SIGKILL) if first.poll() is None else None
            said, _ = first.communicate()
            pytest.fail(f"up never reached {point} (exit {first.returncode}):\n{said[-4000:]}")
        time.sleep(every)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        said, _ = first.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        said, _ = first.communicate()
        pytest.fail(f"up did not stop within 120 s of Ctrl-C at {point}:\n{said}")
    return said


@pytest.mark.parametrize("point", [p if p in BUILDS else pytest.param(p, marks=pytest.mark.reuse_build) for p in POINTS])
def test_up_interrupted_then_run_again_finishes_the_campaign(project, point):
    project.spec(volt_watch={"poll_s": 2}, **SPECS.get(point, {}))
    said = interrupt_at(project, point)
    print(f"\nCtrl-C at {point}:\n{said[-2000:]}")
    state = project.state() if (project.volt_dir / "state.json").exists() else {"instance": None, "ledger": []}
    assert len(state["ledger"]) <= 1
    double = project.double()
    assert len(double.instances()) == len(state["ledger"])  # nothing rented that the state does not know
    deadline = time.monotonic() + 60  # a create in flight is finished by the "server", as Vast's is, Ctrl-C or not
    while len(double.containers()) != len(state["ledger"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(double.containers()) == len(state["ledger"])

    # The README's main command: continues on the same instance, trains, brings everything home, destroys it
    out = project.cli("up", "--backend", "local", "--yes", "--watch", timeout=900).stdout
    assert "up ok" in out and re.search(r"^campaign \S+ finished: ", out, re.M), out
    state = project.state()
    assert len(state["ledger"]) == 1, state["ledger"]  # one instance for the whole campaign: no second rental
    assert state["ledger"][0]["end_reason"] == "finished" and state["instance"] is None
    home = json.loads((project.root / "runs" / "volt-x-phase21" / "home.json").read_text())["files"]
    for path in OUTPUTS:
        assert path in home, sorted(home)
    assert project.double().containers() == []
    # Nothing done twice: every job's log (brought home) says it started from scratch exactly once
    starts = {}
    for rel in (r for r in home if r.startswith("logs/") and r.endswith(".log")):
        text = (project.root / "runs" / "volt-x-phase21" / rel).read_text()
        for job in re.findall(r"^volt-job: .* start (\S+) attempt 1\b", text, re.M):
            starts[job] = starts.get(job, 0) + 1
    assert {"phase03", "stage1"} <= starts.keys() and set(starts.values()) == {1}, starts


@pytest.mark.reuse_build
def test_up_on_a_ready_instance_changes_nothing(project):
    project.cli("up", "--backend", "local", "--yes", timeout=900)
    again = project.cli("up", "--yes", timeout=300).stdout
    assert "continuing on instance" in again and "up ok: changed=0" in again, again
    assert len(project.state()["ledger"]) == 1
    project.cli("destroy", "--yes", "--force")
