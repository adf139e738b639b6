"""No instance the controller does not know (issue 13.8): a controller killed at fixed points inside the create, a 502 after
a create that succeeded, stray and foreign instances under the campaign's labels, a listing that is not a list, and
playbooks left running by a dead controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from volt_ansible import runlock

pytestmark = pytest.mark.podman


def live_ids(project) -> list[int]:
    return sorted(r["id"] for r in project.double().instances())


def one_open_instance(project) -> int:
    """Exactly one instance billed: the state's, with one open ledger entry, one container, nothing else in the API."""
    st = project.state()
    assert st["creating"] is None
    assert st["instance"] is not None and st["instance"]["ready"], st
    iid = st["instance"]["id"]
    assert live_ids(project) == [iid]
    assert len(project.double().containers()) == 1
    assert [e["instance_id"] for e in st["ledger"] if e["ended_at"] is None] == [iid]
    return iid


@pytest.mark.parametrize("point", ["create.request", "create.answered", "create.record"])
def test_sigkill_inside_the_create_then_provision_again_leaves_exactly_one_instance(project, point):
    killed = project.cli("provision", "--backend", "local", check=False, VOLT_CRASH_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    st = project.state()
    assert st["instance"] is None and st["creating"]["label"].startswith(f"volt:volt-x-phase21:{st['owner']}:")
    made = live_ids(project)
    assert len(made) == (0 if point == "create.request" else 1)  # killed before the request, or after Vast made it

    again = project.cli("provision", "--backend", "local")
    iid = one_open_instance(project)
    if made:
        assert iid == made[0] and f"instance {iid} was created by a run that stopped before recording it: adopted" in again.stderr
    assert len(project.state()["ledger"]) == 1
    project.cli("destroy", "--yes", "--force")
    assert live_ids(project) == [] and project.double().containers() == []


def test_a_502_after_a_create_that_succeeded_adopts_that_instance(project):
    project.double().add_after_create_fault(502)
    out = project.cli("provision", "--backend", "local")
    iid = one_open_instance(project)
    assert f"instance {iid} was created by a run that stopped before recording it: adopted" in out.stderr
    assert len(project.state()["ledger"]) == 1


def test_stray_instances_are_destroyed_foreign_ones_shown_and_a_bad_listing_changes_nothing(project):
    project.cli("provision", "--backend", "local")
    st = project.state()
    double = project.double()
    stray = double.create(31001, {"image": "x", "label": f"volt:volt-x-phase21:{st['owner']}:feed00"})["new_contract"]
    foreign = double.create(31002, {"image": "x", "label": "volt:volt-x-phase21:0ther000:beef00"})["new_contract"]

    # a listing that is not a list: refused, nothing destroyed, nothing adopted
    double.add_http_fault(200, count=1, path_prefix="/api/v1/instances", body={"instances": None, "next_token": None})
    bad = project.cli("status", check=False)
    assert bad.returncode == 1 and "not a list of instances" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert stray in live_ids(project)

    out = project.cli("status")
    assert f"instance {stray} (label volt:volt-x-phase21:{st['owner']}:feed00) was rented by this campaign" in out.stderr
    assert "destroying it so it stops billing" in out.stderr
    assert f"instance {foreign} (label volt:volt-x-phase21:0ther000:beef00" in out.stdout and "not touched" in out.stdout
    assert live_ids(project) == sorted([st["instance"]["id"], foreign])
    ledger = project.state()["ledger"]
    assert [e["end_reason"] for e in ledger if e["instance_id"] == stray] == ["stray: destroyed"]
    assert "destroying" not in project.cli("status").stderr  # reconciled once, then quiet


SLEEP = """- name: Sleep
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Sleep {secs}
      ansible.builtin.command: sleep {secs}
      changed_when: false
"""


def _token(project) -> str:
    return json.loads((project.volt_dir / "playbook.json").read_text())["token"]


def test_a_dead_controllers_playbook_is_ended_and_two_never_run_at_once(project):
    for secs in (613, 1):
        (project.root / "playbooks" / f"sleep{secs}.yml").write_text(SLEEP.format(secs=secs))
    first = subprocess.Popen([sys.executable, "-m", "volt_ansible", "run", "sleep613"], cwd=project.root, env=project.env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any("sleep 613" in ln for ln in _ps()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert any("sleep 613" in ln for ln in _ps()), "the playbook never started"

    busy = project.cli("run", "sleep1", check=False)
    assert busy.returncode == 1 and "playbook sleep613 is already running" in busy.stderr, busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1

    os.killpg(first.pid, signal.SIGKILL)  # the controller dies; ansible-runner's child lives in its own session
    first.wait()
    token = _token(project)
    assert runlock.carriers(token), "ansible-playbook died with its controller: the case this guards against did not arise"

    nxt = project.cli("run", "sleep1")
    assert "ended playbook sleep613" in nxt.stderr and f"left running by a volt-ansible that died (pid {first.pid})" in nxt.stderr
    assert "sleep1 ok" in nxt.stdout
    assert runlock.carriers(token) == []
    assert not any("sleep 613" in ln for ln in _ps())


def _ps() -> list[str]:
    return subprocess.run(["ps", "-eo", "command="], capture_output=True, text=True).stdout.splitlines()


def test_ctrl_c_of_the_controller_ends_its_playbook(project):
    (project.root / "playbooks" / "sleep614.yml").write_text(SLEEP.format(secs=614))
    first = subprocess.Popen([sys.executable, "-m", "volt_ansible", "run", "sleep614"], cwd=project.root, env=project.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any("sleep 614" in ln for ln in _ps()) and time.monotonic() < deadline:
        time.sleep(0.3)
    token = _token(project)
    assert runlock.carriers(token)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the controller's group, not the playbook's session
    said, _ = first.communicate(timeout=60)
    assert first.returncode != 0 and "ended playbook sleep614" in said, said
    assert runlock.carriers(token) == [] and not any("sleep 614" in ln for ln in _ps())
    assert not (project.volt_dir / "playbook.json").exists()
