"""The controller's build cache (roles/repo_build, `repo_build_cache`): binaries compiled on one rented instance,
restored onto later ones without compiling.

An entry is two files in the cache directory: `<key>.v3.tar.gz` (target/<profile>/<bin>... and the build stamp)
and `<key>.v3.json`, its record: the key, the commit the *controller* resolved (git ls-remote, never the host's
word), what was built, which instance and machine built it and when, and the sha256 of every file in the archive.
The record is written last, so an interrupted save leaves no entry. A restore (`verify`) re-reads the archive and
refuses it unless it holds exactly the recorded files with the recorded digests, for the expected key and commit.

Trust: the digests prove the entry is what was fetched from the instance that built it, not that the instance
compiled honestly; an entry is as trustworthy as the host that built it (`list` names it, `clear` drops it).

Used by the role (roles/repo_build/lookup_plugins, `python -m volt_ansible.buildcache record` after a fetch and
`... restore` onto an instance) and by `volt-ansible cache list|clear`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from volt_ansible import ssh
from volt_ansible.errors import VoltError

FORMAT = 3
SUFFIX = f".v{FORMAT}"
LEGACY_SUFFIXES = (".v2.tar.gz",)  # older entries without a record: never restored, listed so they can be cleared


def default_dir() -> Path:
    """repo_build_cache_dir's default (roles/repo_build/defaults/main.yml)."""
    return Path(os.environ.get("HOME") or Path.home()) / ".cache" / "volt-ansible" / "builds"


def archive_path(cache_dir: Path | str, key: str) -> Path:
    return Path(cache_dir) / f"{key}{SUFFIX}.tar.gz"


def record_path(cache_dir: Path | str, key: str) -> Path:
    return Path(cache_dir) / f"{key}{SUFFIX}.json"


def digest_members(archive: Path | str) -> dict[str, str]:
    """{member name: sha256} of an entry archive; VoltError on anything but plain files at safe relative paths."""
    files: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                name = m.name
                if not m.isfile() or name.startswith("/") or ".." in Path(name).parts:
                    raise VoltError(f"{Path(archive).name} holds {name!r}, which is not a plain file at a relative path")
                if name in files:
                    raise VoltError(f"{Path(archive).name} holds {name!r} twice")
                h = hashlib.sha256()
                src = tar.extractfile(m)
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                files[name] = h.hexdigest()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise VoltError(f"{Path(archive).name} cannot be read ({e})") from None
    return files


def record(part: Path | str, cache_dir: Path | str, key: str, info: dict) -> dict:
    """Turn a fetched archive (`part`) into the entry `key`: digest its files, write the record, rename both into
    place (the archive first, the record last: without its record an archive is never restored)."""
    part = Path(part)
    files = digest_members(part)
    rec = {
        "format": FORMAT,
        "key": key,
        **info,
        "built_at": time.time(),
        "size": part.stat().st_size,
        "files": files,
    }
    rec_path = record_path(cache_dir, key)
    tmp = rec_path.with_name(rec_path.name + ".part")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    rec_path.unlink(missing_ok=True)  # an older entry under this key stops counting before its archive is replaced
    part.replace(archive_path(cache_dir, key))
    tmp.replace(rec_path)
    return rec


def verify(cache_dir: Path | str, key: str, commit: str = "") -> tuple[str, str]:
    """(archive path, "") for an entry that may be restored; ("", "") for no entry; ("", reason) for an entry that
    is refused: its record is unreadable or for another key/commit, or its archive does not hold exactly the
    recorded files with the recorded sha256."""
    archive, rec_path = archive_path(cache_dir, key), record_path(cache_dir, key)
    if not rec_path.is_file() or not archive.is_file():
        return "", ""
    name = archive.name
    try:
        rec = json.loads(rec_path.read_text())
        want = rec["files"]
        if not isinstance(want, dict) or not want:
            raise ValueError("no files recorded")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return "", f"its record {rec_path.name} is unreadable ({e})"
    if rec.get("key") != key:
        return "", f"its record is for key {str(rec.get('key'))[:12]}, not {key[:12]}"
    if commit and rec.get("commit") != commit:
        return "", f"it was recorded for commit {rec.get('commit')}, not {commit}"
    try:
        have = digest_members(archive)
    except VoltError as e:
        return "", str(e)
    for path in sorted(set(want) | set(have)):
        if path not in have:
            return "", f"{name} lacks {path}, which its record lists"
        if path not in want:
            return "", f"{name} holds {path}, which its record does not list"
        if have[path] != want[path]:
            return "", f"{path} in {name} has sha256 {have[path]}, recorded {want[path]}"
    return str(archive), ""


@dataclass
class Entry:
    key: str
    size: int  # bytes of the archive
    built_by: str  # "volt-123 (instance 123, machine ...)"; "?" for an entry without a record
    built_at: float | None
    commit: str
    paths: list[Path]  # every file of the entry (archive, record, leftovers)
    problem: str = ""  # why it would not be restored ("" = fine as far as the record goes)


def _built_by(rec: dict) -> str:
    b = rec.get("built_by") or {}
    extra = [f"{label} {b[k]}" for k, label in (("instance_id", "instance"), ("machine", "machine"), ("hostname", "hostname"))
             if b.get(k) not in (None, "")]
    return f"{b.get('host') or '?'}" + (f" ({', '.join(extra)})" if extra else "")


def entries(cache_dir: Path | str) -> list[Entry]:
    """Every entry in the cache directory, newest first; legacy and incomplete ones included (with a problem)."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for p in cache_dir.iterdir():
        if p.is_file() and not p.name.startswith("."):
            groups.setdefault(p.name.split(".", 1)[0], []).append(p)
    out = []
    for key, paths in groups.items():
        archive, rec_path = archive_path(cache_dir, key), record_path(cache_dir, key)
        rec: dict = {}
        problem = ""
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, ValueError) as e:
                problem = f"unreadable record ({e})"
        elif any(p.name.endswith(LEGACY_SUFFIXES) for p in paths):
            problem = "legacy entry without a record (never restored)"
        else:
            problem = "incomplete (no record: an interrupted save)"
        if not problem and not archive.is_file():
            problem = "record without its archive"
        arch = archive if archive.is_file() else next((p for p in paths if p.name.endswith(".tar.gz")), None)
        size = arch.stat().st_size if arch else 0
        built_at = rec.get("built_at") if isinstance(rec.get("built_at"), int | float) else (arch.stat().st_mtime if arch else None)
        out.append(Entry(key, size, _built_by(rec) if rec else "?", built_at, str(rec.get("commit", "")), sorted(paths), problem))
    return sorted(out, key=lambda e: -(e.built_at or 0))


def clear(cache_dir: Path | str, key: str | None = None, everything: bool = False) -> list[Entry]:
    """Remove one entry (its full key or a unique prefix of it) or, with everything, all of them; returns them."""
    if bool(key) == everything:
        raise VoltError("cache clear: name one entry's KEY (see `volt-ansible cache list`) or pass --all")
    found = entries(cache_dir)
    if not everything:
        found = [e for e in found if e.key.startswith(key)]
        if not found:
            raise VoltError(f"cache clear: no entry {key!r} in {cache_dir} (`volt-ansible cache list` shows them)")
        if len(found) > 1:
            raise VoltError(f"cache clear: {key!r} matches {len(found)} entries in {cache_dir}: give more of the key")
    for e in found:
        for p in e.paths:
            p.unlink(missing_ok=True)
    return found


def restore_script(dest: str, stamp: str) -> str:
    """The instance's side of `restore`: the whole archive lands in a temporary directory first, then goes into place
    with the build stamp last and any older stamp removed first, so a stream cut anywhere leaves no stamp that says
    the binaries are there (the next run restores again). cp --remove-destination: a running binary is replaced, not
    written into (text file busy)."""
    lines = ["set -e", f"d={shlex.quote(dest)}", 'mkdir -p -- "$d"',
             't=$(mktemp -d "$d/.volt-restore.XXXXXX")', "trap 'rm -rf -- \"$t\"' EXIT", 'mkdir -- "$t"/a',
             'tar -xzf - -C "$t"/a', f'rm -f -- "$d"/{shlex.quote(stamp)}', f'mv -- "$t"/a/{shlex.quote(stamp)} "$t"/stamp',
             'cp -a --remove-destination -- "$t"/a/. "$d"/', f'mv -- "$t"/stamp "$d"/{shlex.quote(stamp)}']
    return "\n".join(lines)


def restore(archive: Path | str, dest: str, stamp: str, conn: dict, timeout: float = 600) -> None:
    """Unpack an entry's archive (checked by `verify` first) into `dest` on the instance, streamed into `tar -xz` there
    over one SSH connection: Ansible's unarchive makes a temporary directory, copies the file and runs a module that is
    not pipelined, ~3 s at 80 ms where this is a handshake and the bytes. conn: as ssh.argv takes it (the inventory's
    connection, its pinned known_hosts). stamp: the build stamp's path in the archive (the role names it: no second
    read of an archive `verify` has just read)."""
    line = restore_script(dest, stamp)
    try:
        with open(archive, "rb") as src:
            proc = subprocess.run([*ssh.argv(conn), str(conn["host"]), line], stdin=src, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VoltError(f"restoring {Path(archive).name} into {dest} on {conn['host']} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise VoltError(f"restoring {Path(archive).name} into {dest} on {conn['host']} failed (rc={proc.returncode}): {err}")


USAGE = ("usage: python -m volt_ansible.buildcache record PART CACHE_DIR KEY INFO_JSON\n"
         "       python -m volt_ansible.buildcache restore ARCHIVE DEST STAMP SSH_JSON")


def main(argv: list[str]) -> int:
    """`python -m volt_ansible.buildcache record PART CACHE_DIR KEY INFO_JSON` (what roles/repo_build runs after a fetch),
    `... restore ARCHIVE DEST STAMP SSH_JSON` (what it runs instead of compiling)."""
    if len(argv) == 5 and argv[0] == "restore":
        try:
            restore(argv[1], argv[2], argv[3], json.loads(argv[4]))
        except (VoltError, OSError, ValueError) as e:
            print(f"repo_build: {e}", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 5 or argv[0] != "record":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        rec = record(argv[1], argv[2], argv[3], json.loads(argv[4]))
    except (VoltError, OSError, ValueError) as e:
        Path(argv[1]).unlink(missing_ok=True)
        print(f"repo_build: the build cache did not take {argv[3][:12]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"key": rec["key"], "files": len(rec["files"]), "size": rec["size"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
