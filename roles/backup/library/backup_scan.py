#!/usr/bin/python
"""backup_scan: what on the instance is finished and not home yet (mode=list), or the digests of
downloaded files as the instance has them now (mode=digest). Reads only; never changes anything."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_scan
short_description: List the instance's finished training files, or digest them
description:
  - C(mode=list) finds the epoch checkpoints (live ones in each job's epoch dir and the ones training_tmux archived
    under C(<archive_dir>/<job>/)), the jobs' outputs and logs and the files matching C(globs), and returns the
    complete ones that are not home yet. Complete means not named C(*.tmp), not a dot file, unchanged for
    C(stable_s) seconds, and, for a job output whose job has a status file, C(state=done) in it.
  - The jobs come resolved (volt_ansible.curriculum, through the role's backup_jobs filter): this module reads no job table.
  - C(mode=digest) returns size, mtime and digest (volt_fileops' sha256t) of the given paths as they are now.
  - Paths are relative to C(root). Standard library only (+ module_utils volt_fileops); never changes anything.
options:
  mode:
    description: list or digest.
    type: str
    choices: [list, digest]
    default: list
  root:
    description: The Volt-X working copy on the instance.
    type: path
    required: true
  jobs:
    description:
      - "The training jobs, resolved: each {name, output, log, status, epoch: null or {dir, prefix, suffix, owner, archive_dir}}
        (paths relative to root; owner: the file naming the job that writes the live epoch checkpoints)."
    type: list
    elements: dict
    default: []
  globs:
    description: More files to bring home (glob patterns relative to root), e.g. logs/*.log.
    type: list
    elements: str
    default: []
  stable_s:
    description: A file modified less than this many seconds ago is still being written and is skipped.
    type: int
    default: 60
  known:
    description: "Files already home: {local path: [size, mtime_ns]}; an unchanged one is not listed again."
    type: dict
    default: {}
  paths:
    description: mode=digest, the paths to digest.
    type: list
    elements: str
    default: []
  algo:
    description: "mode=digest, {path: sha256} for a path to digest with a legacy entry's plain SHA-256; the others get sha256t."
    type: dict
    default: {}
author: volt-ansible
"""

RETURN = r"""
files:
  description: mode=list, the complete files not home yet (src, dest, size, mtime_ns, kind, job, epoch), oldest first.
  returned: always
  type: list
waiting:
  description: mode=list, files found but not taken now (src, reason).
  returned: always
  type: list
home:
  description: mode=list, how many found files are home already.
  returned: always
  type: int
digests:
  description: "mode=digest, {path: {exists, size, mtime_ns, digest}}; digest: sha256t:<hex> (sha256:<hex> where algo says so)."
  returned: always
  type: dict
"""

import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import posixpath  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.volt_fileops import READ_BLOCK, file_digest  # noqa: E402

DONE_STATES = ("done",)
LEGACY_ALGO = "sha256"  # a home.json entry written before sha256t: its file is verified with plain SHA-256


def legacy_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            h.update(block)
    return LEGACY_ALGO + ":" + h.hexdigest()


def read_status(path):
    """The job's state from its status file: key=value lines (training_tmux) or a JSON object; None when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    if text.lstrip().startswith("{"):
        try:
            return str(json.loads(text).get("state", "")).strip().lower()
        except (ValueError, AttributeError):
            return ""
    kv = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return kv.get("state", "").strip().lower()


def epoch_number(name, prefix, suffix):
    if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
        return None
    n = name[len(prefix):len(name) - len(suffix)]
    return int(n) if re.fullmatch(r"[0-9]+", n) else None


def scan(p, now):
    root = p["root"]
    found = {}  # src -> item (first kind wins)

    def add(src, dest, kind, job=None, epoch=None):
        src = posixpath.normpath(src)
        if src not in found:
            found[src] = {"src": src, "dest": posixpath.normpath(dest), "kind": kind, "job": job, "epoch": epoch}

    epoch_dirs = {}  # (dir, prefix, suffix) -> (owner file, archive dir, [jobs writing these names])
    for job in p["jobs"]:
        e = job.get("epoch")
        if e:
            key = (posixpath.normpath(e["dir"]), e["prefix"], e["suffix"])
            epoch_dirs.setdefault(key, (posixpath.normpath(e["owner"]), posixpath.normpath(e["archive_dir"]), []))[2].append(str(job["name"]))
    for (d, prefix, suffix), (owner_file, archive_dir, writers) in sorted(epoch_dirs.items()):
        # Names of one job are that job's (train-vfn names them after each stage's output); names several jobs share are
        # the owner file's job's.
        owner = writers[0] if len(writers) == 1 else ""
        if not owner:
            try:
                with open(os.path.join(root, owner_file), encoding="utf-8", errors="replace") as f:
                    owner = f.read().strip()
            except OSError:
                pass
        owner = owner if re.fullmatch(r"[A-Za-z0-9_-]+", owner or "") else ""
        for path in glob.glob(os.path.join(glob.escape(os.path.join(root, d)), glob.escape(prefix) + "*" + glob.escape(suffix))):
            name = os.path.basename(path)
            n = epoch_number(name, prefix, suffix)
            if n is not None:
                rel = posixpath.join(d, name)
                # home keeps them per job, as the instance archives them
                add(rel, posixpath.join(archive_dir, owner, name) if owner else rel, "epoch", owner or None, n)
        pattern = os.path.join(glob.escape(os.path.join(root, archive_dir)), "*", glob.escape(prefix) + "*" + glob.escape(suffix))
        for path in glob.glob(pattern):
            name, job = os.path.basename(path), os.path.basename(os.path.dirname(path))
            n = epoch_number(name, prefix, suffix)
            if n is not None:
                rel = posixpath.join(archive_dir, job, name)
                add(rel, rel, "epoch", job, n)
    gated = {}  # output -> (job, its status file)
    for job in p["jobs"]:
        add(job["output"], job["output"], "output", str(job["name"]))
        gated[posixpath.normpath(job["output"])] = (str(job["name"]), job.get("status"))
    for pattern in p["globs"]:
        for path in glob.glob(os.path.join(glob.escape(root), pattern)):
            add(os.path.relpath(path, root).replace(os.sep, "/"), os.path.relpath(path, root).replace(os.sep, "/"), "log"
                if path.endswith(".log") else "file")
    for job in p["jobs"]:
        if job.get("log"):
            add(job["log"], job["log"], "log")

    files, skipped, home = [], [], 0
    for src in sorted(found):
        it = found[src]
        path = os.path.join(root, src)
        base = os.path.basename(src)
        try:
            st = os.stat(path)
        except OSError:
            continue  # a job output that does not exist yet
        if not os.path.isfile(path):
            continue
        if base.endswith(".tmp") or base.startswith("."):
            skipped.append({"src": src, "reason": "temporary file"})
            continue
        age = now - st.st_mtime
        if age < p["stable_s"]:
            skipped.append({"src": src, "reason": f"modified {max(age, 0):.0f}s ago (still being written?), backup_stable_s={p['stable_s']}"})
            continue
        if src in gated and gated[src][1]:
            name, status = gated[src]
            state = read_status(os.path.join(root, status))
            if state is not None and state not in DONE_STATES:
                skipped.append({"src": src, "reason": f"job {name} is not done ({status}: state={state or '?'})"})
                continue
        k = p["known"].get(it["dest"])
        if k and len(k) == 2 and k[0] == st.st_size and k[1] == st.st_mtime_ns:
            home += 1
            continue
        it.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        files.append(it)
    files.sort(key=lambda i: (i["mtime_ns"], i["src"]))
    return files, skipped, home


def digest(root, paths, algo=None):
    out = {}
    for rel in paths:
        path = os.path.join(root, rel)
        try:
            st1 = os.stat(path)
            d = legacy_sha256(path) if (algo or {}).get(rel) == LEGACY_ALGO else file_digest(path)
            st2 = os.stat(path)
        except OSError:
            out[rel] = {"exists": False}
            continue
        if (st1.st_size, st1.st_mtime_ns) != (st2.st_size, st2.st_mtime_ns):
            out[rel] = {"exists": True, "size": st2.st_size, "mtime_ns": st2.st_mtime_ns, "digest": None}  # written while hashed
        else:
            out[rel] = {"exists": True, "size": st1.st_size, "mtime_ns": st1.st_mtime_ns, "digest": d}
    return out


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["list", "digest"], "default": "list"},
            "root": {"type": "path", "required": True},
            "jobs": {"type": "list", "elements": "dict", "default": []},
            "globs": {"type": "list", "elements": "str", "default": []},
            "stable_s": {"type": "int", "default": 60},
            "known": {"type": "dict", "default": {}},
            "paths": {"type": "list", "elements": "str", "default": []},
            "algo": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    result = {"changed": False, "root": root, "root_exists": os.path.isdir(root), "rsync": bool(shutil.which("rsync")),
              "files": [], "waiting": [], "home": 0, "digests": {}}
    if p["mode"] == "digest":
        result["digests"] = digest(root, p["paths"], p["algo"])
    elif result["root_exists"]:
        try:
            result["files"], result["waiting"], result["home"] = scan(p, time.time())
        except (TypeError, AttributeError, ValueError, KeyError) as e:
            module.fail_json(msg=f"backup: cannot read the jobs (backup_jobs: each {{name, output, log, status, epoch}}) ({e!r})", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
