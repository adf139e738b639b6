"""Test-host images built locally with debootstrap (no registry), cached by recipe hash."""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import podman

RECIPE_VERSION = 2  # bump when the steps below change


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    include: tuple[str, ...]

    @property
    def tag(self) -> str:
        blob = json.dumps({**asdict(self), "v": RECIPE_VERSION}, sort_keys=True).encode()
        return f"localhost/volt-{self.name}:{hashlib.sha256(blob).hexdigest()[:12]}"


# The instance image: what the roles expect on a prepared host.
HOST = Recipe("host", "bookworm", ("openssh-server", "python3", "rsync", "sudo", "tmux", "git", "ca-certificates"))
# A minimal Vast-like image: no python3, rsync or tmux (the bootstrap play installs them).
BARE = Recipe("bare", "bookworm", ("openssh-server", "sudo", "ca-certificates"))
# HOST plus a C toolchain, so role tests that compile do not apt-install one every run.
DEV = Recipe("dev", "bookworm", HOST.include + ("build-essential", "pkg-config", "libssl-dev", "zstd"))
RECIPES = {r.name: r for r in (HOST, BARE, DEV)}


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses, so debootstrap needs no other network."""
    texts = [p.read_text() for p in sorted(sources_dir.glob("sources.list.d/*.sources"))]
    for text in texts:
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm\b", stanza, re.M) and (m := re.search(r"^URIs:\s*(\S+)", stanza, re.M)):
                uri = m.group(1)
                if "security" not in uri:
                    return uri
    lists = [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]
    for p in lists:
        if p.exists() and (m := re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", p.read_text(), re.M)):
            return m.group(1)
    return "http://deb.debian.org/debian"


def ensure(recipe: Recipe = HOST) -> str:
    """Return the image name, building it first if this recipe was never built here."""
    if podman.exists("image", recipe.tag):
        return recipe.tag
    # One build per recipe at a time: concurrent commands (or test workers) wait for it instead of building twice.
    with open(f"/var/tmp/volt-image-{recipe.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman.exists("image", recipe.tag):
            return recipe.tag
        return _build(recipe)


def _build(recipe: Recipe) -> str:
    if not shutil.which("debootstrap"):
        raise VoltError("debootstrap is not installed: apt-get install debootstrap (needed once to build the test-host image)")
    with tempfile.TemporaryDirectory(prefix="volt-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.include)}", recipe.suite, str(root), apt_mirror()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise VoltError(f"debootstrap {recipe.suite} failed: {' | '.join(tail)}")
        # Each container generates its own host keys at start, like a fresh Vast instance.
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
        (root / "etc/ssh/sshd_config.d/volt.conf").write_text("PermitRootLogin prohibit-password\nUseDNS no\n")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run([podman.require(), "import", "-", recipe.tag], stdin=tar.stdout, env=podman.env(), capture_output=True)
        finally:
            tar.stdout.close()  # a podman that stopped reading must end tar (SIGPIPE), not leave it blocked on a full pipe
            tar.wait()
        if proc.returncode != 0:
            raise VoltError(f"podman import failed: {proc.stderr.decode().strip()}")
    return recipe.tag


def main(names: list[str]) -> int:
    """Build the recipes at the same time (debootstrap waits on the mirror and on dpkg as much as on the CPU)."""
    if unknown := [n for n in names if n not in RECIPES]:
        print(f"volt-ansible local image: no recipe {', '.join(unknown)}: choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = [pool.submit(ensure, RECIPES[n]) for n in names]
    rc = 0
    for f in futures:
        try:
            print(f.result())
        except VoltError as e:
            print(f"volt-ansible local image: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["host"]))
