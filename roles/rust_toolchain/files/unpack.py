"""rust_toolchain's one-round-trip fetch of a toolchain archive (run as `python3 -c <this> <json>`; stdlib only).

Input (argv[1], JSON): {url, sha256, staging, zstd: bool, remove: [paths]}. Empties `staging`, streams `url`
(https://, http://, file://) into tar while hashing it, so the download and the unpack overlap as in the
guide's `curl | sh`. Until its sha256 matches, the archive is unpacked only into a private directory beside
`staging` (mode 0700, `<staging>.unverified-*`: no other user can reach it, nothing is run from it, no PATH names
it); only a verified archive becomes `staging` (one rename, then 0755), so `staging` (which archive_finish.yml swaps
into the prefix) never holds an unverified file, not even while the download runs or after a killed run. On a
mismatch or any error the private directory is removed and the one-line reason goes to stderr (exit 1). Then runs
the verified rustc and cargo, from `staging`.
The paths in `remove` (a pushed copy of the archive, an older role's download) are removed in every case.
Prints JSON: {sha256, rustc, cargo, bin}: the digest, each tool's {rc, out}, the names in staging/bin.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

cfg = json.loads(sys.argv[1])
staging = os.path.abspath(cfg["staging"])
unverified = None  # the private directory the archive is unpacked into until its digest matches


def fail(msg):
    if unverified:
        shutil.rmtree(unverified, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    sys.exit(f"rust_toolchain: {msg}")


def version(tool):
    try:
        p = subprocess.run([os.path.join(staging, "bin", tool), "--version"], capture_output=True, text=True, timeout=120)
        return {"rc": p.returncode, "out": (p.stdout or p.stderr).strip()}
    except OSError as e:
        return {"rc": -1, "out": str(e)}


def unpack():
    """Stream the archive into tar, hashing it on the way; (sha256, tar's exit code, tar's last error line)."""
    digest = hashlib.sha256()
    # tar's stderr goes to a file, not a pipe: tar must never block on it while it is being fed
    with tempfile.TemporaryFile() as errors:
        tar = subprocess.Popen(["tar", "--zstd" if cfg["zstd"] else "-z", "--no-same-owner", "-xf", "-", "-C", unverified],
                               stdin=subprocess.PIPE, stderr=errors, bufsize=0)
        try:
            with urllib.request.urlopen(cfg["url"], timeout=60) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    tar.stdin.write(chunk)
        except BrokenPipeError:
            pass  # tar stopped early: its own error is read below
        except OSError as e:
            tar.kill()
            tar.wait()
            fail(f"downloading {cfg['url']} failed: {e}")
        with contextlib.suppress(BrokenPipeError):
            tar.stdin.close()
        rc = tar.wait()
        errors.seek(0)
        lines = errors.read().decode(errors="replace").strip().splitlines()
    return digest.hexdigest(), rc, lines[-1] if lines else f"tar exit {rc}"


try:
    shutil.rmtree(staging, ignore_errors=True)
    parent, name = os.path.split(staging)
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):  # what a killed run left: never verified, never used
        if stale.startswith(name + ".unverified-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    unverified = tempfile.mkdtemp(prefix=name + ".unverified-", dir=parent)  # 0700
    sha256, rc, err = unpack()
    if rc != 0:
        fail(f"unpacking {cfg['url']} failed: {err}")
    if sha256 != cfg["sha256"].lower():
        fail(f"checksum mismatch: {cfg['url']} has sha256 {sha256}, expected {cfg['sha256']}; nothing was installed")
    os.rename(unverified, staging)  # verified: only now does anything of it reach the staging path
    unverified = None
    os.chmod(staging, 0o755)
    bin_dir = os.path.join(staging, "bin")
    print(json.dumps({"sha256": sha256, "rustc": version("rustc"), "cargo": version("cargo"),
                      "bin": sorted(os.listdir(bin_dir)) if os.path.isdir(bin_dir) else []}))
finally:
    if unverified:  # an unexpected error: what was unpacked is never used
        shutil.rmtree(unverified, ignore_errors=True)
    for path in cfg.get("remove", []):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
