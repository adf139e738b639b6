"""The campaign's SSH key, the instance's pinned host key, and the ssh command line built from them."""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import subprocess
from pathlib import Path

from volt_ansible.errors import VoltError

# A DNS name (labels of letters, digits, hyphens, never starting with one); IPv4 fits it too.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?:\.(?!-)[A-Za-z0-9-]{1,63})*\.?")
_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed")
_FAILED = re.compile(r"Host key verification failed|host key is known for")
_SEEN = re.compile(r"(?:Host key for|host key is known for) (\S+)")
_OFFENDING = re.compile(r"Offending \S+ key in (\S+):\d+")
# A line already built by host_key_line (e.g. by the data_sync driver), found again inside a task's message.
_BUILT = re.compile(r"host key (?:changed|not pinned) for [^\n\r]*")


def check_host(host: str) -> str:
    """host when it is a hostname or an IP address; else one-line VoltError: it goes on ssh, ssh-keyscan and
    rsync command lines, where `-oProxyCommand=...` would be an option and `a;b` a shell command."""
    host = str(host)
    if len(host) <= 253 and _HOSTNAME.fullmatch(host):
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        raise VoltError(f"ssh host {host!r} is not a hostname or an IP address: refusing to hand it to ssh "
                        "(check the instance's ssh_host in the API and in .volt/state.json)") from None


def host_key_line(text: str, who: str, known_hosts: Path | str | None = None) -> str | None:
    """The one line for ssh output (or a task message) that says the host key did not verify, else None.

    who names the instance (volt-42, or host:port); the line says how to re-pin it on purpose."""
    text = text or ""
    built = _BUILT.search(text)
    if built:
        return built.group(0).strip()
    changed, failed = _CHANGED.search(text), _FAILED.search(text)
    if not changed and not failed:
        return None
    offending = _OFFENDING.search(text)
    kh = offending.group(1) if offending else str(known_hosts or ".volt/known_hosts")
    named = _SEEN.search(text)
    seen = named.group(1) if named else ""
    host, _, port = seen[1:].partition("]:") if seen.startswith("[") else (seen, "", "")
    if host and host not in who:
        who = f"{who} ({seen})"
    if host:
        repin = (f"ssh-keygen -R {shlex.quote(seen)} -f {shlex.quote(kh)} && "
                 f"ssh-keyscan {'-p ' + port + ' ' if port else ''}{shlex.quote(host)} >> {shlex.quote(kh)}")
    else:
        repin = f"remove its line from {kh}, then ssh-keyscan -p PORT HOST >> {kh}"
    what = (f"host key changed for {who}: it does not match the key pinned in {kh} at first contact" if changed
            else f"host key not pinned for {who}: {kh} holds no key for it")
    return f"{what}; nothing was sent or run there. If the instance was really re-imaged, re-pin it on purpose: {repin}"


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
    check_host(host)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def pin_host_key(volt_dir: Path, host: str, port: int) -> None:
    """Record this instance's host keys in the campaign's own known_hosts (first contact, right after creation)."""
    proc = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(port), check_host(host)], capture_output=True, text=True)
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


def pinning(volt_dir: Path) -> list[str]:
    """ssh options that trust only this campaign's key and pinned host keys (the key itself is given with -i)."""
    return ["-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts_path(volt_dir)}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ForwardAgent=no"]


def options(volt_dir: Path) -> list[str]:
    """-i the campaign key, then pinning()."""
    return ["-i", str(key_path(volt_dir)), *pinning(volt_dir)]


def command(volt_dir: Path, host: str, port: int, user: str = "root") -> list[str]:
    return ["ssh", *options(volt_dir), "-p", str(port), f"{user}@{check_host(host)}"]


def connection(volt_dir: Path, host: str, port: int, user: str = "root") -> dict:
    """The campaign's own connection to an instance, in the shape argv() takes (the inventory's is the same shape)."""
    return {"host": check_host(host), "port": int(port), "user": user, "key": str(key_path(volt_dir)), "args": [shlex.join(pinning(volt_dir))]}


def argv(conn: dict, *, control: str | None = None, master: bool = True, batch: bool = True, keepalive: bool = True,
         connect_timeout: int | None = 20, compression: bool = False) -> list[str]:
    """The one builder of an ssh command line (without the host): every ssh and rsync -e the controller runs.

    conn: {host, port, user, key, args: [str]} -- the inventory's connection (ansible_ssh_args, the pinned
    UserKnownHostsFile) or connection() above. ssh keeps the first value of an option, so ours come first:
    a connection of its own (or the given control connection; master=False uses it only when it is up), never
    a password prompt, never the operator's agent, a dead link noticed within a minute."""
    out = ["ssh"]
    if control and master:
        out += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=60"]
    elif control:
        out += ["-o", "ControlMaster=no", "-o", f"ControlPath={control}"]
    else:
        out += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if batch:
        out += ["-o", "BatchMode=yes"]
    out += ["-o", "ForwardAgent=no", "-o", f"Compression={'yes' if compression else 'no'}"]
    if keepalive:
        out += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if connect_timeout:
        out += ["-o", f"ConnectTimeout={int(conn.get('connect_timeout', connect_timeout))}"]
    if conn.get("port"):
        out += ["-p", str(int(conn["port"]))]
    if conn.get("key"):
        out += ["-i", str(conn["key"])]
    if conn.get("user"):
        out += ["-l", str(conn["user"])]
    for extra in conn.get("args") or []:
        out += shlex.split(str(extra or ""))
    return out


def can_login(volt_dir: Path, host: str, port: int) -> bool:
    cmd = command(volt_dir, host, port)
    cmd[1:1] = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    return subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode == 0
