"""Built Volt-X binaries shared between the local-backend tests of one machine, through the product's own build cache.

Every `project` test has its own HOME, so its build cache (~/.cache/volt-ansible/builds, roles/repo_build) starts
empty and each campaign compiles the fixture again. Entries are keyed by the commit the controller resolved, the
features, the binaries and the toolchain; the local world commits the fixture into a fresh repository per project,
so fixed git dates (FIXED_GIT_DATES, set in every project's environment) make the same sources the same commit.

After each CLI command of a `project` test that may compile (`up`, `run prepare`), and at its end, its new entries are
copied to a machine-wide directory (harvest); a test marked @pytest.mark.reuse_build gets them in its cache before each
command (seed) and so restores the binaries instead of compiling, exactly as a user's second campaign does. Tests that
check the build itself are not marked. When no entry of a marked test's features is there yet, its command that may
compile holds a lock for those features (building), so that two tests started together compile them once: the second
one waits, then restores.
The shared directory is per `dev` image (the binaries link against its libraries) and written entry by entry,
record last (as the product does: an entry without its record is not an entry), so workers never see half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volt_ansible import buildcache
from volt_ansible.local import image

FIXED_GIT_DATES = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
SHARED = Path("/var/tmp/volt-test-builds") / image.DEV.tag.rsplit(":", 1)[1]


def _entries(directory: Path) -> list[tuple[Path, Path]]:
    """(archive, record) pairs of complete entries."""
    out = []
    for record in sorted(directory.glob(f"*{buildcache.SUFFIX}.json")):
        archive = record.with_name(record.name[: -len(".json")] + ".tar.gz")
        if archive.is_file():
            out.append((archive, record))
    return out


def _copy(src: Path, dest_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=dest_dir)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest_dir / src.name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def seed(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for archive, record in _entries(SHARED) if SHARED.is_dir() else []:
        _copy(archive, cache)
        _copy(record, cache)


def harvest(cache: Path) -> None:
    if not cache.is_dir():
        return
    SHARED.mkdir(parents=True, exist_ok=True)
    for archive, record in _entries(cache):
        if not (SHARED / record.name).exists():
            _copy(archive, SHARED)
            _copy(record, SHARED)


def has_features(features: list[str]) -> bool:
    """Whether the shared directory holds an entry built with these cargo features."""
    for _, record in _entries(SHARED) if SHARED.is_dir() else []:
        try:
            if sorted(json.loads(record.read_text()).get("features") or []) == sorted(features):
                return True
        except (OSError, ValueError):
            continue
    return False


@contextmanager
def building(cache: Path, features: list[str]) -> Iterator[None]:
    """Around a command that may compile these features: seeded first; if nothing of them is shared yet, under the
    features' lock, seeded again once it is held (the holder before may have built them), harvested before it is
    released."""
    if has_features(features):
        seed(cache)
        yield
        return
    SHARED.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(sorted(features)).encode()).hexdigest()[:16]
    with open(SHARED / f".building-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            seed(cache)
            yield
            harvest(cache)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
