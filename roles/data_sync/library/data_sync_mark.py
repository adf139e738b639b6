#!/usr/bin/python
"""data_sync_mark: before a transfer, forget the markers of what is about to move, mark the jobs already complete,
and install the instance side the background driver runs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: data_sync_mark
short_description: Forget the markers of the items about to be sent, write the .ready of the jobs already complete
description:
  - Removes C(<root>/.volt-sync/<item>.verified) and C(.stat) of every item in C(send), and the C(<job>.ready) of
    every job needing one of them, so no marker describes a copy that is about to be rewritten.
  - Writes C(<job>.ready) for every job whose items all carry a C(.verified) marker with the digest in C(digests).
  - With C(install), puts the instance side of the transfer driver (data_sync_remote.py and volt_fileops.py) in
    C(<root>/.volt-sync/lib/), written only when it differs.
options:
  root:
    description: The directory the items' dests are relative to (volt_data.root_remote).
    type: path
    required: true
  send:
    description: Names of the items about to be sent.
    type: list
    elements: str
    default: []
  jobs:
    description: "{job: [item names]}"
    type: dict
    required: true
  digests:
    description: "{item name: digest} of the enabled items."
    type: dict
    required: true
  install:
    description: Install the driver's instance side too.
    type: bool
    default: false
author: volt-ansible
"""

RETURN = r"""
removed:
  description: The marker files removed.
  returned: always
  type: list
ready:
  description: The jobs whose items are all verified.
  returned: always
  type: list
written:
  description: The .ready markers written now.
  returned: always
  type: list
installed:
  description: The files of .volt-sync/lib/ written now.
  returned: always
  type: list
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.data_sync_remote import install, prepare  # noqa: E402


def main() -> None:
    module = AnsibleModule(argument_spec={
        "root": {"type": "path", "required": True},
        "send": {"type": "list", "elements": "str", "default": []},
        "jobs": {"type": "dict", "required": True},
        "digests": {"type": "dict", "required": True},
        "install": {"type": "bool", "default": False},
    })
    p = module.params
    res = prepare({"root": p["root"], "send": p["send"], "jobs": p["jobs"], "digests": p["digests"]})
    res["installed"] = install(p["root"]) if p["install"] else []
    module.exit_json(changed=bool(res["removed"] or res["written"] or res["installed"]), **res)


if __name__ == "__main__":
    main()
