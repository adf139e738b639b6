"""A path inside a local instance's filesystem, seen from the host through `podman mount` (which works on a stopped
container as on a running one). The path is data: normalised, never given to a shell, and refused when a part of it is
a symlink (followed from the host, a symlink would leave the container's filesystem)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import podman


@contextmanager
def mounted(container: str) -> Iterator[Path]:
    """The container's root filesystem on the host while the block runs."""
    root = Path(podman.out("mount", container))
    try:
        yield root
    finally:
        podman.run("unmount", container, check=False)


def normal(path: str) -> str:
    """The absolute, normalised form of an instance path ('..' cannot climb above '/'); a trailing '/' is kept (rsync's
    'the contents of')."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise VoltError(f"bad path {path!r}")
    norm = posixpath.normpath("/" + path.lstrip("/"))
    norm = "/" + norm.lstrip("/")
    return norm + "/" if path.endswith("/") and norm != "/" else norm


def on_host(root: Path, path: str) -> str:
    """The host path of instance path `path` under the mounted `root`; no part of it may be a symlink."""
    norm = normal(path)
    probe = str(root)
    for part in [p for p in norm.split("/") if p]:
        probe = os.path.join(probe, part)
        if os.path.islink(probe):
            raise VoltError(f"{norm} goes through a symlink ({probe[len(str(root)):]}): give the path it points to")
    return str(root) + norm
