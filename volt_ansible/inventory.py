"""Ansible inventory built from `.volt/state.json`.

Standard library only: `inventory/volt_state.py` imports this under whatever python3 runs
plain `ansible-playbook`, with or without the project's virtualenv (volt_ansible.ssh is stdlib-only too).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.ssh import check_host, key_path, pinning

GROUP = "volt"


def host_name(instance_id: int) -> str:
    # One name per instance: facts and SSH control sockets never carry over to a replacement.
    return f"volt-{instance_id}"


def build(volt_dir: Path) -> dict:
    inv: dict = {"_meta": {"hostvars": {}}, GROUP: {"hosts": []}}
    state_file = volt_dir / "state.json"
    if not state_file.exists():
        return inv
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"volt inventory: {state_file} is corrupt ({e}); run `volt-ansible status` for the fix") from None
    inst = state.get("instance")
    if not inst or not inst.get("ssh_port"):
        return inv
    name = host_name(inst["id"])
    try:
        host = check_host(inst.get("ssh_host", ""))
    except VoltError as e:
        raise SystemExit(f"volt inventory: {name}: {e}") from None
    key = key_path(volt_dir)
    inv[GROUP]["hosts"].append(name)
    inv["_meta"]["hostvars"][name] = {
        "ansible_host": host,
        "ansible_port": inst["ssh_port"],
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        # Pinned per instance: this campaign's known_hosts only, strict checking, never global "no"; the
        # operator's ssh agent never goes to a rented host, whatever ~/.ssh/config says.
        "ansible_ssh_common_args": shlex.join(pinning(volt_dir)),
        "volt_instance_id": inst["id"],
        "volt_backend": inst.get("backend", ""),
        "volt_gpu_name": inst.get("gpu_name", ""),
        **inst.get("host_vars", {}),
    }
    return inv


def print_inventory(inv: dict, args: list[str]) -> int:
    """The script-inventory protocol: --list, or --host NAME."""
    if args[:1] == ["--host"]:
        print(json.dumps(inv["_meta"]["hostvars"].get(args[1] if len(args) > 1 else "", {})))
    else:
        print(json.dumps(inv, indent=2))
    return 0
