"""The controller's handle on roles/volt_fileops/module_utils/volt_fileops.py: the one digest scheme, atomic write
and walk. Ansible ships that file to the instance with the modules that import it; the controller loads the very
same file here, so the two ends cannot drift apart. (The package lives beside its roles: the install is editable.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[1] / "roles" / "volt_fileops" / "module_utils" / "volt_fileops.py"


def _load():
    name = "volt_ansible._volt_fileops"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_m = _load()

DIGEST_CHUNK = _m.DIGEST_CHUNK
READ_BLOCK = _m.READ_BLOCK
FILE_ALGO = _m.FILE_ALGO
DIR_ALGO = _m.DIR_ALGO
PARTIAL_DIR = _m.PARTIAL_DIR
hash_workers = _m.hash_workers
digest_files = _m.digest_files
file_digest = _m.file_digest
plain_sha256 = _m.plain_sha256
dir_digest = _m.dir_digest
walk_files = _m.walk_files
path_digest = _m.path_digest
stat_signature = _m.stat_signature
atomic_path = _m.atomic_path
atomic_write = _m.atomic_write
write_if_changed = _m.write_if_changed
