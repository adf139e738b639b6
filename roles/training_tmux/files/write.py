"""training_tmux's one-round-trip writer of its scripts (run as `python3 -c <this> <json>`; stdlib only).

Input (argv[1], JSON): {dirs: [paths], files: [{path, content, mode}]}. Makes the directories, then writes each
file whose content or mode differs (a temp file renamed over it: a running job never reads a half-written
script). Prints JSON: the paths it changed (dirs made, files written).
"""

import json
import os
import sys

cfg = json.loads(sys.argv[1])
changed = []
for d in cfg["dirs"]:
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o755, exist_ok=True)
        changed.append(d)
for f in cfg["files"]:
    path, data, mode = f["path"], f["content"].encode(), int(f["mode"], 8)
    try:
        with open(path, "rb") as fh:
            same = fh.read() == data and (os.stat(path).st_mode & 0o7777) == mode
    except OSError:
        same = False
    if same:
        continue
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    changed.append(path)
print(json.dumps(changed))
