#!/usr/bin/python
"""backup_scan: what on the instance is finished and not home yet (mode=list), or the digests of
downloaded files as the instance has them now (mode=digest). Reads only; never changes anything."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_scan
short_description: List the instance's finished training files, or digest them
description:
  - C(mode=list) finds the epoch checkpoints (live ones next to each stage's output and the ones training_tmux archived
    under C(<dir>/<epoch_archive>/<job>/)), the stage outputs, the Phase 0.3 output and the files matching C(globs),
    and returns the complete ones that are not home yet. Complete means not named C(*.tmp), not a dot file,
    unchanged for C(stable_s) seconds, and, for a job output with a C(<status_dir>/<job>.status) file, C(state=done) in it.
  - C(mode=digest) returns size, mtime and SHA-256 of the given paths as they are now.
  - Paths are relative to C(root). Standard library only; never changes anything.
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
  phase03:
    description: The Phase 0.3 job (group_vars volt_phase03).
    type: dict
    default: {}
  curriculum:
    description: The Phase 2.1 curriculum (group_vars volt_curriculum).
    type: dict
    default: {}
  globs:
    description: More files to bring home (glob patterns relative to root), e.g. logs/*.log.
    type: list
    elements: str
    default: []
  stable_s:
    description: A file modified less than this many seconds ago is still being written and is skipped.
    type: int
    default: 60
  status_dir:
    description: Where the jobs' <job>.status files are (training_tmux_status_dir).
    type: str
    default: logs
  epoch_owner_file:
    description: The file next to the live epoch checkpoints that names the job writing them (training_tmux_epoch_owner_file).
    type: str
    default: .volt-epochs
  epoch_archive:
    description: Where finished jobs' epoch checkpoints go, <dir>/<epoch_archive>/<job>/ (training_tmux_epoch_archive).
    type: str
    default: epochs
  known:
    description: "Files already home: {local path: [size, mtime_ns]}; an unchanged one is not listed again."
    type: dict
    default: {}
  paths:
    description: mode=digest, the paths to digest.
    type: list
    elements: str
    default: []
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
  description: "mode=digest, {path: {exists, size, mtime_ns, digest}}."
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

EPOCH_TOKEN = "{epoch}"
DONE_STATES = ("done",)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def flag_value(args, flag):
    value = (args or {}).get(flag) if flag else None
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    return str(value) if value not in (None, True, False, "") else None


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


def jobs(phase03, curriculum):
    """[(name, output path)] of the Phase 0.3 job and every stage, the epoch template (prefix, suffix) or None,
    and the directories the stages write their outputs (and so their epoch checkpoints) to."""
    out, stage_outputs = [], []
    if phase03:
        p = flag_value(phase03.get("args") or {}, phase03.get("output"))
        if p and phase03.get("name"):
            out.append((str(phase03["name"]), posixpath.normpath(p)))
    common = (curriculum or {}).get("args") or {}
    for stage in (curriculum or {}).get("stages") or []:
        merged = dict(common)
        merged.update(stage.get("args") or {})
        p = flag_value(merged, curriculum.get("output"))
        if p and stage.get("name"):
            out.append((str(stage["name"]), posixpath.normpath(p)))
            stage_outputs.append(posixpath.normpath(p))
    template = (curriculum or {}).get("epoch_checkpoint") or ""
    epoch = tuple(template.split(EPOCH_TOKEN, 1)) if EPOCH_TOKEN in template else None
    stage_dirs = sorted({posixpath.dirname(p) or "." for p in stage_outputs}) if epoch else []
    return out, epoch, stage_dirs


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

    job_list, epoch, stage_dirs = jobs(p["phase03"], p["curriculum"])
    if epoch:
        prefix, suffix = epoch
        for d in stage_dirs:
            owner = ""
            try:
                with open(os.path.join(root, d, p["epoch_owner_file"]), encoding="utf-8", errors="replace") as f:
                    owner = f.read().strip()
            except OSError:
                pass
            owner = owner if re.fullmatch(r"[A-Za-z0-9_-]+", owner or "") else ""
            for path in glob.glob(os.path.join(glob.escape(os.path.join(root, d)), glob.escape(prefix) + "*" + glob.escape(suffix))):
                name = os.path.basename(path)
                n = epoch_number(name, prefix, suffix)
                if n is not None:
                    rel = posixpath.join(d, name)
                    # every stage writes the same names: home keeps them per job, as the instance archives them
                    add(rel, posixpath.join(d, p["epoch_archive"], owner, name) if owner else rel, "epoch", owner or None, n)
            pattern = os.path.join(glob.escape(os.path.join(root, d, p["epoch_archive"])), "*", glob.escape(prefix) + "*" + glob.escape(suffix))
            for path in glob.glob(pattern):
                name, job = os.path.basename(path), os.path.basename(os.path.dirname(path))
                n = epoch_number(name, prefix, suffix)
                if n is not None:
                    rel = posixpath.join(d, p["epoch_archive"], job, name)
                    add(rel, rel, "epoch", job, n)
    gated = {}
    for name, output in job_list:
        add(output, output, "output", name)
        gated[output] = name
    for pattern in p["globs"]:
        for path in glob.glob(os.path.join(glob.escape(root), pattern)):
            add(os.path.relpath(path, root).replace(os.sep, "/"), os.path.relpath(path, root).replace(os.sep, "/"), "log"
                if path.endswith(".log") else "file")

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
        if src in gated:
            state = read_status(os.path.join(root, p["status_dir"], gated[src] + ".status"))
            if state is not None and state not in DONE_STATES:
                status = f"{p['status_dir']}/{gated[src]}.status"
                skipped.append({"src": src, "reason": f"job {gated[src]} is not done ({status}: state={state or '?'})"})
                continue
        k = p["known"].get(it["dest"])
        if k and len(k) == 2 and k[0] == st.st_size and k[1] == st.st_mtime_ns:
            home += 1
            continue
        it.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        files.append(it)
    files.sort(key=lambda i: (i["mtime_ns"], i["src"]))
    return files, skipped, home


def digest(root, paths):
    out = {}
    for rel in paths:
        path = os.path.join(root, rel)
        try:
            st1 = os.stat(path)
            d = sha256_file(path)
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
            "phase03": {"type": "dict", "default": {}},
            "curriculum": {"type": "dict", "default": {}},
            "globs": {"type": "list", "elements": "str", "default": []},
            "stable_s": {"type": "int", "default": 60},
            "status_dir": {"type": "str", "default": "logs"},
            "epoch_owner_file": {"type": "str", "default": ".volt-epochs"},
            "epoch_archive": {"type": "str", "default": "epochs"},
            "known": {"type": "dict", "default": {}},
            "paths": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    result = {"changed": False, "root": root, "root_exists": os.path.isdir(root), "rsync": bool(shutil.which("rsync")),
              "files": [], "waiting": [], "home": 0, "digests": {}}
    if p["mode"] == "digest":
        result["digests"] = digest(root, p["paths"])
    elif result["root_exists"]:
        try:
            result["files"], result["waiting"], result["home"] = scan(p, time.time())
        except (TypeError, AttributeError, ValueError) as e:
            module.fail_json(msg=f"backup: cannot read the jobs from volt_phase03/volt_curriculum ({e})", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
