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
