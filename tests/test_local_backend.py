"""The whole provisioning path for real: CLI -> real vastai SDK -> local API double -> podman container -> SSH."""

from __future__ import annotations

import json
import re

import pytest

from volt_ansible.local import podman
from volt_ansible.local.server import DoubleServer

pytestmark = pytest.mark.podman


def containers(project) -> list[str]:
    return project.double().containers()


def one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_provision_ping_destroy_as_separate_commands(project):
    offers = project.cli("offers", "--backend", "local")
    assert "31003" in offers.stdout and "31006" not in offers.stdout  # the $0.42/h one is over the cap

    out = project.cli("provision", "--backend", "local").stdout  # the bare image: no python3 until a bootstrap
    assert "instance 20000001 running" in out and "ssh -i" in out
    st = project.state()
    inst = st["instance"]
    assert inst["offer_id"] == 31003 and inst["ssh_host"] == "127.0.0.1" and inst["ssh_port"] > 0
    assert oct((project.volt_dir / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    assert f"[127.0.0.1]:{inst['ssh_port']} " in (project.volt_dir / "known_hosts").read_text()
    assert len(containers(project)) == 1

    # plain Ansible from the project root, no -i: the dynamic inventory finds the instance
    ping = project.sh("ansible all -m raw -a 'uname -n'")
    assert f"volt-{inst['id']} | CHANGED | rc=0" in ping.stdout and f"C.{inst['id']}" in ping.stdout
    ran = project.cli("run", "ping").stdout  # raw only: it reaches an instance that has no python3 yet
    assert "ping ok: changed=0" in ran
    assert project.cli("ssh", "--", "hostname").stdout.strip() == f"C.{inst['id']}"

    status = project.cli("status").stdout
    assert "running" in status and "cost so far" in status

    # no job ever ran on it, so nothing can be lost: destroy needs no --force (refusals: tests/test_security_local.py)
    done = project.cli("destroy", "--yes").stdout
    assert "instance(s) 20000001 destroyed" in done and "lost" not in done
    assert containers(project) == []
    st = project.state()
    assert st["instance"] is None and st["ledger"][0]["end_reason"] == "destroyed"
    assert "no instance provisioned" in project.cli("status").stdout
    err = one_line_error(project.cli("destroy", "--yes", check=False))
    assert "no instance to destroy" in err


def test_a_second_provision_refuses_instead_of_renting_twice(project):
    project.cli("provision")
    err = one_line_error(project.cli("provision", check=False))
    assert "is already provisioned" in err
    assert len(containers(project)) == 1


def test_preempt_shows_exited(project):
    project.cli("provision")
    project.cli("local", "preempt")
    assert "exited" in project.cli("status").stdout
    assert project.state()["instance"]["status"] == "exited"


def test_failed_playbook_names_task_host_and_message(project, tmp_path):
    # dev, not the default bare image: this test is about how a module's failure is reported, and a module needs the
    # python3 that only the bootstrap role installs (the bootstrap's own failures: tests/test_bare_image.py)
    project.cli("provision", VOLT_LOCAL_IMAGE="dev")
    bad = project.root / "playbooks" / "bad.yml"
    bad.write_text(
        "- hosts: volt\n  gather_facts: false\n  tasks:\n    - name: Fail on purpose\n      ansible.builtin.command: ls /nonexistent-dir\n"
    )
    proc = project.cli("run", "bad", check=False)
    assert proc.returncode != 0
    assert "FAILED task 'Fail on purpose' on volt-" in proc.stderr and "nonexistent-dir" in proc.stderr


def test_429_then_success_is_retried(project):
    project.double().add_http_fault(429, count=1, path_prefix="/api/v0/bundles/")
    project.double().add_http_fault(503, count=1, path_prefix="/api/v0/bundles/")
    assert "31003" in project.cli("offers").stdout
    with project.double().store() as s:
        assert s["faults"]["http"] == []  # both faults were served, and the SDK retried past them


def test_persistent_5xx_is_one_line(project):
    project.double().add_http_fault(500, count=5, path_prefix="/api/v0/bundles/")
    assert "Vast API answered HTTP 500" in one_line_error(project.cli("offers", check=False))


def test_live_price_above_cap_destroys_and_fails(project):
    project.double().set_faults(dph_factor=1.5)
    err = one_line_error(project.cli("provision", check=False))
    assert "live price $0.270/h of instance" in err and "above the cap $0.200/h" in err and "was destroyed" in err
    assert containers(project) == []
    assert project.state()["instance"] is None


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("never_running", "did not reach running in 3 s (last status loading)"),
        ("exits", "went exited while starting"),
        ("offline", "went offline while starting"),
        ("no_sshd", "did not accept the campaign key within 3 s"),
    ],
)
def test_instance_that_never_becomes_usable_is_destroyed(project, behaviour, expected):
    project.spec(volt_provision={"running_timeout_s": 3, "ssh_timeout_s": 3, "poll_interval_s": 0.5})
    project.double().set_next_create(behaviour)
    err = one_line_error(project.cli("provision", check=False))
    assert expected in err and "destroyed" in err
    assert containers(project) == []
    ledger = project.state()["ledger"]
    assert ledger[0]["end_reason"].startswith("abandoned")


def test_no_offer_matches_names_the_filter_excluding_most(project):
    project.spec(volt_instance={"dph_max": 0.05})
    err = one_line_error(project.cli("offers", check=False))
    assert "no offer matches the spec: dph_max (<= $0.05/h) excludes" in err and "relax volt_instance.dph_max" in err


def test_bad_spec_stops_before_any_api_call(project):
    project.spec(volt_instance={"cuda_min": "new"})
    err = one_line_error(project.cli("provision", check=False))
    assert "group_vars/all.yml: volt_instance.cuda_min = 'new': Input should be a valid number" in err
    assert not (project.volt_dir / "local" / "vast.json").exists()


def test_corrupt_state_is_refused_never_overwritten(project):
    project.volt_dir.mkdir()
    (project.volt_dir / "state.json").write_text("{garbage")
    for cmd in (["status"], ["provision"], ["destroy", "--yes"]):
        assert "is corrupt" in one_line_error(project.cli(*cmd, check=False))
    assert (project.volt_dir / "state.json").read_text() == "{garbage"
    assert containers(project) == []


def test_vast_backend_without_key_and_with_a_wrong_key(project):
    err = one_line_error(project.cli("offers", "--backend", "vast", check=False))
    assert "no Vast API key: export VAST_API_KEY" in err
    server = DoubleServer(project.double())
    try:
        err = one_line_error(project.cli("offers", "--backend", "vast", check=False, VAST_URL=server.url, VAST_API_KEY="wrong"))
        assert "rejected the API key (401)" in err
        ok = project.cli("offers", "--backend", "vast", VAST_URL=server.url, VAST_API_KEY=project.double().api_key)
        assert "31003" in ok.stdout  # the vast backend is the same code, pointed elsewhere
    finally:
        server.close()


def test_podman_missing_is_one_line(project, tmp_path):
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    proc = project.cli("provision", check=False, PATH=f"{bindir}:/usr/bin/does-not-exist")
    assert "podman is not installed" in one_line_error(proc)


def test_sdk_reads_fields_it_needs_from_the_double(project):
    """show_instances/show_instance crash on rows without numeric start_date and [k, v] extra_env."""
    from vastai import VastAI

    project.cli("provision")
    server = DoubleServer(project.double())
    try:
        sdk = VastAI(api_key=project.double().api_key, server_url=server.url)
        rows = sdk.show_instances()
        assert len(rows) == 1 and rows[0]["actual_status"] == "running" and rows[0]["duration"] >= 0
        one = sdk.show_instance(rows[0]["id"])
        assert one["ssh_port"] == project.state()["instance"]["ssh_port"]
        assert sdk.show_user()["username"] == "local"
        assert json.dumps(one)  # plain JSON all the way down
    finally:
        server.close()
    assert podman.exists("container", project.double().containers()[0])


def test_interruptible_auto_bid_plan_and_create(project):
    """pricing interruptible, bid auto: the plans show the bid from the offer's min_bid, the on-demand price and the
    saving; the create sends that bid (the instance bills it) and state records it."""
    project.spec(volt_instance={"pricing": "interruptible", "bid_dph": "auto"})
    planned = project.cli("provision", "--plan").stdout
    # offer 31003: on demand $0.180/h, min_bid $0.081/h (the double's catalogue); 0.081 x 1.15 = 0.09315, rounded up
    assert "Would rent offer 31003 at $0.093/h" in planned, planned
    assert "interruptible: bid $0.0932/h (min_bid $0.0810/h + 15%" in planned and "on-demand $0.1800/h: ~$34.72 saved over 400" in planned
    up_plan = project.cli("up", "--plan").stdout
    assert "interruptible: bid $0.0932/h" in up_plan and "nothing rented: --plan" in up_plan and containers(project) == []
    out = project.cli("provision").stdout
    assert "instance 20000001 running" in out and "$0.093/h" in out
    inst = project.state()["instance"]
    assert (inst["bid_dph"], inst["dph_total"]) == (0.0932, 0.0932)
    assert project.double().instance(20000001)["dph_total"] == 0.0932  # what the double bills: the bid, not on demand
    assert project.state()["ledger"][0]["on_demand_dph"] == 0.18
    assert "interruptible: bid $0.0932/h (on demand $0.1800/h); paused 0.00 h (storage $0.0000); saved $" in project.cli("status").stdout

    # a fixed bid below every offer's min_bid: one line, nothing rented
    project.cli("destroy", "--yes")
    project.spec(volt_instance={"pricing": "interruptible", "bid_dph": 0.05})
    err = one_line_error(project.cli("provision", check=False))
    assert "volt_instance.bid_dph $0.0500/h is below offer" in err and "where Vast creates the instance stopped" in err
    assert containers(project) == []


def test_ssh_silence_alone_rents_nothing_until_ssh_replace_s(project):
    """The API says running, SSH is silent (the link cut: packets dropped, nothing closed): watch warns and rents
    nothing; only after volt_watch.ssh_replace_s of silence does it count the instance as lost."""
    from volt_ansible.local import link

    project.cli("provision")
    iid = project.state()["instance"]["id"]
    relay = json.loads((project.volt_dir / "local" / "vast.json").read_text())["instances"][str(iid)]["link"]["relay_pid"]
    link.cut(relay)
    try:
        first = project.cli("watch", "--once", "--no-finish").stdout
        assert re.search(rf"warning: instance {iid} runs in the Vast API but SSH has failed for \d+ s \(checked again next round\)", first), first
        assert project.state()["instance"]["unreachable_since"] is not None and len(project.state()["ledger"]) == 1
        # (the louder warning after ssh_dead_s: tests/test_recovery_unit.py)
        project.spec(volt_watch={"ssh_dead_s": 1, "ssh_replace_s": 2})  # the round above took seconds of SSH timeouts
        lost = project.cli("watch", "--once", "--no-finish", "--no-recover").stdout
        assert f"instance {iid} is lost (SSH has failed for" in lost and "while the Vast API says running" in lost, lost
        assert "auto recovery is off" in lost
        assert len(project.state()["ledger"]) == 1 and len(containers(project)) == 1  # --no-recover: nothing rented
    finally:
        link.restore(relay)


def test_watch_answers_a_hosts_price_increase_within_dph_max_and_rejects_one_above(project):
    project.cli("provision")
    iid = project.state()["instance"]["id"]
    double = project.double()
    double.post_price_increase(iid, 0.19, due_in_s=3600)  # within dph_max 0.20: accepted
    first = project.cli("watch", "--once", "--no-finish").stdout
    assert f"price increase on instance {iid}: $0.1800 -> $0.1900/h accepted (within $0.2000/h)" in first, first
    assert double.instance(iid)["dph_total"] == 0.19 and project.state()["instance"]["dph_total"] == 0.19
    assert project.state()["ledger"][0]["changes"][-1][1:] == [0.19, "price increase"]
    double.post_price_increase(iid, 0.30, due_in_s=3600)  # above dph_max: rejected, the price stays
    second = project.cli("watch", "--once", "--no-finish").stdout
    assert f"price increase on instance {iid}: $0.1900 -> $0.3000/h rejected (above $0.2000/h)" in second, second
    assert double.instance(iid)["dph_total"] == 0.19 and len(project.state()["ledger"][0]["changes"]) == 1
