#!/usr/bin/python
"""training_tmux_files: make the job directories, write the job scripts, the chain and the launcher, and start the jobs,
in one task."""

from __future__ import annotations

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.volt_fileops import write_if_changed

DOCUMENTATION = r"""
---
module: training_tmux_files
short_description: Make directories, write files whose content or mode differs, then run the launches, in one round trip
description:
  - Makes each directory of C(dirs) that is missing (mode 0755), then writes each file of C(files) whose content or
    mode differs, atomically (volt_fileops.write_if_changed: a running job never reads a half-written script).
  - Then runs each command of C(launch) in turn (argv, no shell, stdin closed), all of them whatever each one's exit
    code; C(launched) says how each ended.
  - Returns the paths it changed (directories made, files written).
options:
  dirs:
    description: Directories to make (taken as written, no ~ or $VAR expansion).
    type: list
    elements: str
    default: []
  files:
    description: "Files to write: [{path, content, mode}] (mode an octal string such as C(0755))."
    type: list
    elements: dict
    default: []
  launch:
    description: "Commands to run once the files are written: [{window, argv}] (window only names the result)."
    type: list
    elements: dict
    default: []
author: volt-ansible
"""

RETURN = r"""
paths:
  description: The directories made and the files written.
  type: list
  elements: str
  returned: always
launched:
  description: "Per command of launch, in order: {window, rc, stdout, stderr}."
  type: list
  elements: dict
  returned: always
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={"dirs": {"type": "list", "elements": "str", "default": []},
                       "files": {"type": "list", "elements": "dict", "default": []},
                       "launch": {"type": "list", "elements": "dict", "default": []}},
        supports_check_mode=False,
    )
    changed = []
    try:
        for d in module.params["dirs"]:
            if not os.path.isdir(d):
                os.makedirs(d, mode=0o755, exist_ok=True)
                changed.append(d)
        for f in module.params["files"]:
            if write_if_changed(f["path"], f["content"], mode=int(str(f["mode"]), 8)):
                changed.append(f["path"])
    except (OSError, KeyError, ValueError) as e:
        module.fail_json(msg=f"training_tmux: writing the job scripts failed: {e}", paths=changed)
    launched = []
    for unit in module.params["launch"]:
        try:
            proc = subprocess.run([str(a) for a in unit["argv"]], stdin=subprocess.DEVNULL, capture_output=True, encoding="utf-8", errors="replace")
            launched.append({"window": unit.get("window", ""), "rc": proc.returncode, "stdout": proc.stdout.rstrip("\r\n"),
                             "stderr": proc.stderr.rstrip("\r\n")})
        except (OSError, KeyError) as e:
            launched.append({"window": unit.get("window", ""), "rc": 127, "stdout": f"starting it failed: {e}", "stderr": ""})
    module.exit_json(changed=bool(changed or launched), paths=changed, launched=launched)


if __name__ == "__main__":
    main()
