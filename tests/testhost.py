"""A real SSH test host (podman container) and ansible-playbook runs against it, for role tests."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import run_group

from volt_ansible.local import hosts, podman
from volt_ansible.ssh import banner

REPO = Path(__file__).resolve().parents[1]
LABEL = "volt-ansible.test"


def container_pid(name: str) -> int:
    """The pid of container `name`'s init as this machine sees it, 0 when it is not running. Tests that wait for
    something on a host look at it through /proc/<pid> several times a second (podman.init_pid: one `podman inspect`
    per start of the container)."""
    return podman.init_pid(name)


def container_root(name: str) -> Path | None:
    """Container `name`'s filesystem as this machine sees it (/proc/<pid of its init>/root), None when it is not running."""
    pid = container_pid(name)
    return Path(f"/proc/{pid}/root") if pid else None


@dataclass
class TestHost:
    name: str
    port: int
    key: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    __test__ = False  # not a pytest class

    @property
    def inventory(self) -> Path:
        inv = self.workdir / "hosts.ini"
        inv.write_text(
            "[volt]\n"
            f"{self.name} ansible_host=127.0.0.1 ansible_port={self.port} ansible_user=root "
            f"ansible_ssh_private_key_file={self.key} "
            "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'\n"
        )
        return inv

    def playbook(self, playbook: str | Path, extravars: dict | None = None, check: bool = False, timeout: float = 900,
                 args: list[str] | None = None) -> subprocess.CompletedProcess:
        """Run a playbook (a path, or YAML text) against this host with the project's ansible.cfg and roles."""
        if isinstance(playbook, str) and "\n" in playbook:
            path = self.workdir / "play.yml"
            path.write_text(playbook)
        else:
            path = Path(playbook)
        cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(self.inventory), str(path)]
        if extravars:
            import json

            cmd += ["-e", json.dumps(extravars)]
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONTROL_PATH_DIR": str(self.workdir / "cp"), **self.env}
        proc = run_group(cmd + (args or []), cwd=REPO, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"playbook failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
        return proc

    def exec(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = podman.run("exec", self.name, "sh", "-c", cmd, check=False)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} -> {proc.returncode}: {out.stderr}")
        return out

    def read(self, path: str) -> str:
        """The text of the file at absolute `path` in the host; "" when it is missing (as `cat path 2>/dev/null`)."""
        root = container_root(self.name)
        try:
            return (root / path.lstrip("/")).read_text() if root else ""
        except (OSError, UnicodeDecodeError):
            return ""

    def listdir(self, path: str) -> list[str]:
        """The names in the directory at absolute `path` in the host, sorted; [] when it is missing."""
        root = container_root(self.name)
        try:
            return sorted(os.listdir(root / path.lstrip("/"))) if root else []
        except OSError:
            return []

    def put(self, content: str, dest: str, mode: str = "0755") -> None:
        """Write a file into the host (e.g. a scripted nvidia-smi double)."""
        podman.run("exec", "-i", self.name, "sh", "-c", f"mkdir -p $(dirname {dest}) && cat > {dest} && chmod {mode} {dest}",
                   input=content.encode())


def start(name: str, recipe: str = "host", volumes: list[str] | None = None, image: str | None = None) -> TestHost:
    """Start a test host from a recipe's image, or from `image` (a snapshot, tests/builthost.py).
    The short workdir keeps ssh ControlPath sockets under 108 bytes."""
    workdir = Path(tempfile.mkdtemp(prefix="vth-", dir="/tmp"))
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hosts.remove(name)
    pub = key.with_suffix(".pub").read_text()
    port = (_start_image(name, image, volumes, pub) if image
            else hosts.start(name, recipe, labels={LABEL: "1"}, volumes=volumes, authorized_key=pub))
    deadline = time.monotonic() + 30
    while not banner("127.0.0.1", port, timeout=1):
        if time.monotonic() > deadline:
            raise AssertionError(f"sshd of test host {name} did not answer on port {port}")
        time.sleep(0.1)
    return TestHost(name, port, key, workdir)


def _start_image(name: str, image: str, volumes: list[str] | None, authorized_key: str) -> int:
    """hosts.start for an image that is no recipe's (the product starts recipe images only)."""
    args = ["run", "-d", "--init", "--name", name, "-p", "127.0.0.1::22", "--label", f"{LABEL}=1"]
    for vol in volumes or []:
        args += ["-v", vol]
    setup = f"umask 077; mkdir -p /root/.ssh; printf '%s\\n' {shlex.quote(authorized_key.strip())} > /root/.ssh/authorized_keys; "
    podman.run(*args, image, "sh", "-c", setup + hosts.SSHD_CMD)
    return hosts.port(name)


def unique_name(prefix: str, node_name: str) -> str:
    """A container name no other test, xdist worker or concurrent run uses at the same time (node names can share a
    long prefix; each worker is a process of its own)."""
    digest = hashlib.sha256(f"{os.getpid()}/{node_name}".encode()).hexdigest()[:6]
    short = "".join(c if c.isalnum() or c in "-_." else "-" for c in node_name[:32])
    return f"{prefix}-{short}-{digest}"


def stop(host: TestHost) -> None:
    hosts.remove(host.name)
    subprocess.run(["rm", "-rf", str(host.workdir)], check=False)
