"""Issue 13, local files and secrets: file modes, the Vast API key kept out of every child's environment, the local
API double's auth and body handling, setup.sh's failures, and `destroy` judged by what is on the instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from volt_ansible import home
from volt_ansible.backends import vast
from volt_ansible.local import server as server_mod
from volt_ansible.local.double import LocalVast
from volt_ansible.local.server import DoubleServer

MARKER = "volt-secret-marker-5f1c2e"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- file modes -------------------------------------------------------------------------------------------------------

LEAK_PLAY = f"""
- name: What a localhost task and the runner's record of this run can see
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Find this run's artifacts/<id>/command (the runner's record of the whole environment)
      ansible.builtin.find:
        paths: "{{{{ lookup('ansible.builtin.env', 'TMPDIR') }}}}"
        patterns: command
        recurse: true
      register: found
    - name: Read it
      ansible.builtin.set_fact:
        recorded: "{{{{ found.files | map(attribute='path') | select('search', '/volt-runner-[^/]+/artifacts/') | list }}}}"
    - name: The key is neither in the environment nor in the record
      ansible.builtin.assert:
        that:
          - recorded | length == 1
          - "'VOLT_DIR' in lookup('ansible.builtin.file', recorded[0])"
          - "'{MARKER}' not in lookup('ansible.builtin.file', recorded[0])"
          - lookup('ansible.builtin.env', 'VAST_API_KEY') == ''
        fail_msg: "LEAKED: env={{{{ lookup('ansible.builtin.env', 'VAST_API_KEY') }}}}"
"""


def test_runner_never_sees_the_api_key_and_volt_is_private(project, tmp_path):
    """A playbook run with VAST_API_KEY in the CLI's environment: a localhost task cannot read it, and the runner's
    artifacts/<id>/command (the whole env, left in /tmp by a SIGKILL) does not hold it. .volt/ made 0755 by an
    older version comes out 0700, and what the run writes there (its log) 0600."""
    project.volt_dir.mkdir(mode=0o755)
    os.chmod(project.volt_dir, 0o755)
    play = tmp_path / "leak.yml"
    play.write_text(LEAK_PLAY)
    runner_tmp = tmp_path / "tmp"
    runner_tmp.mkdir()
    proc = project.cli("run", str(play), check=False, VAST_API_KEY=MARKER, VAST_SOME_TOKEN=MARKER, TMPDIR=str(runner_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "leak ok" in proc.stdout
    assert mode(project.volt_dir) == 0o700
    logs = list((project.volt_dir / "logs").glob("*-leak.log"))
    assert len(logs) == 1 and MARKER not in logs[0].read_text()
    assert mode(project.volt_dir / "logs") == 0o700 and mode(logs[0]) == 0o600


def test_vast_client_takes_the_key_out_of_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(vast, "_secrets", {})
    monkeypatch.setenv("VAST_API_KEY", MARKER)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")  # not a secret: stays
    first = vast.VastBackend(tmp_path)
    assert "VAST_API_KEY" not in os.environ and os.environ["VAST_URL"] == "http://127.0.0.1:9"
    second = vast.VastBackend(tmp_path)  # later clients of the same command still have it
    assert first.sdk.client.api_key == second.sdk.client.api_key == MARKER


def test_backup_dir_is_private_even_when_it_existed(tmp_path):
    runs = tmp_path / "runs" / "camp"
    runs.mkdir(parents=True, mode=0o755)
    os.chmod(runs, 0o755)
    home.check_dir(runs)
    home.merge(runs, [{"path": "checkpoints/x.bin", "size": 1, "digest": "sha256:00"}])
    assert mode(runs) == 0o700 and mode(runs / home.STAGING) == 0o700
    assert mode(runs / home.MANIFEST) == 0o600


# --- the local API double -----------------------------------------------------------------------------------------------


@pytest.fixture
def double_server(tmp_path):
    d = LocalVast(tmp_path / "local")
    srv = DoubleServer(d)
    yield d, srv
    srv.close()


def raw_request(url: str, head: str, timeout: float = 5) -> tuple[int, float]:
    """Send the request line and headers only (no body) and return (status, seconds to the answer)."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode())
        first = s.makefile("rb").readline().decode()
    return int(first.split()[1]), time.monotonic() - t0


def test_bad_key_is_refused_before_the_body_is_read(double_server):
    d, srv = double_server
    head = "POST /api/v0/bundles/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 500000\r\n\r\n"
    status, seconds = raw_request(srv.url, head)  # the 500 kB body never comes: reading it first would hang
    assert status == 401 and seconds < 3


def test_oversized_body_is_refused_unread(double_server):
    d, srv = double_server
    head = f"POST /api/v0/bundles/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.api_key}\r\nContent-Length: {2 << 20}\r\n\r\n"
    status, seconds = raw_request(srv.url, head)
    assert status == 413 and seconds < 3
    bad = f"POST /api/v0/bundles/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.api_key}\r\nContent-Length: many\r\n\r\n"
    assert raw_request(srv.url, bad)[0] == 400


def test_key_is_compared_in_constant_time(double_server, monkeypatch):
    import requests

    d, srv = double_server
    seen = []
    real = server_mod.hmac.compare_digest
    monkeypatch.setattr(server_mod.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    ok = requests.get(f"{srv.url}/api/v0/users/current/", headers={"Authorization": f"Bearer {d.api_key}"}, timeout=10)
    bad = requests.get(f"{srv.url}/api/v0/users/current/", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert (ok.status_code, bad.status_code) == (200, 401)
    assert (f"Bearer {d.api_key}".encode(), f"Bearer {d.api_key}".encode()) in seen


def test_double_state_and_key_files_are_private(tmp_path):
    old = os.umask(0o022)  # as a shell would have it: the double must not rely on the CLI's umask
    try:
        d = LocalVast(tmp_path / "local")
        d.set_faults(loading_s=0.1)
        key = d.api_key
    finally:
        os.umask(old)
    assert key and mode(tmp_path / "local" / "vast.json") == 0o600
    assert mode(tmp_path / "local" / "api_key") == 0o600 and mode(tmp_path / "local" / "vast.lock") == 0o600


# --- setup.sh and the constraints ---------------------------------------------------------------------------------------


def fake_checkout(root: Path, pip_rc: int) -> Path:
    """scripts/setup.sh in a copy whose .venv has a pip that fails (or not) and records its calls; no network."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/setup.sh", root / "scripts/setup.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = root / "pip-calls"
    (bin_dir / "pip").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho \"WARNING: Location 'file:///x' is ignored\"\n"
                                 f"echo 'ERROR: No matching distribution found for ansible==0'\nexit {pip_rc}\n")
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")  # "the import check passes"
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    # the image build (`python3 -m volt_ansible.local.image host`, run from the checkout) finds this one first
    image = root / "volt_ansible" / "local"
    image.mkdir(parents=True)
    for init in (root / "volt_ansible" / "__init__.py", image / "__init__.py"):
        init.write_text("")
    (image / "image.py").write_text(f"import sys\nopen({str(root / 'image-calls')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                                    "print('localhost/volt-test-host')\n")
    return calls


def test_setup_fails_when_pip_fails(tmp_path):
    calls = fake_checkout(tmp_path / "co", pip_rc=1)
    proc = subprocess.run(["bash", str(tmp_path / "co/scripts/setup.sh")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "setup: ready" not in proc.stdout
    assert "setup: pip install failed (exit 1, see above)" in proc.stderr
    assert "ERROR: No matching distribution" in proc.stdout + proc.stderr and "WARNING: Location" not in proc.stdout + proc.stderr
    assert "-c constraints.txt -e .[dev]" in calls.read_text()


def test_setup_skips_pip_when_venv_matches_the_constraints(tmp_path):
    calls = fake_checkout(tmp_path / "co", pip_rc=0)
    for _ in range(2):
        proc = subprocess.run(["bash", str(tmp_path / "co/scripts/setup.sh")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "setup: ready" in proc.stdout, proc.stdout + proc.stderr
    assert len(calls.read_text().splitlines()) == 1  # the second run found .venv installed from these very files
    assert (tmp_path / "co/image-calls").read_text().splitlines() == ["bare", "bare"]  # the instance image (cached by recipe) each time


def test_constraints_pin_every_dependency_exactly():
    text = (REPO / "constraints.txt").read_text()
    pins = dict(line.split("==", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), pins
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    norm = {re.sub(r"[-_.]+", "-", k).lower() for k in pins}
    for req in wanted:
        name = re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in norm, f"{name} is not pinned in constraints.txt: run scripts/constraints.sh"
    assert "volt-ansible" not in norm  # the project itself is installed editable, never pinned
    assert (REPO / "scripts/constraints.sh").exists()


# --- destroy: judged by what is on the instance -------------------------------------------------------------------------


def provisioned(project) -> int:
    project.cli("provision", "--backend", "local")
    return project.state()["instance"]["id"]


def on_instance(project, script: str) -> str:
    return project.cli("ssh", "--", script).stdout


@pytest.mark.podman
def test_destroy_an_instance_where_nothing_ever_ran(project):
    iid = provisioned(project)
    proc = project.cli("destroy", "--yes")
    assert f"instance(s) {iid} destroyed" in proc.stdout
    assert "lost" not in proc.stdout
    assert project.state()["instance"] is None


@pytest.mark.podman
def test_destroy_refuses_only_what_exists_and_is_not_home_and_force_names_only_that(project):
    iid = provisioned(project)
    on_instance(project, "mkdir -p /root/volt-x/checkpoints /root/volt-x/logs && cd /root/volt-x && "
                         "head -c 1000 /dev/urandom > checkpoints/scaled_vfn_stage1_epoch_1.safetensors && "
                         "echo '[Epoch 1/1] Step 5/50 | Loss: 0.5000 | LR: 1.00e-6 | 128 slots' > logs/phase21_stage1.log && "
                         "echo started > logs/phase03.log")
    # the stage-1 log is home (same size and modification time as on the instance); the rest is not
    size, mtime = on_instance(project, "stat -c '%s %Y' /root/volt-x/logs/phase21_stage1.log").split()
    runs = project.root / "runs" / "volt-x-phase21"
    (runs / "logs").mkdir(parents=True)
    (runs / "logs/phase21_stage1.log").write_bytes(b"x" * int(size))
    home.merge(runs, [{"path": "logs/phase21_stage1.log", "src": "logs/phase21_stage1.log", "size": int(size),
                       "digest": "sha256:00", "mtime_ns": int(mtime) * 10**9, "kind": "log"}])

    proc = project.cli("destroy", "--yes", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"error: not destroying instance {iid}: on the instance, "
                           "checkpoints/scaled_vfn_stage1_epoch_1.safetensors, logs/phase03.log not home yet; run `volt-ansible backup`"), line
    assert "codebook_code.bin" not in line  # never written: nothing to lose

    proc = project.cli("destroy", "--yes", "--force")
    assert f"instance(s) {iid} destroyed" in proc.stdout
    lost = " ".join(proc.stdout.split())
    assert "lost (not home): checkpoints/scaled_vfn_stage1_epoch_1.safetensors, logs/phase03.log;" in lost
    assert "scaled_vfn.safetensors" not in lost and "phase21_stage1.log" not in lost


@pytest.mark.podman
def test_destroy_of_an_unreachable_instance_falls_back_to_the_spec_and_says_so(project):
    iid = provisioned(project)
    project.cli("local", "preempt")
    proc = project.cli("destroy", "--yes", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert re.match(rf"error: not destroying instance {iid}: instance {iid} cannot be read over ssh \(.*\): judged by the spec's "
                    r"outputs instead: checkpoints/codebook_code.bin, checkpoints/scaled_vfn_stage1.safetensors", line), line
    proc = project.cli("destroy", "--yes", "--force")
    assert "judged by the spec's outputs instead" in " ".join(proc.stdout.split())
    assert json.loads((project.volt_dir / "state.json").read_text())["instance"] is None
