"""What is home: the campaign's local backup directory and its manifest, `<local_dir>/home.json`.

roles/backup pulls the instance's finished files (epoch checkpoints, stage outputs, the Phase 0.3
codebook, logs) into `<local_dir>/.incoming/` with rsync; `promote()` then checks each one against
the digest the instance computed (volt_fileops' "sha256t", the scheme data_sync sends data up with),
moves it into place and records it here. A file counts as home
only when it has an entry in home.json AND is on disk with the recorded size: the manifest is the
authority, and it is only ever replaced whole (temp file + fsync + rename, under a lock), so a
backup killed at any moment leaves the previous valid manifest.

The role runs it on the controller as `python -m volt_ansible.home` (`check`, `show`, `promote`);
`volt-ansible` imports it (`load`, `is_home`, `missing`, `newest_epoch_checkpoint`, `required_outputs`, `summary`).

home.json:

    {"version": 1, "updated": 1732550000.1,
     "files": {"<path relative to local_dir>": {
         "path": "...", "src": "<path relative to the instance's root>", "size": 123, "digest": "sha256t:<hex>",
         "mtime": 1732549000.5, "mtime_ns": 1732549000500000000, "home_at": 1732550000.1,
         "kind": "epoch|output|log|file", "job": "stage1", "epoch": 3, "host": "volt-123"}},
     "last_run": {"at": ..., "host": ..., "home": 2, "bytes": ..., "wire_bytes": ..., "literal_bytes": ..., ...}}

A digest names its algorithm, and a file is verified with the one its entry names: new entries are
"sha256t:" (volt_ansible.fileops.file_digest); entries of older manifests keep their plain "sha256:".

Epoch checkpoints are kept per job, `checkpoints/epochs/<job>/<output stem>_epoch_<N>.safetensors` (the
layout training_tmux archives them in on the instance): names that several stages share stay apart per job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from volt_ansible import curriculum, fileops
from volt_ansible.errors import VoltError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; run the controller in WSL
    fcntl = None  # type: ignore[assignment]

MANIFEST = "home.json"
STAGING = ".incoming"  # rsync's destination; files move out of it only once verified
LOCK = ".home.lock"
VERSION = 1
ALGO = fileops.FILE_ALGO  # what new entries record
LEGACY_ALGO = "sha256"  # plain SHA-256 of the content: entries written before sha256t (still verified)
RSYNC_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")  # rsync's in-flight copy: .<name>.XXXXXX
STALE_TEMP_S = 3600


class HomeError(VoltError):
    """A problem with the local backup directory or its manifest (one line, with the fix)."""


def default_dir(project_root: str | os.PathLike, campaign: str) -> Path:
    """Where `playbooks/backup.yml` puts a campaign by default: <project>/runs/<campaign>."""
    return Path(project_root) / "runs" / campaign


def private(local_dir: str | os.PathLike) -> None:
    """The backup directory holds the model weights: 0700 (and its staging dir), even when it existed with wider bits."""
    for d in (Path(local_dir), Path(local_dir) / STAGING):
        if d.is_dir() and d.stat().st_mode & 0o077:
            d.chmod(0o700)


def manifest_path(local_dir: str | os.PathLike) -> Path:
    return Path(local_dir) / MANIFEST


def digest_of(path: str | os.PathLike, algo: str = ALGO) -> str:
    """"<algo>:<hex>" of a file: sha256t (fileops.file_digest, both ends of every transfer) or a legacy entry's sha256."""
    if algo == ALGO:
        return fileops.file_digest(path)
    if algo == LEGACY_ALGO:
        return f"{LEGACY_ALGO}:{fileops.plain_sha256(path)}"
    raise HomeError(f"unknown digest algorithm {algo!r} for {path} (known: {ALGO}, {LEGACY_ALGO}): upgrade volt-ansible")


def _norm_digest(digest: str) -> str:
    """Lower case with its algorithm; a bare hex is a legacy sha256 (what it meant before digests named one)."""
    digest = str(digest).strip().lower()
    return digest if ":" in digest else f"{LEGACY_ALGO}:{digest}"


def _algo(digest: str) -> str:
    return _norm_digest(digest).split(":", 1)[0]


def verify(path: str | os.PathLike, digest: str) -> bool:
    """The file's content has this digest, computed with the algorithm the digest names."""
    return digest_of(path, _algo(digest)) == _norm_digest(digest)


# ---------------------------------------------------------------------------------------------
# The manifest


def _empty() -> dict:
    return {"version": VERSION, "updated": None, "files": {}}


def load(local_dir: str | os.PathLike) -> dict:
    """The manifest (an empty one when there is none yet). A manifest that does not parse is refused,
    never overwritten: the files it lists are still on disk."""
    path = manifest_path(local_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _empty()
    except OSError as e:
        raise HomeError(f"cannot read {path} ({e.strerror}): fix its permissions") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' mapping")
    except ValueError as e:
        raise HomeError(f"{path} is corrupt ({e}): restore it or move it away (the next backup re-verifies "
                        "every file against the instance and writes a new one)") from None
    version = data.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise HomeError(f"{path} has version {data.get('version')}, this volt-ansible reads up to {VERSION}: upgrade volt-ansible")
    data.setdefault("version", VERSION)
    return data


def write(local_dir: str | os.PathLike, manifest: dict) -> None:
    """Replace the manifest atomically (fileops.atomic_write: temp file, fsync, rename, fsync the directory)."""
    fileops.atomic_write(manifest_path(local_dir), json.dumps(manifest, indent=1, sort_keys=True) + "\n", mode=0o600)


@contextlib.contextmanager
def _locked(local_dir: str | os.PathLike):
    """One writer at a time (a manual `volt-ansible backup` beside `watch`): read-merge-write under a lock."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(Path(local_dir) / LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def merge(local_dir: str | os.PathLike, entries: list[dict], run: dict | None = None) -> dict:
    """Add or replace `entries` (each with at least path, size, digest) and write the manifest; return it."""
    for e in entries:
        for key in ("path", "size", "digest"):
            if key not in e:
                raise HomeError(f"manifest entry {e!r} has no {key!r}")
    with _locked(local_dir):
        data = load(local_dir)
        now = time.time()
        for e in entries:
            entry = dict(e)
            entry["digest"] = _norm_digest(entry["digest"])
            entry.setdefault("home_at", now)
            data["files"][entry["path"]] = entry
        data["updated"] = now
        if run is not None:
            data["last_run"] = run
        write(local_dir, data)
    return data


def _present(local_dir: Path, entry: dict) -> bool:
    try:
        st = (local_dir / entry["path"]).stat()
    except OSError:
        return False
    return st.st_size == entry.get("size")


def entries(local_dir: str | os.PathLike, present_only: bool = True) -> list[dict]:
    """The manifest's entries, sorted by path; by default only those whose file is on disk with the recorded size."""
    local_dir = Path(local_dir)
    files = load(local_dir)["files"]
    return [files[p] for p in sorted(files) if not present_only or _present(local_dir, files[p])]


def is_home(local_dir: str | os.PathLike, path: str, digest: str | None = None, verify: bool = False) -> bool:
    """`path` (relative to local_dir) is recorded as home, is on disk with its recorded size, and (when
    given) has that digest (a bare hex: the hex of the entry's); verify=True hashes the local file again with the
    algorithm its entry names."""
    local_dir = Path(local_dir)
    entry = load(local_dir)["files"].get(str(path))
    if not entry or not _present(local_dir, entry):
        return False
    if digest is not None:
        given = str(digest).strip().lower()
        if given != (_norm_digest(entry["digest"]) if ":" in given else _norm_digest(entry["digest"]).split(":", 1)[1]):
            return False
    return not verify or verify_entry(local_dir, entry)


def verify_entry(local_dir: str | os.PathLike, entry: dict) -> bool:
    """The entry's file at home still has its recorded digest."""
    try:
        return verify(Path(local_dir) / entry["path"], entry["digest"])
    except OSError:
        return False


def missing(local_dir: str | os.PathLike, required: list[str]) -> list[str]:
    """The required paths (relative, e.g. required_outputs()) that are not home, in the given order."""
    return [p for p in required if not is_home(local_dir, p)]


def newest_epoch_checkpoint(local_dir: str | os.PathLike, job: str | None = None, verify: bool = True) -> tuple[int, Path] | None:
    """(epoch, absolute path) of the newest verified epoch checkpoint at home, or None.

    job: that job's checkpoints only (epoch numbers restart with every stage); None: the job whose
    checkpoint was written last on the instance. verify=True hashes the candidate again and falls
    back to an older epoch when it no longer matches its recorded digest."""
    local_dir = Path(local_dir)
    epochs = [e for e in entries(local_dir) if e.get("kind") == "epoch" and isinstance(e.get("epoch"), int)]
    if job is None and epochs:
        job = max(epochs, key=lambda e: (e.get("mtime_ns") or 0, e["epoch"])).get("job")
    candidates = sorted((e for e in epochs if e.get("job") == job), key=lambda e: e["epoch"], reverse=True)
    for e in candidates:
        path = (local_dir / e["path"]).absolute()
        if not verify or verify_entry(local_dir, e):
            return e["epoch"], path
    return None


def required_outputs(phase03: dict | None, curriculum_table: dict | None, settings: dict | None = None) -> list[str]:
    """The campaign's results that must be home before the instance may go (group_vars/all.yml, as
    volt_ansible.curriculum resolves it): the Phase 0.3 output (codebook_code.bin), then every stage's output, in order."""
    s = curriculum.settings_from(None, settings)
    return curriculum.outputs(curriculum.resolve(phase03 or None, curriculum_table or None, s, check_names=False))


def summary(local_dir: str | os.PathLike, required: list[str] | None = None) -> dict:
    """For `status` / `watch` / the state file: counts, bytes, the newest epoch and what is still missing."""
    local_dir = Path(local_dir)
    data = load(local_dir)
    present = entries(local_dir)
    newest = newest_epoch_checkpoint(local_dir, verify=False)
    out = {
        "dir": str(local_dir),
        "files": len(present),
        "bytes": sum(e["size"] for e in present),
        "updated": data.get("updated"),
        "last_run": data.get("last_run"),
        "newest_epoch": {"epoch": newest[0], "path": str(newest[1])} if newest else None,
    }
    if required is not None:
        out["missing"] = missing(local_dir, required)
    return out


# ---------------------------------------------------------------------------------------------
# The role's steps (run as a script on the controller)


def check_dir(local_dir: str | os.PathLike, min_free_mb: float = 0, need_bytes: int = 0) -> dict:
    """The backup directory exists (created if needed), is writable, and keeps min_free_mb free after
    need_bytes more land. Raises HomeError (one line) otherwise; returns {dir, free_bytes}."""
    local_dir = Path(local_dir).expanduser()
    try:
        (local_dir / STAGING).mkdir(mode=0o700, parents=True, exist_ok=True)
        private(local_dir)
        fd, probe = tempfile.mkstemp(dir=str(local_dir), prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HomeError(f"backup directory {local_dir} is not writable ({e.strerror}): fix its permissions or set "
                        "backup_local_dir to a writable directory; nothing was downloaded") from None
    _drop_stale_temps(local_dir / STAGING)
    st = os.statvfs(str(local_dir))
    free = st.f_bavail * st.f_frsize
    margin = int(float(min_free_mb) * (1 << 20))
    if free - int(need_bytes) < margin:
        need = f"{need_bytes / (1 << 20):.1f} MiB of new files + " if need_bytes else ""
        raise HomeError(f"not enough local disk for the backup: {local_dir} has {free / (1 << 20):.1f} MiB free, it needs {need}"
                        f"{float(min_free_mb):.0f} MiB to spare (backup_min_free_mb): free some space or set backup_local_dir "
                        "to a bigger disk; nothing was downloaded")
    return {"dir": str(local_dir.absolute()), "free_bytes": free}


def _drop_stale_temps(staging: Path, older_than_s: float = STALE_TEMP_S) -> list[str]:
    """rsync's in-flight copies left by a killed (SIGKILL) rsync: nothing resumes from them (a dropped
    link or SIGTERM/SIGINT leaves a partial file in .rsync-partial/ instead), so they only take space."""
    dropped = []
    cutoff = time.time() - older_than_s
    for dirpath, _dirnames, filenames in os.walk(staging):
        for name in filenames:
            p = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if RSYNC_TEMP_RE.match(name) and os.stat(p).st_mtime < cutoff:
                    os.unlink(p)
                    dropped.append(p)
    return dropped


def known(local_dir: str | os.PathLike) -> dict:
    """{local path: [size, mtime_ns]} of what is home and on disk: the instance skips these unchanged files."""
    return {e["path"]: [e["size"], e.get("mtime_ns")] for e in entries(local_dir)}


def rsync_version(cmd: str = "rsync") -> str:
    """The controller's rsync version, or HomeError (one line) when it does not run."""
    try:
        p = subprocess.run([*shlex.split(cmd), "--version"], capture_output=True, text=True, timeout=30)
        why = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        p, why = None, str(e)
    if p is None or why:
        raise HomeError(f"'{cmd}' is not runnable on the controller ({why}): install rsync (apt install rsync; macOS: brew install rsync) "
                        "or set backup_rsync; nothing was downloaded")
    m = re.search(r"version\s+v?([\d.]+)", p.stdout)
    return m.group(1) if m else "?"


def _safe_rel(rel: str) -> str:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise HomeError(f"refusing the path {rel!r}: it must stay inside the backup directory")
    return p.as_posix()


def promote(local_dir: str | os.PathLike, items: list[dict], remote: dict | None = None, host: str = "", run: dict | None = None) -> dict:
    """Verify each staged download against the instance and move the good ones home, in one manifest write.

    Each item: src (relative to the instance's root; the staged copy is <local_dir>/.incoming/<src>),
    dest (relative to local_dir), size and mtime_ns when it was listed, kind/job/epoch; `remote[src]` (or the
    item's own `remote`) is {exists, size, mtime_ns, digest} as read on the instance after the transfer. Outcomes:
    home (digests equal: moved to dest and recorded), mismatch (retry; never recorded), changed
    (the instance's file changed or vanished since it was listed: taken once it is stable again),
    missing (rsync did not deliver it)."""
    local_dir = Path(local_dir)
    staging = local_dir / STAGING
    out: dict[str, list] = {"home": [], "mismatch": [], "changed": [], "missing": []}
    for it in items:
        src, dest = _safe_rel(it["src"]), _safe_rel(it["dest"])
        rem = it.get("remote") or (remote or {}).get(it["src"]) or {}
        staged = staging / src
        if not rem.get("exists") or rem.get("size") != it["size"] or rem.get("mtime_ns") != it["mtime_ns"] or not rem.get("digest"):
            out["changed"].append({"src": src, "reason": "changed on the instance since it was listed" if rem.get("exists")
                                   else "gone from the instance"})
            continue
        if not staged.is_file():
            out["missing"].append({"src": src, "reason": "not downloaded"})
            continue
        local_digest = digest_of(staged, _algo(rem["digest"]))
        if local_digest != _norm_digest(rem["digest"]) or staged.stat().st_size != it["size"]:
            out["mismatch"].append({"src": src, "dest": dest, "local_digest": local_digest, "remote_digest": rem["digest"],
                                    "local_size": staged.stat().st_size, "size": it["size"]})
            continue
        os.utime(staged, ns=(time.time_ns(), it["mtime_ns"]))
        final = local_dir / dest
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        out["home"].append({
            "path": dest, "src": src, "size": it["size"], "digest": local_digest, "mtime": it["mtime_ns"] / 1e9,
            "mtime_ns": it["mtime_ns"], "home_at": time.time(), "kind": it.get("kind", "file"), "job": it.get("job"),
            "epoch": it.get("epoch"), "host": host,
        })
    if run is not None:
        run = dict(run)
        run.update(at=time.time(), home=int(run.pop("home_before", 0) or 0) + len(out["home"]), mismatch=len(out["mismatch"]),
                   waiting=len(out["changed"]) + len(out["missing"]))
    if out["home"] or run is not None:
        merge(local_dir, out["home"], run=run)
    return out


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m volt_ansible.home", description="The local backup directory and its manifest (roles/backup).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="create the directory, check it is writable and has room (and rsync runs); "
                                      "print {dir, free_bytes, known, rsync}")
    c.add_argument("--dir", required=True)
    c.add_argument("--min-free-mb", type=float, default=0)
    c.add_argument("--need-bytes", type=int, default=0)
    c.add_argument("--rsync", help="the rsync command to try (--version)")
    s = sub.add_parser("show", help="print {files: {path: [size, mtime_ns]}} of what is home and on disk")
    s.add_argument("--dir", required=True)
    p = sub.add_parser("promote", help="stdin: {items, remote, host, run}; verify, move home, record; print the outcomes")
    p.add_argument("--dir", required=True)
    m = sub.add_parser("summary", help="print the summary of what is home")
    m.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "check":
            res = check_dir(a.dir, a.min_free_mb, a.need_bytes)
            res["known"] = known(a.dir)
            if a.rsync:
                res["rsync"] = rsync_version(a.rsync)
        elif a.cmd == "show":
            res = {"files": known(a.dir)}
        elif a.cmd == "promote":
            req = json.load(sys.stdin)
            res = promote(a.dir, req.get("items", []), remote=req.get("remote"), host=req.get("host", ""), run=req.get("run"))
        else:
            res = summary(a.dir)
    except VoltError as e:
        print(f"backup: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
