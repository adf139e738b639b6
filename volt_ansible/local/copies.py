"""copy_direct in the local double: one instance's path to another's, host to host, as Vast does it (`vastai copy
C.1:/src C.2:/dst`, PUT /api/v0/commands/copy_direct/). It goes between the containers' filesystems on this machine
(podman mount, rsync -a: modes, mtimes, owners and links kept), never through the operator's link, and works while the
source is stopped (its disk stays). As on Vast it is asynchronous: the call answers at once, a detached process copies.
How a client learns it finished: the destination's status_msg (the CLI: "check instance status bar for progress
updates"); the test hook copies() also gives the bytes copied and when it finished."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import paths

# dst paths that break the instance's ssh folder (vastai/api/storage.py copy's docstring)
FORBIDDEN_DST = ("/", "/root")


def parse_id(value: object) -> int | None:
    """'C.123', 123 or '123' -> 123; anything else (local, volumes V.n, cloud services) -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:C\.)?(\d+)", str(value or "").strip())
    return int(m.group(1)) if m else None


def check(body: dict) -> tuple[int, int, str, str] | str:
    """(src_id, dst_id, src_path, dst_path), or why the request is refused."""
    src, dst = parse_id(body.get("src_id")), parse_id(body.get("dst_id"))
    if src is None or dst is None:
        return (f"src_id {body.get('src_id')!r} / dst_id {body.get('dst_id')!r}: the local double copies between instances "
                "only (C.<id> or the bare id)")
    try:
        src_path, dst_path = paths.normal(body.get("src_path")), paths.normal(body.get("dst_path"))
    except VoltError as e:
        return str(e)
    if dst_path.rstrip("/") in ("", "/root") or dst_path in FORBIDDEN_DST:
        return f"dst_path {dst_path} refused: copying to / or /root breaks the instance's ssh folder; copy into a subdirectory"
    return src, dst, src_path, dst_path


def start(state_dir: Path, job_id: int) -> None:
    """The copy in a process of its own session: it finishes whatever happens to the caller (as Vast's does)."""
    log = state_dir / f"copy-{job_id}.log"
    with open(log, "wb") as err:
        subprocess.Popen([sys.executable, "-m", "volt_ansible.local.copies", str(state_dir), str(job_id)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def rsync(src_root: Path, dst_root: Path, src_path: str, dst_path: str) -> int:
    """rsync -a between the two mounted filesystems; returns the bytes of the files it transferred."""
    src = paths.on_host(src_root, src_path)
    dst = paths.on_host(dst_root, dst_path)
    proc = subprocess.run(["rsync", "-a", "--mkpath", "--stats", "--", src, dst], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or f"rsync exit {proc.returncode}").splitlines()
        first = next((ln for ln in lines if not ln.startswith("rsync error:")), lines[-1])  # the cause, not the summary
        raise VoltError(first.replace(str(src_root), "").replace(str(dst_root), ""))
    m = re.search(r"Total transferred file size: ([\d,]+)", proc.stdout)
    return int(m.group(1).replace(",", "")) if m else 0


def run(state_dir: Path, job_id: int) -> None:
    from volt_ansible.local.double import LocalVast

    double = LocalVast(state_dir)
    with double.store() as s:
        job = dict(s["copies"][str(job_id)])
        containers = {}
        for side in ("src_id", "dst_id"):
            inst = s["instances"].get(str(job[side]))
            containers[side] = inst["container"] if inst and not inst.get("destroyed") else None
    copied, error = 0, None
    try:
        if not all(containers.values()):
            raise VoltError("an instance of the copy was destroyed")
        with paths.mounted(containers["src_id"]) as src_root, paths.mounted(containers["dst_id"]) as dst_root:
            copied = rsync(src_root, dst_root, job["src_path"], job["dst_path"])
    except (VoltError, OSError, subprocess.SubprocessError) as e:
        error = str(e)
    with double.store() as s:
        rec = s["copies"][str(job_id)]
        rec.update(bytes=copied, finished_at=time.time(), ok=error is None, error=error)
        where = f"C.{rec['src_id']}:{rec['src_path']}"
        rec["status_msg"] = f"copy from {where} done ({copied} bytes)" if error is None else f"copy from {where} failed: {error}"
    (state_dir / f"copy-{job_id}.log").unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m volt_ansible.local.copies STATE_DIR JOB_ID")
    run(Path(argv[0]), int(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
