"""The instance's pinned host key is enforced on every ssh the project starts, no ssh hands the operator's agent
to a rented host, and an ssh_host from the API is a hostname or an IP before it reaches a command line."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from volt_ansible import datasync, inventory, jobs, ssh
from volt_ansible.errors import VoltError
from volt_ansible.local import podman

AGENT_CONFIG = "Host *\n  ForwardAgent yes\n"  # what a user's ~/.ssh/config may say


# --- ssh_host from the API -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["ssh5.vast.ai", "localhost", "host-1.example.com.", "127.0.0.1", "203.0.113.7", "::1",
                                  "2001:db8::7", "fe80::1%eth0"])
def test_check_host_accepts_hostnames_and_ips(host):
    assert ssh.check_host(host) == host


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "-p", "a b", "host;rm -rf /", "$(id)", "h`id`", "ho|st", "a\nb", "",
                                  "-1.2.3.4", "host.-x", "[::1]", "x" * 254])
def test_check_host_refuses_options_spaces_and_shell(host):
    with pytest.raises(VoltError) as e:
        ssh.check_host(host)
    assert "\n" not in str(e.value) and "not a hostname or an IP address" in str(e.value)


def test_a_bad_ssh_host_never_reaches_ssh_keyscan_or_the_inventory(tmp_path):
    bad = "-oProxyCommand=touch /tmp/pwned"
    for call in (lambda: ssh.command(tmp_path, bad, 22), lambda: ssh.pin_host_key(tmp_path, bad, 22),
                 lambda: ssh.banner(bad, 22)):
        with pytest.raises(VoltError):
            call()
    (tmp_path / "state.json").write_text(f'{{"instance": {{"id": 5, "ssh_host": "{bad}", "ssh_port": 2200}}}}')
    with pytest.raises(SystemExit) as e:
        inventory.build(tmp_path)
    assert "volt-5" in str(e.value) and "not a hostname or an IP address" in str(e.value)
    # the script as plain Ansible runs it, under a python3 without the project's virtualenv
    proc = subprocess.run(["/usr/bin/python3", str(REPO / "inventory/volt_state.py"), "--list"], env={"VOLT_DIR": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not a hostname or an IP address" in proc.stderr and "Traceback" not in proc.stderr


# --- ForwardAgent=no on every ssh command line ----------------------------------------------------


def _effective(argv: list[str], tmp_path: Path) -> dict[str, str]:
    """`ssh -G` of an ssh argv, under a user config that forwards the agent to every host."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(AGENT_CONFIG)
    assert argv[0] == "ssh"
    out = subprocess.run(["ssh", "-F", str(cfg), "-G", *argv[1:]], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _ansible_cfg_ssh_args() -> str:
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.read(REPO / "ansible.cfg")
    return cp["ssh_connection"]["ssh_args"]


def test_every_ssh_command_line_refuses_agent_forwarding(tmp_path):
    (tmp_path / "state.json").write_text('{"instance": {"id": 5, "ssh_host": "203.0.113.7", "ssh_port": 2200}}')
    common = inventory.build(tmp_path)["_meta"]["hostvars"]["volt-5"]["ansible_ssh_common_args"]
    static = (REPO / "inventory/static.example.ini").read_text().split("ansible_ssh_common_args='")[1].split("'")[0]
    spec = importlib.util.spec_from_file_location("backup_filters", REPO / "roles/backup/filter_plugins/backup.py")
    backup_filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backup_filters)
    inventory_ssh = {"host": "203.0.113.7", "port": 2200, "user": "root", "key": str(tmp_path / "k"),
                     "args": [_ansible_cfg_ssh_args(), common, ""]}
    argvs = {
        "ssh.command": ssh.command(tmp_path, "203.0.113.7", 2200),
        "jobs (status, logs, plot)": jobs.logs_command(tmp_path, "203.0.113.7", 2200, lay=jobs.layout(REPO)),
        "datasync data connection": [*datasync.ssh_argv(inventory_ssh), "203.0.113.7"],
        "datasync control connection": [*datasync.ssh_argv(inventory_ssh, "/tmp/cm"), "203.0.113.7"],
        "ansible.cfg ssh_args": ["ssh", *shlex.split(_ansible_cfg_ssh_args()), "203.0.113.7"],
        "inventory common args": ["ssh", *shlex.split(common), "203.0.113.7"],
        "static.example.ini": ["ssh", *shlex.split(static), "203.0.113.7"],
        "backup rsync -e": [*shlex.split(backup_filters.backup_ssh(inventory_ssh)), "203.0.113.7"],
    }
    for what, argv in argvs.items():
        assert _effective(argv, tmp_path)["forwardagent"] == "no", (what, argv)


def test_ssh_host_key_line_names_the_instance_and_the_repin():
    # OpenSSH's own text for a changed key (its @ block, then the two lines that name host and file)
    said = ("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
            "Offending ED25519 key in /p/.volt/known_hosts:1\r\n"
            "Host key for [203.0.113.9]:40022 has changed and you have requested strict checking.\r\n"
            "Host key verification failed.\r\n")
    line = ssh.host_key_line(said, "volt-7")
    assert line is not None and "\n" not in line and "\r" not in line
    assert line.startswith("host key changed for volt-7 ([203.0.113.9]:40022): ")
    assert line.endswith("ssh-keygen -R '[203.0.113.9]:40022' -f /p/.volt/known_hosts && "
                         "ssh-keyscan -p 40022 203.0.113.9 >> /p/.volt/known_hosts")
    assert ssh.host_key_line(f"data_sync: {line}", "volt-7") == line  # found again inside a task's message
    unknown = "No ED25519 host key is known for [203.0.113.9]:40022 and you have requested strict checking.\nHost key verification failed."
    assert ssh.host_key_line(unknown, "volt-7", "/p/kh").startswith("host key not pinned for volt-7 ([203.0.113.9]:40022): /p/kh")
    assert ssh.host_key_line("ssh: connect to host 203.0.113.9 port 40022: Connection refused", "volt-7") is None


# --- a changed host key on a local instance ------------------------------------------------------


def _logins(container: str) -> int:
    """Sessions the instance's sshd (-D -e: it logs to the container's output) has accepted so far."""
    p = podman.run("logs", container, check=False)
    return (p.stdout + p.stderr).decode(errors="replace").count("Accepted publickey")


def _one_refusal(proc: subprocess.CompletedProcess, names: tuple[str, ...]) -> str:
    said = proc.stdout + proc.stderr
    lines = [ln for ln in said.splitlines() if "host key changed" in ln]
    assert proc.returncode != 0 and len(lines) == 1, said
    assert any(n in lines[0] for n in names) and "re-pin it on purpose: ssh-keygen -R " in lines[0], lines[0]
    assert "@@@" not in said and "IDENTIFICATION HAS CHANGED" not in said, said  # ssh's block is not shown
    return lines[0]


@pytest.mark.podman
def test_a_changed_host_key_stops_every_command_before_anything_runs(project, tmp_path):
    project.cli("provision")
    inst = project.state()["instance"]
    host, port, iid = inst["ssh_host"], inst["ssh_port"], inst["id"]
    container = project.double().containers()[0]
    names = (f"volt-{iid}", f"{host}:{port}")

    # the instance is "re-imaged" (or someone sits in between): another host's key answers for it
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other"), "-C", "other"], check=True)
    kh = project.volt_dir / "known_hosts"
    pinned = kh.read_text()
    kh.write_text(f"[{host}]:{port} {' '.join((tmp_path / 'other.pub').read_text().split()[:2])}\n")
    before = _logins(container)

    marker_play = tmp_path / "marker.yml"
    marker_play.write_text("- hosts: volt\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: touch /root/volt-hostkey-marker\n")
    line = _one_refusal(project.cli("run", "ping", check=False), names)
    _one_refusal(project.cli("run", str(marker_play), check=False), names)
    plain = project.sh("ansible all -m ping", check=False)
    assert plain.returncode != 0 and "Host key verification failed" in plain.stdout + plain.stderr, plain.stdout + plain.stderr
    _one_refusal(project.cli("up", "--backend", "local", "--yes", check=False), names)
    _one_refusal(project.cli("run", "sync", check=False), names)
    _one_refusal(project.cli("backup", check=False), names)
    _one_refusal(project.cli("status", check=False), names)
    _one_refusal(project.cli("logs", "-n", "5", check=False), names)
    _one_refusal(project.cli("ssh", "--", "true", check=False), names)
    # watch: a changed key is no outage to recover from: said every round, nothing rented over it
    watched = project.cli("watch", "--once", "--no-finish")
    assert "host key changed" in watched.stdout and "recovered" not in watched.stdout, watched.stdout
    assert project.state()["instance"]["unreachable_since"] is None and len(project.state()["ledger"]) == 1

    # the transfer driver itself (what `run sync` starts in the background): no retry, nothing sent
    common = inventory.build(project.volt_dir)["_meta"]["hostvars"][f"volt-{iid}"]["ansible_ssh_common_args"]
    data = tmp_path / "item.bin"
    data.write_bytes(b"x" * 1000)
    plan = {"root": "/root/hostkey-test", "items": [{"name": "item", "src": str(data), "dest": "item.bin", "kind": "file",
                                                     "size": 1000, "digest": "x", "jobs": []}],
            "ssh": {"host": host, "port": port, "user": "root", "key": str(project.volt_dir / "id_ed25519"), "args": [common]},
            "options": {"retries": 3, "retry_delay_s": 30}}
    driver = datasync.Driver(plan, tmp_path / "status.json")
    with pytest.raises(VoltError, match="host key changed for the instance at"):
        driver.run()
    assert driver.status["error"].startswith("host key changed for the instance at")
    sender = datasync.Driver(plan, tmp_path / "status2.json")
    assert not sender.transfer("item") and "host key changed" in sender.status["items"]["item"]["error"]
    assert len(sender.status["items"]["item"]["attempts"]) == 1  # refused once, not retried

    assert _logins(container) == before  # no session was ever opened
    assert podman.run("exec", container, "test", "-e", "/root/volt-hostkey-marker", check=False).returncode != 0

    # the deliberate re-pin the line gives works, and the runner's ssh command lines never say StrictHostKeyChecking=no
    project.sh(line.split("re-pin it on purpose: ", 1)[1])
    assert "ping ok" in project.cli("run", "ping", ANSIBLE_VERBOSITY="3").stdout
    assert sorted(kh.read_text().splitlines()) == sorted(pinned.splitlines())  # the instance's own keys again
    log = sorted((project.volt_dir / "logs").glob("*-ping.log"))[-1].read_text()
    execs = [ln.split("SSH: EXEC ", 1)[1] for ln in log.splitlines() if "SSH: EXEC " in ln]
    assert execs, log[-3000:]
    for cmd in execs:
        argv = shlex.split(cmd)
        assert "StrictHostKeyChecking=no" not in argv, cmd
        conf = _effective(argv, tmp_path)
        assert (conf["stricthostkeychecking"], conf["forwardagent"]) == ("true", "no"), cmd
    assert _logins(container) > before
    print(f"refusal line: {line}", file=sys.stderr)
