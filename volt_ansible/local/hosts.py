"""Test hosts: podman containers running sshd on 127.0.0.1. Used by the local double, molecule and pytest."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from volt_ansible.local import image, podman

# One host key, made at the container's first start and kept across restarts (as an instance keeps its disk): the
# product pins whatever keys sshd offers. ed25519 alone because `ssh-keygen -A` also makes an RSA-3072 key, ~0.85 s of
# CPU per container start, which the test suite pays a few hundred times on 2 cores.
_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
SSHD_CMD = (f"{{ [ -e {_HOST_KEY} ] || ssh-keygen -q -t ed25519 -N '' -f {_HOST_KEY}; }} && mkdir -p /run/sshd && "
            f"exec /usr/sbin/sshd -D -e -o HostKey={_HOST_KEY}")


def start(
    name: str,
    recipe: str = "host",
    labels: dict[str, str] | None = None,
    volumes: list[str] | None = None,
    env: dict[str, str] | None = None,
    authorized_key: str | None = None,
    sshd: bool = True,
    hostname: str | None = None,
) -> int:
    """Start a container with sshd published on 127.0.0.1 (a free port); return that port."""
    img = image.ensure(image.RECIPES[recipe])
    args = ["run", "-d", "--init", "--name", name, "-p", "127.0.0.1::22"]
    if hostname:
        args += ["--hostname", hostname]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    for vol in volumes or []:
        args += ["-v", vol]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    setup = ""
    if authorized_key:
        setup = f"umask 077; mkdir -p /root/.ssh; printf '%s\\n' {shlex.quote(authorized_key.strip())} >> /root/.ssh/authorized_keys; "
    cmd = setup + (SSHD_CMD if sshd else "exec sleep infinity")
    podman.run(*args, img, "sh", "-c", cmd)
    return port(name)


def port(name: str) -> int:
    mapping = podman.out("port", name, "22/tcp")  # "127.0.0.1:41234"
    return int(mapping.splitlines()[0].rsplit(":", 1)[1])


def remove(name: str) -> None:
    podman.run("rm", "-f", "-t", "0", name, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description="start or remove a test host (prints JSON)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("name")
    s.add_argument("--recipe", default="host", choices=sorted(image.RECIPES))
    s.add_argument("--key-file", help="public key to authorize for root")
    s.add_argument("--volume", action="append", default=[])
    s.add_argument("--label", action="append", default=[])
    r = sub.add_parser("remove")
    r.add_argument("name")
    a = ap.parse_args()
    if a.cmd == "remove":
        remove(a.name)
        print(json.dumps({"removed": a.name}))
        return
    key = Path(a.key_file).read_text() if a.key_file else None
    labels = dict(lbl.split("=", 1) for lbl in a.label)
    remove(a.name)  # a leftover from an interrupted run must not block a fresh start
    p = start(a.name, a.recipe, labels=labels, volumes=a.volume, authorized_key=key)
    print(json.dumps({"name": a.name, "address": "127.0.0.1", "port": p}))


if __name__ == "__main__":
    main()
