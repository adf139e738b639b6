"""Test-host images built locally with debootstrap (no registry), cached by recipe hash."""

from __future__ import annotations

import contextlib
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
from urllib.parse import urlsplit

from volt_ansible.errors import VoltError
from volt_ansible.local import podman

RECIPE_VERSION = 2  # bump when the steps below change


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    include: tuple[str, ...]
    # Like a registry image (nvidia/cuda:*, FROM ubuntu): apt lists emptied, the docker apt/dpkg settings, sources with
    # -updates and -security. False: debootstrap's rootfs as it is (lists kept, one source).
    registry_like: bool = False
    # Another recipe's rootfs with `include` apt-installed on top (chroot), instead of a debootstrap of its own: a second
    # minbase debootstrap costs about a minute of CPU, the extra packages a fraction of it.
    base: str = ""

    @property
    def tag(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k not in ("registry_like", "base") or v}  # older recipes keep their tags
        blob = json.dumps({**fields, "v": RECIPE_VERSION}, sort_keys=True).encode()
        return f"localhost/volt-{self.name}:{hashlib.sha256(blob).hexdigest()[:12]}"


# A prepared host: what the roles expect, so role tests about something else start from it.
HOST = Recipe("host", "bookworm", ("openssh-server", "python3", "rsync", "sudo", "tmux", "git", "ca-certificates"))
# The instance image: what the spec's nvidia/cuda:12.8.0-devel-ubuntu22.04 has that the roles care about (curl and
# ca-certificates; the CUDA toolkit comes from the local world), plus the sshd Vast adds. No python3, rsync, tmux, git,
# zstd, sudo, build-essential, pkg-config or libssl-dev, and no apt lists: the bootstrap and rust_toolchain roles
# install what they need with apt-get update + install, from the Debian mirror (through the controller's package
# cache, local/aptcache.py, on the local backend), as a real instance does from Ubuntu's.
BARE = Recipe("bare", "bookworm", ("openssh-server", "curl", "ca-certificates"), registry_like=True)
# HOST plus a C toolchain, so role tests that compile do not apt-install one every run.
DEV = Recipe("dev", "bookworm", ("build-essential", "pkg-config", "libssl-dev", "zstd"), base="host")
RECIPES = {r.name: r for r in (HOST, BARE, DEV)}

# What ubuntu:22.04 (and so nvidia/cuda:*-ubuntu22.04) carries for apt and dpkg in a container: no daemons started by
# maintainer scripts, no .deb kept after an install, no translations, compressed lists, a minimized image (no docs or
# man pages unpacked). A registry_like image gets the same, so apt on it does the work it does on a real instance.
REGISTRY_FILES = {
    "usr/sbin/policy-rc.d": ("#!/bin/sh\nexit 101\n", 0o755),
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n', 0o644),
    "etc/apt/apt.conf.d/docker-no-languages": ('Acquire::Languages "none";\n', 0o644),
    "etc/apt/apt.conf.d/docker-gzip-indexes": ('Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n', 0o644),
    "etc/apt/apt.conf.d/docker-autoremove-suggests": ('Apt::AutoRemove::SuggestsImportant "false";\n', 0o644),
    "etc/dpkg/dpkg.cfg.d/excludes": (
        "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
        "path-exclude=/usr/share/info/*\npath-exclude=/usr/share/lintian/*\npath-exclude=/usr/share/locale/*\n"
        "path-include=/usr/share/locale/locale.alias\n", 0o644),
}


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


def apt_security_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """Where this machine's apt gets bookworm-security (the main mirror's host + /debian-security when it says nothing)."""
    for p in sorted(sources_dir.glob("sources.list.d/*.sources")):
        for stanza in p.read_text().split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm-security\b", stanza, re.M) and (m := re.search(r"^URIs:\s*(\S+)", stanza, re.M)):
                return m.group(1)
    for p in [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]:
        if p.exists() and (m := re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm-security\s", p.read_text(), re.M)):
            return m.group(1)
    main = urlsplit(apt_mirror(sources_dir))
    return f"{main.scheme}://{main.netloc}/debian-security"


def sources_list(suite: str, mirror: str, security: str) -> str:
    """An instance's apt sources: the release, its updates and its security fixes, as Ubuntu's images list them."""
    return f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\ndeb {security} {suite}-security main\n"


def ensure(recipe: Recipe = HOST) -> str:
    """Return the image name, building it first if this recipe was never built here."""
    return ensure_many([recipe])[0]


def ensure_many(recipes: list[Recipe]) -> list[str]:
    """Build what is missing of `recipes` (a derived recipe's base too), one debootstrap per rootfs: a base and the
    recipes on top of it are built from the same one. Returns their image names."""
    todo: dict[str, list[Recipe]] = {}  # root recipe name -> [root, derived...] still to check
    for r in recipes:
        root = RECIPES[r.base] if r.base else r
        chain = todo.setdefault(root.name, [root])
        if r is not root and r not in chain:
            chain.append(r)
    for chain in todo.values():
        _ensure_chain(chain)
    return [r.tag for r in recipes]


def _ensure_chain(chain: list[Recipe]) -> None:
    if all(podman.exists("image", r.tag) for r in chain):
        return
    # One build per recipe at a time: concurrent commands (or test workers) wait for it instead of building twice.
    # Locks in the chain's order (the base first), so two builders never wait on each other.
    with contextlib.ExitStack() as locks:
        for r in chain:
            lock = locks.enter_context(open(f"/var/tmp/volt-image-{r.name}.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [r for r in chain if not podman.exists("image", r.tag)]
        if missing:
            _build(chain[0], missing)


def _build(recipe: Recipe, missing: list[Recipe]) -> None:
    """debootstrap `recipe`'s rootfs once; import it if it is missing, then each derived recipe on top of it."""
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
        if recipe.registry_like:
            _registry_like(root, recipe.suite)
        if recipe in missing:
            _import(root, recipe.tag)
        for derived in (r for r in missing if r is not recipe):
            _apt_install(root, derived.include)
            _import(root, derived.tag)


def _apt_install(root: Path, packages: tuple[str, ...]) -> None:
    """apt-get install into the rootfs (its lists are debootstrap's), as a `RUN apt-get install` on top of an image."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        proc = subprocess.run(["chroot", str(root), "apt-get", "-qq", "install", "-y", "--no-install-recommends", *packages],
                              capture_output=True, text=True, env=env)
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise VoltError(f"apt-get install {' '.join(packages)} in the image failed: {' | '.join(tail)}")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    for cache in (root / "var/cache/apt").glob("*.bin"):  # apt's package caches (~70 MB), which debootstrap leaves none of
        cache.unlink()


def _import(root: Path, tag: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        proc = subprocess.run([podman.require(), "import", "-", tag], stdin=tar.stdout, env=podman.env(), capture_output=True)
    finally:
        tar.stdout.close()  # a podman that stopped reading must end tar (SIGPIPE), not leave it blocked on a full pipe
        tar.wait()
    if proc.returncode != 0:
        raise VoltError(f"podman import failed: {proc.stderr.decode().strip()}")


def _registry_like(root: Path, suite: str) -> None:
    """What a registry image has that debootstrap's rootfs has not (REGISTRY_FILES), and no apt lists: the first apt on
    it needs `apt-get update`, as on nvidia/cuda (whose Dockerfiles end with rm -rf /var/lib/apt/lists/*)."""
    for rel, (text, mode) in REGISTRY_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    (root / "etc/apt/sources.list").write_text(sources_list(suite, apt_mirror(), apt_security_mirror()))
    lists = root / "var/lib/apt/lists"
    shutil.rmtree(lists, ignore_errors=True)
    (lists / "partial").mkdir(parents=True)
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()


def main(names: list[str]) -> int:
    """Build the recipes at the same time (debootstrap waits on the mirror and on dpkg as much as on the CPU)."""
    if unknown := [n for n in names if n not in RECIPES]:
        print(f"volt-ansible local image: no recipe {', '.join(unknown)}: choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    # a derived recipe goes with its base (one debootstrap for both)
    groups: dict[str, list[Recipe]] = {}
    for n in names:
        r = RECIPES[n]
        groups.setdefault(r.base or r.name, []).append(r)
    with ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
        futures = [pool.submit(ensure_many, group) for group in groups.values()]
    rc = 0
    for f in futures:
        try:
            print("\n".join(f.result()))
        except VoltError as e:
            print(f"volt-ansible local image: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["host"]))
