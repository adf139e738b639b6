"""A paused instance's disk moved to its replacement host to host (Vast's copy_direct: works while the source is
stopped, never over the operator's link): the repository with its built binaries and build stamp, the data, every epoch
checkpoint (newer than home's too) and the logs. What the copy brings is then checked by the recovery's own steps (the
data by digest, the files home by digest, the build by its stamp); only what it could not bring comes from home."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass

from volt_ansible import ssh
from volt_ansible import state as state_mod
from volt_ansible.backends import Backend
from volt_ansible.errors import VoltError
from volt_ansible.state import Instance

POLL_S = 2.0


@dataclass
class Rescued:
    bytes: int  # what the source held under the path (du -sb on the stopped instance)
    seconds: float


def _du(text: str) -> int | None:
    m = re.match(r"\s*(\d+)\s", text + " ")
    return int(m.group(1)) if m else None


def _remote_bytes(inst: Instance, path: str) -> int | None:
    """du -sb of path on the (running) destination over SSH; None when it cannot be read yet."""
    cmd = ssh.command(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port)
    cmd[1:1] = ["-o", "BatchMode=yes"]
    cmd.append(f"du -sb -- {shlex.quote(path)}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return _du(proc.stdout) if proc.returncode == 0 else None


def copy_disk(backend: Backend, src_id: int, dst: Instance, path: str, timeout_s: float, progress) -> Rescued:
    """Copy `path` (a directory) of instance src_id onto dst at the same path; wait until it is there: the destination's
    status says the copy is done, or its size equals the source's twice in a row. VoltError when it fails or times out."""
    t0 = time.monotonic()
    want = _du(backend.execute(src_id, f"du -sb {shlex.quote(path)}"))  # a spec value: one quoted word
    if want is None:
        raise VoltError(f"the size of {path} on instance {src_id} could not be read (du through the Vast API)")
    progress(f"copying {path} ({want / 1e6:.1f} MB) from instance {src_id} to {dst.id}, host to host")
    backend.copy_direct(src_id, dst.id, path.rstrip("/") + "/", path.rstrip("/") + "/")
    same = 0
    while time.monotonic() - t0 < timeout_s:
        time.sleep(POLL_S)
        msg = ((backend.show(dst.id) or {}).get("status_msg") or "").lower()
        if "copy" in msg and "fail" in msg:
            raise VoltError(f"the copy from instance {src_id} failed: {msg}")
        if "copy" in msg and "done" in msg:
            return Rescued(want, time.monotonic() - t0)
        have = _remote_bytes(dst, path)
        same = same + 1 if have is not None and have >= want else 0
        if same >= 2:
            return Rescued(want, time.monotonic() - t0)
    raise VoltError(f"the copy of {path} from instance {src_id} did not finish within {timeout_s:g} s")
