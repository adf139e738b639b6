"""The wire: the one place the data_sync rsync and remote command lines are built (ssh from volt_ansible.ssh.argv),
what rsync's exit codes and --stats mean, and which rsync the controller has."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

from volt_ansible import ssh
from volt_ansible.datasync.manifest import SYNC_DIR
from volt_ansible.fileops import PARTIAL_DIR

# rsync exit codes that mean the connection, not the data, failed: retried (and resumed).
RSYNC_NETWORK_RC = {10, 12, 20, 30, 35, 255}
RSYNC_MIN_VERSION = (3, 2, 3)  # --compress-choice=zstd and --mkpath
MUX_BELOW_BYTES = 64 << 20  # items smaller than this share the driver's SSH connection
# Where the role installs the instance side (roles/data_sync module_utils: data_sync_remote.py + volt_fileops.py).
REMOTE_LIB = f"{SYNC_DIR}/lib/data_sync_remote.py"


# data_sync's own keepalive (ssh.argv's default is 15 s x 4, a minute): a link that goes silent (no RST, nothing
# arrives) is noticed by ssh after about KEEPALIVE_S x KEEPALIVE_COUNT (ServerAliveInterval / ServerAliveCountMax),
# and by rsync --timeout (data_sync_io_timeout_s), whichever is first; the driver's retry then stops the instance's
# rsync left from that connection (Driver._reap: it keeps its partial file), and resumes from it.
KEEPALIVE_S = 5
KEEPALIVE_COUNT = 3


def ssh_argv(conn: dict, control: str | None = None, master: bool = True, keepalive: tuple[int, int] | None = None) -> list[str]:
    """ssh with the inventory's connection: a data connection of its own per transfer (parallel items = parallel TCP
    streams, each with its own SSH channel window), or the driver's multiplexed control connection for short commands.
    keepalive: (ServerAliveInterval, ServerAliveCountMax), first on the line (ssh keeps an option's first value)."""
    interval, count = keepalive or (KEEPALIVE_S, KEEPALIVE_COUNT)
    argv = ssh.argv(conn, control=control, master=master, keepalive=False)
    return [argv[0], "-o", f"ServerAliveInterval={int(interval)}", "-o", f"ServerAliveCountMax={int(count)}", *argv[1:]]


def keepalive_of(opts: dict) -> tuple[int, int]:
    return int(opts.get("keepalive_s", KEEPALIVE_S)), int(opts.get("keepalive_count", KEEPALIVE_COUNT))


def refused(conn: dict, stderr: str) -> str | None:
    """ssh.host_key_line for this connection: a changed host key is never retried."""
    return ssh.host_key_line(stderr, f"the instance at {conn.get('host')}:{conn.get('port') or 22}")


def remote_argv(conn: dict, control: str, python: str, root: str, command: str, args: dict,
                keepalive: tuple[int, int] | None = None) -> list[str]:
    """`python3 <root>/.volt-sync/lib/data_sync_remote.py <command> '<json>'` on the instance, over the control connection."""
    line = shlex.join([python, "-B", f"{root}/{REMOTE_LIB}", command, json.dumps(args)])
    return [*ssh_argv(conn, control, keepalive=keepalive), conn["host"], line]


def rsync_argv(conn: dict, control: str, root: str, it: dict, opts: dict, force: bool, level: int | None | str = "default") -> list[str]:
    """rsync of one plan item to root/dest on the instance, resumable (--partial-dir); zstd when the item compresses, at
    `level` (the adaptive decision: an int, or None for raw) or else the configured data_sync_zstd_level."""
    host = conn["host"]
    host = f"[{host}]" if ":" in host else host
    argv = ["rsync", "-rt", "--copy-links", "-s", f"--partial-dir={PARTIAL_DIR}", "--mkpath", "--stats",
            f"--timeout={int(opts.get('io_timeout_s', 15))}"]
    if level == "default":
        level = int(opts.get("zstd_level", 3))
    if it.get("compress_on") and level is not None:
        argv += ["--compress", "--compress-choice=zstd", f"--compress-level={int(level)}"]
    if int(opts.get("bwlimit_kbps", 0)) > 0:
        argv.append(f"--bwlimit={int(opts['bwlimit_kbps'])}")
    if force:
        argv.append("--ignore-times")  # a verified mismatch: compare every block again, send what differs
    dest = f"{root}/{it['dest']}"
    src = it["src"]
    if it["kind"] == "dir":
        argv.append("--delete")  # the dir's digest covers exactly the source's files
        src, dest = src + "/", dest + "/"
    # small items ride the driver's control connection (no SSH handshake each); big ones get a
    # connection of their own (a TCP stream and an SSH channel window each)
    ka = keepalive_of(opts)
    via = ssh_argv(conn, control, master=False, keepalive=ka) if it["size"] < MUX_BELOW_BYTES else ssh_argv(conn, keepalive=ka)
    return [*argv, "-e", shlex.join(via), src, f"{host}:{dest}"]


def parse_stats(text: str) -> dict:
    """The byte counts of rsync --stats."""

    def num(label: str) -> int | None:
        m = re.search(rf"^{label}: ([\d,.]+)", text, re.M)
        return int(m.group(1).replace(",", "").replace(".", "")) if m else None

    return {"sent": num("Total bytes sent"), "literal": num("Literal data"), "matched": num("Matched data"),
            "files_transferred": num("Number of regular files transferred")}


def rsync_capabilities(version_output: str) -> dict:
    m = re.search(r"version\s+v?(\d+)\.(\d+)\.(\d+)", version_output)
    version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    return {"version": ".".join(map(str, version)), "ok": version >= RSYNC_MIN_VERSION, "zstd": bool(re.search(r"\bzstd\b", version_output))}


def local_rsync() -> dict:
    path = shutil.which("rsync")
    if not path:
        return {"version": "", "ok": False, "zstd": False}
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return rsync_capabilities(out)
