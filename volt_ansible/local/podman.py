"""Thin wrapper over the podman CLI, always with the project's containers.conf."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from volt_ansible.errors import VoltError

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return e


def require() -> str:
    path = shutil.which("podman")
    if not path:
        raise VoltError(
            "podman is not installed: the local backend runs instances as podman containers; "
            "install it (apt-get install podman runc) or use --backend vast"
        )
    return path


def run(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [require(), *args]
    # own session: the double stands for a remote service, which a Ctrl-C of the controller never reaches
    proc = subprocess.run(cmd, env=env(), capture_output=True, input=input, timeout=timeout, start_new_session=True)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise VoltError(f"podman {args[0]} failed: {err[-1] if err else proc.returncode}")
    return proc


def out(*args: str) -> str:
    return run(*args).stdout.decode().strip()


def exists(kind: str, name: str) -> bool:
    """kind: 'image' or 'container'."""
    return run(kind, "exists", name, check=False).returncode == 0


def _start_time(pid: int) -> str:
    """When process `pid` started (field 22 of /proc/<pid>/stat), "" when it is gone or a zombie: a pid the kernel gave
    to another process since differs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


_INITS: dict[str, tuple[int, str]] = {}  # container -> its init's pid and start time, as last asked


def init_pid(name: str) -> int:
    """The pid of container `name`'s init as this machine sees it, 0 when it is not running. Asked of podman once per
    start of the container, then read from /proc: a `podman inspect` costs ~0.05 s of CPU, and the double and the tests
    ask several times a second."""
    pid, started = _INITS.get(name, (0, ""))
    if not pid or _start_time(pid) != started:  # not asked yet, or stopped or restarted since
        out = run("inspect", "-f", "{{.State.Pid}}", name, check=False).stdout.decode().strip()
        started = _start_time(int(out)) if out.isdigit() and out != "0" else ""
        pid = int(out) if started else 0
        _INITS[name] = (pid, started)
    return pid
