"""roles/rust_toolchain run for real on SSH test hosts (the decision logic: tests/test_rust_toolchain_logic.py).

The rustup method cannot reach static.rust-lang.org here, so its host test serves a fake rustup-init from
a file:// mirror inside the test host: that checks the URL the role builds, the rustup-init arguments, the
RUSTUP_* / CARGO_HOME environment, the checksum check, the wrappers and the update path, but not a real
rustup download.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

spec = importlib.util.spec_from_file_location("rust_toolchain_filters", REPO / "roles/rust_toolchain/filter_plugins/rust_toolchain.py")
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)

OLD_RUSTC = "rustc 1.80.0 (051478957 2024-07-21)"
NEW_RUSTC = "rustc 1.95.0 (59807616e 2026-04-14)"


# --- the role on real SSH test hosts ---------------------------------------------------------------------


def play(**role_vars) -> str:
    return yaml.safe_dump([{"name": "Rust toolchain", "hosts": "all", "gather_facts": False, "vars": role_vars,
                            "roles": ["rust_toolchain"]}], sort_keys=False)


def recap(proc: subprocess.CompletedProcess) -> dict[str, int]:
    m = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout)
    assert m, proc.stdout[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


def ssh(host, cmd: str) -> subprocess.CompletedProcess:
    """`ssh host CMD`: a non-login session with sshd's default PATH, nothing sourced (retried while sshd starts)."""
    argv = ["ssh", "-i", str(host.key), "-p", str(host.port), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", cmd]
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 255 or time.monotonic() > deadline:
            return proc
        time.sleep(0.2)


def fake(version_line: str) -> str:
    return f"#!/bin/sh\necho '{version_line}'\n"


@pytest.fixture
def ssh_host(make_host):
    """A test host whose sshd already answers (make_host returns as soon as the container runs)."""

    def factory():
        host = make_host()
        assert ssh(host, "true").returncode == 0, "sshd of the test host never answered"
        return host

    return factory


@pytest.fixture(scope="module")
def archive() -> Path:
    from volt_ansible.local import toolchain

    return toolchain.ensure_archive()


@pytest.fixture
def nowhere():
    """An inventory host nothing listens on: a task that reaches it fails UNREACHABLE."""
    from testhost import TestHost

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="vth-", dir="/tmp"))
    yield TestHost("rt-nowhere", port, workdir / "no_key", workdir)
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_bad_method_fails_argument_validation_before_any_remote_task(nowhere):
    proc = nowhere.playbook(play(rust_toolchain_method="foo"))
    assert proc.returncode != 0
    assert "Validating arguments against arg spec" in proc.stdout
    assert "value of rust_toolchain_method must be one of: rustup, archive, got: foo" in proc.stdout
    assert "UNREACHABLE" not in proc.stdout


@pytest.mark.parametrize("role_vars, expected", [
    ({"rust_toolchain_archive": "/nonexistent/rust-1.95.0.tar.zst"},
     "rust_toolchain_archive /nonexistent/rust-1.95.0.tar.zst does not exist on the controller"),
    ({}, "rust_toolchain_method is archive but rust_toolchain_archive is not set"),
    ({"rust_toolchain_archive": str(REPO / "README.md")}, f"rust_toolchain_archive {REPO / 'README.md'} is not a .tar.zst, .tar.gz or .tgz"),
], ids=["missing", "unset", "not-a-tarball"])
def test_bad_archive_fails_in_preflight_before_any_remote_task(nowhere, role_vars, expected):
    proc = nowhere.playbook(play(rust_toolchain_method="archive", **role_vars))
    assert proc.returncode != 0
    assert expected in " ".join(proc.stdout.split())
    assert "UNREACHABLE" not in proc.stdout


@pytest.mark.parametrize("role_vars, expected", [
    ({"rust_toolchain_prefix": "/usr/local"}, "an absolute directory of its own such as /opt/rust, since it is replaced as a whole (got /usr/local)"),
    ({"rust_toolchain_min_version": "1.x"}, 'rust_toolchain_min_version must look like "1.85" (got "1.x")'),
    ({"rust_toolchain_rustup_init_sha256": "abc"}, "rust_toolchain_rustup_init_sha256 must be empty or 64 hex digits"),
], ids=["prefix", "min-version", "sha256"])
def test_bad_settings_fail_in_preflight(nowhere, archive, role_vars, expected):
    proc = nowhere.playbook(play(rust_toolchain_method="archive", rust_toolchain_archive=str(archive), **role_vars))
    assert proc.returncode != 0
    assert expected in " ".join(proc.stdout.split())
    assert "UNREACHABLE" not in proc.stdout


@pytest.mark.podman
def test_archive_installs_over_an_old_rustc(ssh_host, archive):
    host = ssh_host()
    host.put(fake(OLD_RUSTC), "/usr/bin/rustc")
    host.put(fake("cargo 1.80.0 (376290515 2024-07-16)"), "/usr/bin/cargo")
    assert ssh(host, "rustc --version").stdout.strip() == OLD_RUSTC
    pb = play(rust_toolchain_method="archive", rust_toolchain_archive=str(archive), rust_toolchain_apt_packages=[])

    first = host.playbook(pb, check=True)
    assert "/usr/bin/rustc is rustc 1.80.0, older than 1.85: installing the archive's toolchain beside it" in first.stdout
    for tool in ("rustc", "cargo"):
        out = ssh(host, f"command -v {tool} && {tool} --version")
        assert out.returncode == 0, out.stderr
        path, version = out.stdout.strip().splitlines()
        assert path == f"/usr/local/bin/{tool}"
        assert rt.rust_toolchain_version_ok(version, "1.85"), version
    assert host.exec("/usr/bin/rustc --version").stdout.strip() == OLD_RUSTC  # the old one is left alone, shadowed
    assert host.exec("readlink /usr/local/bin/rustc").stdout.strip() == "/opt/rust/bin/rustc"

    again = host.playbook(pb, check=True)
    assert recap(again)["changed"] == 0
    assert "Copy the archive to the host" not in again.stdout  # the archive is not sent again

    # An old toolchain in the prefix itself is replaced by the archive's.
    host.put(fake(OLD_RUSTC), "/opt/rust/bin/rustc")
    update = host.playbook(pb, check=True)
    assert "/opt/rust/bin/rustc is rustc 1.80.0, older than 1.85: replacing it" in update.stdout
    assert rt.rust_toolchain_version_ok(ssh(host, "rustc --version").stdout, "1.85")
    assert not host.exec("ls -d /opt/rust.staging /opt/rust.old", check=False).stdout

    # Someone else's old rustc in /usr/local/bin is not overwritten: the role names it and fails.
    host.exec("rm /usr/local/bin/rustc")
    host.put(fake(OLD_RUSTC), "/usr/local/bin/rustc")
    shadowed = host.playbook(pb)
    assert shadowed.returncode != 0
    text = " ".join(shadowed.stdout.split())
    assert "rustc on the non-login PATH is /usr/local/bin/rustc (1.80.0), older than 1.85" in text
    assert "/usr/local/bin/rustc is not this role's, so it was left alone: remove it" in text
    assert host.exec("/usr/local/bin/rustc --version").stdout.strip() == OLD_RUSTC


@pytest.mark.podman
def test_rustup_refuses_an_old_rustc_it_does_not_manage(ssh_host):
    host = ssh_host()
    host.put(fake(OLD_RUSTC), "/usr/bin/rustc")
    proc = host.playbook(play(rust_toolchain_method="rustup", rust_toolchain_apt_packages=[]))
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert "Stop on a toolchain the role must not replace" in text
    assert "/usr/bin/rustc is rustc 1.80.0, older than 1.85 and is not managed by rustup" in text
    assert "remove it" in text and "rust_toolchain_method: archive" in text
    assert not host.exec("ls /root/.cargo /usr/local/bin/rustc 2>/dev/null", check=False).stdout  # nothing was installed


# A stand-in for rustup, served from a file:// mirror inside the test host. rustup-init and rustup log how
# they were run; the proxies print the version in $RUSTUP_HOME/fake-version (and fail without it).
FAKE_RUSTUP = r"""#!/bin/sh
set -eu
home=${RUSTUP_HOME:-$HOME/.rustup}
v=$(cat "$home/fake-version")
case "${0##*/}" in
  rustc|cargo|rustdoc) echo "${0##*/} $v (fake00000 2026-01-01)" ;;
  rustup)
    [ "${1:-}" = --version ] && { echo "rustup 1.28.2 (fake)"; exit 0; }
    echo "rustup $* | RUSTUP_HOME=${RUSTUP_HOME:-} CARGO_HOME=${CARGO_HOME:-}" \
      "RUSTUP_DIST_SERVER=${RUSTUP_DIST_SERVER:-} RUSTUP_UPDATE_ROOT=${RUSTUP_UPDATE_ROOT:-}" >> /var/log/fake-rustup.log
    case "${1:-}" in
      update) echo 1.95.0 > "$home/fake-version"; echo "  $2-x86_64-unknown-linux-gnu updated - rustc 1.95.0 (fake00000 2026-01-01)" ;;
      default) echo "info: default toolchain set to '$2-x86_64-unknown-linux-gnu'" >&2 ;;
    esac ;;
esac
"""
FAKE_RUSTUP_INIT = r"""#!/bin/sh
set -eu
echo "rustup-init $* | RUSTUP_HOME=$RUSTUP_HOME CARGO_HOME=$CARGO_HOME" \
  "RUSTUP_DIST_SERVER=$RUSTUP_DIST_SERVER RUSTUP_UPDATE_ROOT=$RUSTUP_UPDATE_ROOT" >> /var/log/fake-rustup.log
mkdir -p "$CARGO_HOME/bin" "$RUSTUP_HOME"
echo 1.95.0 > "$RUSTUP_HOME/fake-version"
cp /srv/fake-rustup "$CARGO_HOME/bin/rustup"
for t in cargo rustc rustdoc; do ln -f "$CARGO_HOME/bin/rustup" "$CARGO_HOME/bin/$t"; done
"""
MIRROR_ENV = "RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo RUSTUP_DIST_SERVER=https://dist.invalid/rust RUSTUP_UPDATE_ROOT=file:///srv/rustup"


@pytest.mark.podman
def test_rustup_install_and_update_through_a_mirror(ssh_host):
    host = ssh_host()
    host.put(FAKE_RUSTUP, "/srv/fake-rustup")
    host.put(FAKE_RUSTUP_INIT, "/srv/rustup/dist/x86_64-unknown-linux-gnu/rustup-init")
    host.exec("cd /srv/rustup/dist/x86_64-unknown-linux-gnu && sha256sum rustup-init > rustup-init.sha256")
    pb = play(rust_toolchain_method="rustup", rust_toolchain_apt_packages=[], rust_toolchain_rustup_update_root="file:///srv/rustup",
              rust_toolchain_rustup_dist_server="https://dist.invalid/rust")
    log = lambda: host.exec("cat /var/log/fake-rustup.log").stdout.splitlines()  # noqa: E731

    # A dry run shows what would run (command, URL, environment) and installs nothing.
    dry = host.playbook(pb, check=True, args=["--check"])
    assert "rustup-init -y --no-modify-path --profile minimal --default-toolchain stable from " \
           "file:///srv/rustup/dist/x86_64-unknown-linux-gnu/rustup-init" in dry.stdout
    assert '"RUSTUP_DIST_SERVER": "https://dist.invalid/rust"' in dry.stdout and '"CARGO_HOME": "/root/.cargo"' in dry.stdout
    assert not host.exec("ls /root/.cargo /var/log/fake-rustup.log 2>/dev/null", check=False).stdout

    first = host.playbook(pb, check=True)
    assert "rustup-init -y --no-modify-path --profile minimal --default-toolchain stable from " \
           "file:///srv/rustup/dist/x86_64-unknown-linux-gnu/rustup-init" in first.stdout
    assert log() == [f"rustup-init -y --no-modify-path --profile minimal --default-toolchain stable | {MIRROR_ENV}"]
    for tool in ("cargo", "rustc", "rustup"):
        out = ssh(host, f"command -v {tool} && {tool} --version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"/usr/local/bin/{tool}"
    assert ssh(host, "cargo --version").stdout.strip() == "cargo 1.95.0 (fake00000 2026-01-01)"
    # The wrappers pin the homes: the proxies still find their toolchain when HOME is elsewhere.
    assert ssh(host, "HOME=/nonexistent rustc --version").stdout.strip() == "rustc 1.95.0 (fake00000 2026-01-01)"
    assert ssh(host, "HOME=/nonexistent /root/.cargo/bin/rustc --version").returncode != 0
    assert not host.exec("ls /tmp | grep rustup-init", check=False).stdout  # the download is cleaned up

    again = host.playbook(pb, check=True)
    assert recap(again)["changed"] == 0
    assert len(log()) == 1

    host.exec("echo 1.80.0 > /root/.rustup/fake-version")  # the rustup toolchain is now too old
    update = host.playbook(pb, check=True)
    assert "/root/.cargo/bin/rustc is rustc 1.80.0, older than 1.85: updating it with /root/.cargo/bin/rustup" in update.stdout
    assert log()[1:] == [f"rustup update stable | {MIRROR_ENV}", f"rustup default stable | {MIRROR_ENV}"]
    assert ssh(host, "rustc --version").stdout.strip() == "rustc 1.95.0 (fake00000 2026-01-01)"

    # A pinned rustup-init checksum that does not match stops the install.
    host.exec("rm -rf /root/.cargo /root/.rustup /usr/local/bin/cargo /usr/local/bin/rustc /usr/local/bin/rustdoc /usr/local/bin/rustup")
    bad = host.playbook(play(rust_toolchain_method="rustup", rust_toolchain_apt_packages=[], rust_toolchain_rustup_update_root="file:///srv/rustup",
                             rust_toolchain_rustup_init_sha256="0" * 64))
    assert bad.returncode != 0
    assert "checksum" in bad.stdout.lower() and "Download rustup-init" in bad.stdout
    assert len(log()) == 3  # rustup-init did not run


def test_a_url_archive_needs_its_sha256_before_any_remote_task(nowhere):
    proc = nowhere.playbook(play(rust_toolchain_method="archive", rust_toolchain_archive="https://example.invalid/rust.tar.zst"))
    assert proc.returncode != 0
    assert ("rust_toolchain: rust_toolchain_archive https://example.invalid/rust.tar.zst is a URL: it must end in .tar.zst, .tar.gz "
            'or .tgz and rust_toolchain_archive_sha256 must be its sha256, 64 hex digits (got "")') in " ".join(proc.stdout.split())
    assert "UNREACHABLE" not in proc.stdout


@pytest.mark.podman
def test_a_url_archive_is_downloaded_by_the_host_and_checked(make_host, archive):
    """file:// on a read-only mount stands in for a download server: the archive never crosses the controller's link."""
    from volt_ansible.local.toolchain import archive_sha256

    host = make_host(volumes=[f"{archive}:/srv/dist/{archive.name}:ro"])
    url = f"file:///srv/dist/{archive.name}"
    wrong = host.playbook(play(rust_toolchain_method="archive", rust_toolchain_archive=url, rust_toolchain_archive_sha256="0" * 64,
                               rust_toolchain_apt_packages=[]))
    assert wrong.returncode != 0 and "checksum" in wrong.stdout.lower(), wrong.stdout[-2000:]
    assert not host.exec("ls -d /opt/rust /opt/rust.staging /opt/rust.download /opt/rust.staging.unverified-*",
                         check=False).stdout  # nothing half-made is left

    assert "rust_toolchain: checksum mismatch: " + url in " ".join(wrong.stdout.split())

    sha = archive_sha256(archive)
    # Build packages that are all installed already: no apt run at all (not even an index update).
    pb = play(rust_toolchain_method="archive", rust_toolchain_archive=url, rust_toolchain_archive_sha256=sha,
              rust_toolchain_apt_packages=["rsync", "tmux"])
    first = host.playbook(pb, check=True)
    assert task_result(first.stdout, "Fetch, check and unpack the archive on the host (in the background)") == "changed"
    assert task_result(first.stdout, "Copy the archive to the host") == "skipping"  # nothing pushed
    assert task_result(first.stdout, "Install the apt build dependencies") == "skipping"
    assert not host.exec("ls -d /opt/rust.staging /opt/rust.download /opt/rust.old", check=False).stdout
    assert rt.rust_toolchain_version_ok(ssh(host, "rustc --version").stdout, "1.85")
    marker = json.loads(host.exec("cat /opt/rust/.rust_toolchain.json").stdout)
    assert marker["sha256"] == sha and marker["archive"] == archive.name
    assert recap(host.playbook(pb, check=True))["changed"] == 0


def task_result(stdout: str, task: str) -> str:
    """ok / changed / skipping / failed: the first result line under the task's header."""
    block = stdout.split(f"TASK [rust_toolchain : {task}]", 1)[1]
    return re.search(r"^(ok|changed|skipping|failed|fatal)\b", block, re.M).group(1)
