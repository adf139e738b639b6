"""training_tmux's one-round-trip look at the instance (run as `python3 -c <this> <json>`; stdlib only).

Input (argv[1], JSON): {dest, session, jobs: [{name, status, script, output, needs: [paths], previous_output, epoch}]}.
Prints JSON: {dest, dest_path, tmux, windows: {name: dead}, jobs: {name: {status, alive, output, missing,
previous_output, epochs, owner}}}. Paths are relative to dest. Reads only; changes nothing.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

cfg = json.loads(sys.argv[1])
out = {"dest": os.path.isdir(cfg["dest"]), "dest_path": cfg["dest"], "tmux": bool(shutil.which("tmux")), "windows": {}, "jobs": {}}
if out["dest"]:
    os.chdir(cfg["dest"])


def read_status(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return {}


def alive(status, script):
    """The job's process (pid in its status file) still runs, and it is this job's script (not a reused pid)."""
    try:
        pid = int(status.get("pid", ""))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (ValueError, OSError):
        return False
    return script in (a.decode(errors="replace") for a in argv)


for job in cfg["jobs"]:
    st = read_status(job["status"])
    res = {
        "status": st,
        "alive": out["dest"] and alive(st, job["script"]),
        "output": bool(job.get("output")) and os.path.isfile(job["output"]),
        "missing": [p for p in job.get("needs", []) if not (os.path.isfile(p) and (p != job.get("bin") or os.access(p, os.X_OK)))],
        "previous_output": bool(job.get("previous_output")) and os.path.isfile(job["previous_output"]),
        "epochs": [],
        "owner": "",
    }
    ep = job.get("epoch")
    if ep and out["dest"]:
        pat = re.compile(re.escape(ep["prefix"]) + r"(\d+)" + re.escape(ep["suffix"]) + "$")
        res["epochs"] = sorted(int(m.group(1)) for p in glob.glob(ep["glob"]) if (m := pat.match(os.path.basename(p))))
        try:
            with open(ep["owner"], encoding="utf-8") as f:
                res["owner"] = f.read().strip()
        except OSError:
            pass
    out["jobs"][job["name"]] = res

if out["tmux"]:
    proc = subprocess.run(["tmux", "list-windows", "-t", "=" + cfg["session"], "-F", "#{window_name}\t#{pane_dead}"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        out["windows"] = {n: d == "1" for n, _, d in (ln.partition("\t") for ln in proc.stdout.splitlines())}

print(json.dumps(out))
