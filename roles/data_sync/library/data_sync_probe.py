#!/usr/bin/python
"""data_sync_probe: what the instance has before anything moves (reads only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: data_sync_probe
short_description: Free disk, rsync, and the data_sync items already verified on the instance
description:
  - For each item, whether its C(<root>/.volt-sync/<name>.verified) marker holds the item's digest and its C(.stat)
    signature still matches the copy at C(<root>/<dest>) (then it is not sent again); the bytes the others will land;
    the free disk where C(root) is (or would be); the jobs already marked ready; the rsync version and zstd support.
  - Reads only: nothing is created, not even C(root).
options:
  root:
    description: The directory the items' dests are relative to (volt_data.root_remote).
    type: path
    required: true
  items:
    description: The plan's items (name, dest, kind, digest, size).
    type: list
    elements: dict
    required: true
  reverify:
    description: Trust no marker (every item is hashed again after its transfer).
    type: bool
    default: false
  rsync_min_version:
    description: The oldest rsync the transfer works with (x.y.z).
    type: str
    default: 3.2.3
author: volt-ansible
"""

RETURN = r"""
free_bytes:
  description: Free bytes on the filesystem of root (or of its nearest existing parent, free_path).
  returned: always
  type: int
valid:
  description: Names of the items verified and unchanged since.
  returned: always
  type: list
need_bytes:
  description: Bytes the other items will land (an item whose copy of the same size is there counts 0).
  returned: always
  type: int
ready:
  description: Jobs whose .ready marker exists.
  returned: always
  type: list
rsync:
  description: "{version, ok (at least rsync_min_version), zstd}"
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.data_sync_remote import probe  # noqa: E402


def main() -> None:
    module = AnsibleModule(argument_spec={
        "root": {"type": "path", "required": True},
        "items": {"type": "list", "elements": "dict", "required": True},
        "reverify": {"type": "bool", "default": False},
        "rsync_min_version": {"type": "str", "default": "3.2.3"},
    }, supports_check_mode=True)
    p = module.params
    module.exit_json(changed=False, **probe(p["root"], p["items"], p["reverify"], p["rsync_min_version"]))


if __name__ == "__main__":
    main()
