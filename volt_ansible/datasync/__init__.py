"""The data the training jobs need, on the controller: manifest, pre-flight, and the transfer driver of roles/data_sync.

- `check()` is the pre-flight behind `volt-ansible check` (before renting); `preflight()` is the same on a volt_data;
- `python -m volt_ansible.datasync plan | sync | status` is what the role runs (see __main__);
- the instance side (probe, verify, markers) lives in the role (roles/data_sync/module_utils/data_sync_remote.py).

Digests are volt_ansible.fileops' (the same file the instance hashes with): "sha256t", a SHA-256 per 64 MiB chunk, then
a SHA-256 over the size and the chunk digests, on every core at once. The controller caches digests by path + size +
mtime in `<VOLT_DIR>/data-manifest.json`, so a file is hashed once; the instance writes `<root>/.volt-sync/<item>.verified`
(the digest) and a `.stat` signature beside it, so a second run re-hashes nothing that did not change.
"""

from volt_ansible.datasync.driver import Driver
from volt_ansible.datasync.manifest import (
    MANIFEST_NAME,
    SYNC_DIR,
    DigestCache,
    Item,
    Manifest,
    job_paths,
    parse_manifest,
)
from volt_ansible.datasync.preflight import Report, check, human, preflight
from volt_ansible.datasync.status import status, stop_driver
from volt_ansible.datasync.transport import local_rsync, rsync_capabilities, ssh_argv

__all__ = ["MANIFEST_NAME", "SYNC_DIR", "DigestCache", "Driver", "Item", "Manifest", "Report", "check", "human",
           "job_paths", "local_rsync", "parse_manifest", "preflight", "rsync_capabilities", "ssh_argv", "status",
           "stop_driver"]
