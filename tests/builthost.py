"""A test host with the Volt-X fixture already built, made once and kept as a podman image.

Installing Rust from the toolchain archive and `cargo build` of the fixture cost 30-60 s per host. Tests that need
the binaries but do not test building start from a snapshot instead: the first user (of any pytest worker or run)
starts a `dev` host, runs its setup (the toolchain, the build, whatever else it needs) and `podman commit`s it as
localhost/volt-built:<key>; every later user starts that image in about a second.

The key is a digest of everything the snapshot's content follows from: the base image's tag, the toolchain archive,
the fixture's sources, the roles and resources the setup runs, and the setup's own text. Change any of them and the
next run builds a new snapshot (older ones are removed then). A file lock per key makes concurrent workers build it
once: the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from testhost import REPO, TestHost, start, stop

from volt_ansible import fileops
from volt_ansible.local import image, podman, toolchain

REPOSITORY = "localhost/volt-built"
BASE = image.DEV
# What a built host follows from, besides the setup's text (relative to the repository; directories walked).
SOURCES = ("tests/fixtures/volt-x", "roles/rust_toolchain", "roles/repo_build", "roles/volt_fileops",
           "molecule/resources/serve-volt-x.yml", "molecule/resources/nvidia-smi", "ansible.cfg")
SKIP_DIRS = ("target", "__pycache__", ".pytest_cache")


def _files(rel: str) -> list[Path]:
    root = REPO / rel
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not set(p.relative_to(root).parts) & set(SKIP_DIRS))


def key(setup: Callable, extra: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    archive = toolchain.ensure_archive()
    for part in (BASE.tag, archive.name, toolchain.archive_sha256(archive), inspect.getsource(setup), *extra):
        h.update(part.encode() + b"\0")
    for rel in SOURCES:
        for path in _files(rel):
            h.update(f"{path.relative_to(REPO)}\0{fileops.file_digest(path)}\0".encode())
    return h.hexdigest()[:16]


def ensure(setup: Callable[[TestHost], None], extra: tuple[str, ...] = ()) -> str:
    """The snapshot's image name, building it first (one builder at a time per key) when it is not there yet."""
    tag = f"{REPOSITORY}:{key(setup, extra)}"
    if podman.exists("image", tag):
        return tag
    with open(f"/var/tmp/volt-built-{tag.rsplit(':', 1)[1]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman.exists("image", tag):
            return tag
        builder = start(f"volt-built-{tag.rsplit(':', 1)[1]}", BASE.name)
        try:
            setup(builder)
            builder.exec("tmux kill-server 2>/dev/null; rm -rf /root/.ssh/authorized_keys /tmp/* ; true", check=False)
            podman.run("commit", "-q", builder.name, tag, timeout=600)
        finally:
            stop(builder)
        _prune(keep=tag)
    return tag


def _prune(keep: str) -> None:
    """Snapshots of older sources: removed (one still used by a running container stays: podman refuses)."""
    out = podman.out("images", "--filter", f"reference={REPOSITORY}", "--format", "{{.Repository}}:{{.Tag}}")
    for name in out.splitlines():
        if name and name != keep:
            podman.run("rmi", name, check=False)


@contextmanager
def started(name: str, setup: Callable[[TestHost], None], extra: tuple[str, ...] = ()) -> Iterator[TestHost]:
    """A running host (sshd answering) started from the snapshot that `setup` makes (made first when needed);
    removed afterwards."""
    host = start(name, image=ensure(setup, extra))
    try:
        yield host
    finally:
        stop(host)
