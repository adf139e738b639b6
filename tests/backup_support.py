"""What the backup tests share: the role's instance-side module and filter plugin loaded here, the spec, and the
digests both ends compute (test_home.py: the pure-Python half; test_backup.py: the role on SSH test hosts)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import yaml
from conftest import REPO

from volt_ansible import fileops


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# backup_scan imports ansible.module_utils.volt_fileops: on the instance Ansible ships it; here it is the controller's copy
sys.modules.setdefault("ansible.module_utils.volt_fileops", fileops)
backup_scan = _load("backup_scan", REPO / "roles/backup/library/backup_scan.py")
filters = _load("backup_filters", REPO / "roles/backup/filter_plugins/backup.py")

SPEC = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
PLAYBOOK = REPO / "playbooks/backup.yml"


def sha(data: bytes) -> str:
    """The digest both ends compute (volt_fileops' sha256t) of these bytes."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return fileops.file_digest(f.name)


def legacy_sha(data: bytes) -> str:
    """A digest as home.json recorded it before sha256t: plain SHA-256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
