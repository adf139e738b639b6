#!/usr/bin/python
"""cuda_check_environment: the CUDA environment for every kind of shell, written in one task."""

from __future__ import annotations

import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.volt_fileops import write_if_changed

DOCUMENTATION = r"""
---
module: cuda_check_environment
short_description: Write the CUDA profile script, the pam_env variables and the loader entry in one round trip
description:
  - Writes C(profile) and C(ld_so_conf) when their content or mode differs (0644, root-owned when run as root,
    atomically: volt_fileops.write_if_changed).
  - In C(environment.path), replaces the last C(KEY=...) line of each key of C(environment.vars) or appends one,
    leaving every other line as it was.
  - Runs ldconfig when the ld.so.conf file changed. In check mode it only reports.
options:
  profile:
    description: "{path, content}: the script login shells source."
    type: dict
    required: true
  environment:
    description: "{path, vars: {KEY: VALUE}}: the pam_env file and the lines to set in it."
    type: dict
    required: true
  ld_so_conf:
    description: "{path, content}: the ld.so.conf.d entry; omitted to skip."
    type: dict
author: volt-ansible
"""

RETURN = r"""
paths:
  description: The files it changed (or would change, in check mode).
  type: list
  elements: str
  returned: always
"""

MODE = 0o644


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def set_vars(text: str | None, values: dict) -> str:
    lines = (text or "").splitlines()
    for key, value in values.items():
        line = f"{key}={value}"
        hits = [i for i, old in enumerate(lines) if re.match(rf"{re.escape(key)}=", old)]
        if hits:
            lines[hits[-1]] = line
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec={"profile": {"type": "dict", "required": True}, "environment": {"type": "dict", "required": True},
                       "ld_so_conf": {"type": "dict"}},
        supports_check_mode=True,
    )
    check = module.check_mode
    owner = (0, 0) if os.geteuid() == 0 else None
    changed = []

    def write(path: str, content: str) -> bool:
        if not check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if write_if_changed(path, content, mode=MODE, owner=owner, check=check):
            changed.append(path)
            return True
        return False

    p = module.params
    try:
        write(p["profile"]["path"], p["profile"]["content"])
        env = p["environment"]
        write(env["path"], set_vars(read(env["path"]), env["vars"]))
        ld = p["ld_so_conf"]
        if ld and write(ld["path"], ld["content"]) and not check:
            subprocess.run(["ldconfig"], check=True)
    except (OSError, subprocess.CalledProcessError, KeyError) as e:
        module.fail_json(msg=f"cuda_check: writing the CUDA environment failed: {e}", paths=changed)
    module.exit_json(changed=bool(changed), paths=changed)


if __name__ == "__main__":
    main()
