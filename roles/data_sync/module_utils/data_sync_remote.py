"""data_sync on the instance (standard library only, Python >= 3.7): what is verified there, free disk, its rsync;
verify a copy where it landed; the markers other roles read (<root>/.volt-sync/<item>.verified and <job>.ready).

Two ways in, one code: the role's modules import it (`ansible.module_utils.data_sync_remote`, over Ansible's pinned
connection), and the background driver runs the copy the role installed in <root>/.volt-sync/lib/ (`python3
data_sync_remote.py verify '<json>'`, over the same ssh), so a tier is verified while the next one moves without the
controller sending code on every call. Digests, walks and atomic writes are volt_fileops', the controller's too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

try:
    from ansible.module_utils import volt_fileops as fileops
except ImportError:  # run as a script from <root>/.volt-sync/lib/, volt_fileops.py beside it
    import volt_fileops as fileops  # type: ignore[no-redef]

SYNC_DIR = ".volt-sync"
LIB_DIR = "lib"


def _markers(root: str) -> str:
    return os.path.join(root, SYNC_DIR)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    fileops.atomic_write(path, text, durable=False)


def rsync_info(min_version: str) -> dict:
    """This host's rsync: version, whether it is at least min_version, whether it speaks zstd."""
    try:
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    m = re.search(r"version\s+v?(\d+)\.(\d+)\.(\d+)", out)
    version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    wanted = tuple(int(x) for x in min_version.split("."))
    return {"version": ".".join(map(str, version)), "ok": version >= wanted, "zstd": bool(re.search(r"\bzstd\b", out))}


def probe(root: str, items: list, reverify: bool, rsync_min_version: str) -> dict:
    """Free disk, rsync, and which items are verified and unchanged since (marker digest and stat signature).
    Reads only: nothing is created, not even root."""
    free_path = root
    while not os.path.isdir(free_path):
        free_path = os.path.dirname(free_path) or "/"
    st = os.statvfs(free_path)
    mdir = _markers(root)
    valid = []
    need = 0
    for it in items:
        path = os.path.join(root, it["dest"])
        marker = _read(os.path.join(mdir, it["name"] + ".verified"))
        sig = _read(os.path.join(mdir, it["name"] + ".stat"))
        if not reverify and marker and marker == it["digest"] and sig and sig == fileops.stat_signature(path, it["kind"]):
            valid.append(it["name"])
            continue
        # what will land: the whole item (rsync writes a new copy, then renames it), unless a copy of the
        # same size is already there (re-verified, at most patched); a partial file does not count
        present = _present_bytes(path, it["kind"])
        need += 0 if present == it.get("size", -1) else it.get("size", 0)
    ready = sorted(f[: -len(".ready")] for f in (os.listdir(mdir) if os.path.isdir(mdir) else []) if f.endswith(".ready"))
    return {"free_bytes": st.f_bavail * st.f_frsize, "free_path": free_path, "valid": valid, "need_bytes": need, "ready": ready,
            "rsync": rsync_info(rsync_min_version)}


def _present_bytes(path: str, kind: str) -> int:
    try:
        if kind == "file":
            return os.path.getsize(path) if os.path.isfile(path) else 0
        return sum(os.path.getsize(p) for _, p in fileops.walk_files(path)) if os.path.isdir(path) else 0
    except OSError:
        return 0


def _reject(root: str, name: str, dest: str, kind: str) -> str | None:
    """Move a copy that failed verification off its final path; return where it went."""
    path = os.path.join(root, dest)
    if not os.path.lexists(path):
        return None
    if kind == "file":
        # rsync takes a file in the partial dir as the basis of the next transfer of that file
        aside = os.path.join(os.path.dirname(path), fileops.PARTIAL_DIR, os.path.basename(path))
    else:
        aside = os.path.join(_markers(root), "rejected", name)
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside)
    elif os.path.lexists(aside):
        os.unlink(aside)
    os.replace(path, aside)
    return aside


def verify(args: dict) -> dict:
    """Hash each item where it landed; on a match write <item>.verified (the digest) and <item>.stat,
    then mark the jobs those items complete (the markers on disk decide, so concurrent calls agree).
    args: root, items [{name, dest, kind, expect}], reject (move a mismatching copy aside), jobs, digests."""
    root = args["root"]
    mdir = _markers(root)
    os.makedirs(mdir, exist_ok=True)
    results = {}
    for it in args["items"]:
        name, kind = it["name"], it["kind"]
        path = os.path.join(root, it["dest"])
        t0 = time.time()
        got = fileops.path_digest(path, kind)
        ok = got is not None and got == it["expect"]
        res = {"ok": ok, "digest": got, "seconds": round(time.time() - t0, 3), "rejected_to": None}
        if ok:
            sig = fileops.stat_signature(path, kind) or ""
            _write(os.path.join(mdir, name + ".stat"), sig + "\n")
            _write(os.path.join(mdir, name + ".verified"), got + "\n")
        else:
            for suffix in (".verified", ".stat"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(mdir, name + suffix))
            if args.get("reject"):
                res["rejected_to"] = _reject(root, name, it["dest"], kind)
        results[name] = res
    done = {n for n, r in results.items() if r["ok"]}
    jobs = {j: names for j, names in (args.get("jobs") or {}).items() if done & set(names)}
    marked = ready({"root": root, "jobs": jobs, "digests": args.get("digests", {})}) if jobs else {"ready": [], "written": []}
    return {"results": results, **marked}


def ready(args: dict) -> dict:
    """Write <job>.ready for every job of args["jobs"] ({job: [items]}) whose items all carry a .verified
    marker with the digest in args["digests"]; a job with an item without a digest (disabled) never is."""
    mdir = _markers(args["root"])
    os.makedirs(mdir, exist_ok=True)
    digests = args.get("digests", {})
    written, out = [], []
    for job, names in sorted(args["jobs"].items()):
        if names and all(digests.get(n) and _read(os.path.join(mdir, n + ".verified")) == digests[n] for n in names):
            out.append(job)
            marker = os.path.join(mdir, job + ".ready")
            content = "".join(f"{n} {digests[n]}\n" for n in sorted(names))
            if _read(marker) != content.strip():
                _write(marker, content)
                written.append(job)
    return {"ready": out, "written": written}


def prepare(args: dict) -> dict:
    """Before the first byte moves: forget the markers of the items about to be sent (and the .ready of
    every job needing one of them), then mark the jobs whose items are all verified already."""
    mdir = _markers(args["root"])
    os.makedirs(mdir, exist_ok=True)
    send = set(args.get("send", []))
    stale = [n + sfx for n in sorted(send) for sfx in (".verified", ".stat")]
    stale += [j + ".ready" for j, names in sorted(args["jobs"].items()) if send & set(names)]
    removed = []
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(mdir, name))
            removed.append(name)
    return {"removed": removed, **ready(args)}


def install(root: str) -> list:
    """Put this file and volt_fileops.py in <root>/.volt-sync/lib/ for the driver (sources read through the loaders
    that loaded them: Ansible's module payload); returns the files written (none when they are there already)."""
    lib = os.path.join(_markers(root), LIB_DIR)
    os.makedirs(lib, mode=0o755, exist_ok=True)
    written = []
    for module, name in ((sys.modules[__name__], "data_sync_remote.py"), (fileops, "volt_fileops.py")):
        source = module.__loader__.get_source(module.__name__)
        if fileops.write_if_changed(os.path.join(lib, name), source, mode=0o644):
            written.append(name)
    return written


def _rsync_servers(dest: str) -> list:
    """Pids of this user's `rsync --server ...` processes whose destination (their last argument) is `dest`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == "rsync" and "--server" in argv and argv[-1] == dest:
            found.append(int(pid))
    return found


def reap(args: dict) -> dict:
    """Before a retry: stop the rsync a dropped connection left receiving into `dest` (after a silent drop the instance
    may not have noticed yet: its sshd still waits on a connection the controller gave up on). SIGTERM makes it keep
    what it received in its partial dir, so the retry resumes from there instead of starting over beside it."""
    dest, wait_s = args["dest"], float(args.get("wait_s", 5))
    pids = _rsync_servers(dest)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 15)
    deadline = time.time() + wait_s
    left = pids
    while left and time.time() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if os.path.exists(f"/proc/{pid}")]
    return {"reaped": sorted(set(pids) - set(left)), "left": left}


COMMANDS = {"verify": verify, "ready": ready, "prepare": prepare, "reap": reap}


def main(argv: list) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(f"usage: {argv[0]} {{{'|'.join(COMMANDS)}}} '<json>'", file=sys.stderr)
        return 2
    print(json.dumps(COMMANDS[argv[1]](json.loads(argv[2]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
