"""cuda_check's one-round-trip writer of the CUDA environment (run as `python3 -c <this> <json>`; stdlib only).

Input (argv[1], JSON): {profile: {path, content}, environment: {path, vars: {KEY: VALUE}}, ld_so_conf: {path, content}
or null, check: bool}. Writes the profile script and the ld.so.conf file when their content differs (root-owned,
0644, a temp file renamed over the old one); in the environment file, replaces the last KEY=... line of each key or
appends one, leaving every other line as it was; runs ldconfig when the ld.so.conf file changed. With check, only
reports. Prints JSON: the paths it changed (or would change).
"""

import json
import os
import re
import subprocess
import sys

cfg = json.loads(sys.argv[1])
check = cfg["check"]
changed = []


def read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write(path, content):
    if read(path) == content and (os.stat(path).st_mode & 0o7777) == 0o644:
        return False
    if not check:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        os.replace(tmp, path)
    changed.append(path)
    return True


def set_vars(text, values):
    lines = (text or "").splitlines()
    for key, value in values.items():
        line = f"{key}={value}"
        hits = [i for i, old in enumerate(lines) if re.match(rf"{re.escape(key)}=", old)]
        if hits:
            lines[hits[-1]] = line
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


write(cfg["profile"]["path"], cfg["profile"]["content"])
env = cfg["environment"]
write(env["path"], set_vars(read(env["path"]), env["vars"]))
ld = cfg.get("ld_so_conf")
if ld and write(ld["path"], ld["content"]) and not check:
    subprocess.run(["ldconfig"], check=True)
print(json.dumps(changed))
