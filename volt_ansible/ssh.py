"""The campaign's SSH key, the instance's pinned host key, and the ssh command line built from them."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from volt_ansible.errors import VoltError


def key_path(volt_dir: Path) -> Path:
    return volt_dir / "id_ed25519"


def known_hosts_path(volt_dir: Path) -> Path:
    return volt_dir / "known_hosts"


def ensure_key(volt_dir: Path, comment: str) -> str:
    """A per-campaign key (0600), made once; returns the public key text."""
    key = key_path(volt_dir)
    if not key.exists():
        volt_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VoltError(f"ssh-keygen failed: {proc.stderr.strip()}: is openssh-client installed?")
    key.chmod(0o600)
    return key.with_suffix(".pub").read_text().strip()


def banner(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when an SSH server answers on host:port with its version banner."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def pin_host_key(volt_dir: Path, host: str, port: int) -> None:
    """Record this instance's host keys in the campaign's own known_hosts (first contact, right after creation)."""
    proc = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(port), host], capture_output=True, text=True)
    keys = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
    if not keys:
        raise VoltError(f"could not read the SSH host key of {host}:{port}: sshd answered but ssh-keyscan got nothing")
    kh = known_hosts_path(volt_dir)
    name = host if port == 22 else f"[{host}]:{port}"
    kept = [ln for ln in (kh.read_text().splitlines() if kh.exists() else []) if not ln.startswith(name + " ")]
    kh.write_text("\n".join(kept + keys) + "\n")
    kh.chmod(0o600)


def forget_host(volt_dir: Path, host: str, port: int) -> None:
    kh = known_hosts_path(volt_dir)
    if kh.exists():
        name = host if port == 22 else f"[{host}]:{port}"
        kh.write_text("".join(ln + "\n" for ln in kh.read_text().splitlines() if not ln.startswith(name + " ")))


def options(volt_dir: Path) -> list[str]:
    """ssh options that trust only this campaign's key and pinned host keys."""
    return [
        "-i",
        str(key_path(volt_dir)),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts_path(volt_dir)}",
        "-o",
        "StrictHostKeyChecking=yes",
    ]


def command(volt_dir: Path, host: str, port: int, user: str = "root") -> list[str]:
    return ["ssh", *options(volt_dir), "-p", str(port), f"{user}@{host}"]


def can_login(volt_dir: Path, host: str, port: int) -> bool:
    cmd = command(volt_dir, host, port)
    cmd[1:1] = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    return subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode == 0
