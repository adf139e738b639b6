"""roles/rust_toolchain run for real on SSH test hosts (the decision logic: tests/test_rust_toolchain_logic.py).

The rustup method cannot reach static.rust-lang.org here, so its host tests mount a local copy of it read-only:
volt_ansible.local.rustdist lays this machine's stable toolchain out as a rustup dist server (channel manifest,
component tarballs, rustup-init) and the real rustup-init installs from it over file://. That checks the URL the role
builds, the rustup-init arguments, the RUSTUP_* / CARGO_HOME environment, the checksum check, the wrappers and the
update path against rustup itself; only the download from the internet is left out.
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
from procs import comm, descendants
from testhost import container_pid

spec = importlib.util.spec_from_file_location("rust_toolchain_filters", REPO / "roles/rust_toolchain/filter_plugins/rust_toolchain.py")
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)

OLD_RUSTC = "rustc 1.80.0 (051478957 2024-07-21)"


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

    def factory(volumes: list[str] | None = None):
        host = make_host(volumes=volumes)
        assert ssh(host, "true").returncode == 0, "sshd of the test host never answered"
        return host

    return factory


@pytest.fixture(scope="module")
def archive() -> Path:
    from volt_ansible.local import toolchain

    return toolchain.ensure_archive()


@pytest.fixture
def rustup_dist() -> Path:
    """This machine's toolchain as a rustup dist server tree (built once per machine, then a cache hit)."""
    from volt_ansible.local import rustdist

    return rustdist.ensure_tree()


def local_version(tool: str) -> str:
    """What this machine's own stable `tool --version` says: the mirror serves exactly that toolchain."""
    from volt_ansible.local import rustdist, toolchain

    path = rustdist.find_rustup() if tool == "rustup" else toolchain.find_toolchain() / "bin" / tool
    proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return proc.stdout.splitlines()[0].strip()


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
    assert "/usr/bin/rustc is rustc 1.80.0, older than 1.88: installing the archive's toolchain beside it" in first.stdout
    for tool in ("rustc", "cargo"):
        out = ssh(host, f"command -v {tool} && {tool} --version")
        assert out.returncode == 0, out.stderr
        path, version = out.stdout.strip().splitlines()
        assert path == f"/usr/local/bin/{tool}"
        assert rt.rust_toolchain_version_ok(version, "1.88"), version
    assert host.exec("/usr/bin/rustc --version").stdout.strip() == OLD_RUSTC  # the old one is left alone, shadowed
    assert host.exec("readlink /usr/local/bin/rustc").stdout.strip() == "/opt/rust/bin/rustc"

    again = host.playbook(pb, check=True)
    assert recap(again)["changed"] == 0
    assert "Copy the archive to the host" not in again.stdout  # the archive is not sent again

    # An old toolchain in the prefix itself is replaced by the archive's.
    host.put(fake(OLD_RUSTC), "/opt/rust/bin/rustc")
    update = host.playbook(pb, check=True)
    assert "/opt/rust/bin/rustc is rustc 1.80.0, older than 1.88: replacing it" in update.stdout
    assert rt.rust_toolchain_version_ok(ssh(host, "rustc --version").stdout, "1.88")
    assert not host.exec("ls -d /opt/rust.staging /opt/rust.old", check=False).stdout

    # Someone else's old rustc in /usr/local/bin is not overwritten: the role names it and fails.
    host.exec("rm /usr/local/bin/rustc")
    host.put(fake(OLD_RUSTC), "/usr/local/bin/rustc")
    shadowed = host.playbook(pb)
    assert shadowed.returncode != 0
    text = " ".join(shadowed.stdout.split())
    assert "rustc on the non-login PATH is /usr/local/bin/rustc (1.80.0), older than 1.88" in text
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
    assert "/usr/bin/rustc is rustc 1.80.0, older than 1.88 and is not managed by rustup" in text
    assert "remove it" in text and "rust_toolchain_method: archive" in text
    assert not host.exec("ls /root/.cargo /usr/local/bin/rustc 2>/dev/null", check=False).stdout  # nothing was installed


def mirror_host(ssh_host, rustup_dist):
    """A test host with the dist tree mounted read-only where rustdist.role_vars() points rustup."""
    from volt_ansible.local import rustdist

    return ssh_host(volumes=[f"{rustup_dist}:{rustdist.MOUNT}:ro"])


def rustup_play(**role_vars) -> str:
    from volt_ansible.local import rustdist

    return play(rust_toolchain_apt_packages=[], **rustdist.role_vars(), **role_vars)


@pytest.mark.podman
def test_rustup_install_and_update_through_a_mirror(ssh_host, rustup_dist):
    """The real rustup-init from a file:// mirror: dry run, install, a second run, `rustup update` both unchanged and
    from an older toolchain."""
    from volt_ansible.local.toolchain import host_triple

    built = json.loads((rustup_dist / "rustdist.json").read_text())
    triple = host_triple()
    toolchain_dir = f"/root/.rustup/toolchains/stable-{triple}"
    update_hash = f"/root/.rustup/update-hashes/stable-{triple}"
    init = f"rustup-init -y --no-modify-path --profile minimal --default-toolchain stable from file:///srv/rustup-dist/rustup/dist/{triple}/rustup-init"
    rustc, cargo = local_version("rustc"), local_version("cargo")
    host = mirror_host(ssh_host, rustup_dist)
    pb = rustup_play()

    # A dry run shows what would run (command, URL, environment) and installs nothing.
    dry = host.playbook(pb, check=True, args=["--check"])
    assert init in dry.stdout
    for name, value in (("RUSTUP_DIST_SERVER", "file:///srv/rustup-dist"), ("RUSTUP_UPDATE_ROOT", "file:///srv/rustup-dist/rustup"),
                        ("RUSTUP_HOME", "/root/.rustup"), ("CARGO_HOME", "/root/.cargo")):
        assert f'"{name}": "{value}"' in dry.stdout, name
    assert not host.exec("ls -d /root/.cargo /root/.rustup /usr/local/bin/rustc 2>/dev/null", check=False).stdout

    first = host.playbook(pb, check=True)
    assert init in first.stdout
    assert task_result(first.stdout, "Run rustup-init") == "changed"
    # rustup-init put rustup into CARGO_HOME and the minimal profile of the mirror's stable channel into RUSTUP_HOME.
    assert host.exec("ls /root/.rustup/toolchains").stdout.split() == [f"stable-{triple}"]
    assert sorted(host.exec(f"cat {toolchain_dir}/lib/rustlib/components").stdout.split()) == sorted(
        f"{pkg}-{triple}" for pkg in built["components"])
    # The channel came from the mirror (the host has no internet): rustup keeps the hash of the manifest it installed.
    seen = host.exec(f"cat {update_hash}").stdout.strip()
    assert len(seen) >= 16 and built["channel_sha256"].startswith(seen), seen
    for tool in ("cargo", "rustc", "rustup"):
        out = ssh(host, f"command -v {tool}")
        assert out.stdout.strip() == f"/usr/local/bin/{tool}", out.stdout + out.stderr
    assert ssh(host, "rustc --version").stdout.strip() == rustc
    assert ssh(host, "cargo --version").stdout.strip() == cargo
    assert ssh(host, "rustup --version").stdout.splitlines()[0] == local_version("rustup")
    assert ssh(host, "rustup show profile").stdout.strip() == "minimal"
    assert ssh(host, "rustup default").stdout.split()[0] == f"stable-{triple}"
    # The wrappers pin the homes: the proxies still find their toolchain when HOME is elsewhere.
    assert ssh(host, "HOME=/nonexistent rustc --version").stdout.strip() == rustc
    assert ssh(host, "HOME=/nonexistent /root/.cargo/bin/rustc --version").returncode != 0
    assert not host.exec("ls /tmp | grep rustup-init", check=False).stdout  # the download is cleaned up

    installed = host.exec(f"stat -c '%i %Y' {toolchain_dir}/bin/rustc /root/.cargo/bin/rustup").stdout
    again = host.playbook(pb, check=True)
    assert recap(again)["changed"] == 0
    assert "Run rustup-init" not in again.stdout and "Run rustup update" not in again.stdout
    assert host.exec(f"stat -c '%i %Y' {toolchain_dir}/bin/rustc /root/.cargo/bin/rustup").stdout == installed

    # rustup itself, through the same mirror, finds the toolchain and itself current.
    env = "RUSTUP_DIST_SERVER=file:///srv/rustup-dist RUSTUP_UPDATE_ROOT=file:///srv/rustup-dist/rustup"
    same = ssh(host, f"{env} rustup update stable")
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"stable-{triple} unchanged - {rustc}" in same.stdout + same.stderr

    # The rustup toolchain is now too old, as if installed from an older channel: its rustc says 1.80.0, and its
    # manifest and update hash are not the mirror's. The role updates it with rustup, which reinstalls from the mirror.
    host.put(fake(OLD_RUSTC), f"{toolchain_dir}/bin/rustc")
    host.exec(f"sed -i 's/^date = .*/date = \"2024-07-25\"/' {toolchain_dir}/lib/rustlib/multirust-channel-manifest.toml "
              f"&& echo {'0' * len(seen)} > {update_hash}")
    assert ssh(host, "rustc --version").stdout.strip() == OLD_RUSTC
    update = host.playbook(pb, check=True, args=["-v"])  # -v: rustup's own output
    assert "/root/.cargo/bin/rustc is rustc 1.80.0, older than 1.88: updating it with /root/.cargo/bin/rustup" in update.stdout
    assert task_result(update.stdout, "Run rustup update stable") == "changed"
    assert task_result(update.stdout, "Make the default toolchain stable") == "changed"
    assert f"stable-{triple} updated - {rustc} (from {OLD_RUSTC})" in update.stdout
    assert ssh(host, "rustc --version").stdout.strip() == rustc
    assert host.exec(f"cat {update_hash}").stdout.strip() == seen
    assert f'date = "{built["date"]}"' in host.exec(f"cat {toolchain_dir}/lib/rustlib/multirust-channel-manifest.toml").stdout
    assert recap(host.playbook(pb, check=True))["changed"] == 0


@pytest.mark.podman
def test_rustup_init_checksum_is_checked(ssh_host, rustup_dist):
    """A pinned rustup-init checksum that does not match stops the install before rustup-init runs; one that matches
    (the mirror's own) installs, without fetching the published rustup-init.sha256."""
    built = json.loads((rustup_dist / "rustdist.json").read_text())
    host = mirror_host(ssh_host, rustup_dist)

    bad = host.playbook(rustup_play(rust_toolchain_rustup_init_sha256="0" * 64))
    assert bad.returncode != 0
    assert "checksum" in bad.stdout.lower() and task_result(bad.stdout, "Download rustup-init") in ("failed", "fatal")
    assert "TASK [rust_toolchain : Run rustup-init]" not in bad.stdout
    assert not host.exec("ls -d /root/.cargo /root/.rustup /usr/local/bin/rustc 2>/dev/null", check=False).stdout  # rustup-init did not run
    assert not host.exec("ls /tmp | grep rustup-init", check=False).stdout

    pinned = host.playbook(rustup_play(rust_toolchain_rustup_init_sha256=built["rustup_init_sha256"]), check=True)
    assert task_result(pinned.stdout, "Download rustup-init's published checksum") == "skipping"
    assert task_result(pinned.stdout, "Run rustup-init") == "changed"
    assert ssh(host, "rustc --version").stdout.strip() == local_version("rustc")


@pytest.mark.podman
def test_rustup_installs_into_the_homes_it_is_given(ssh_host, rustup_dist):
    """rust_toolchain_rustup_home / rust_toolchain_cargo_home reach rustup-init, the probe and the wrappers: the
    toolchain is there, nothing under ~/.rustup or ~/.cargo, and a second run changes nothing."""
    from volt_ansible.local.toolchain import host_triple

    host = mirror_host(ssh_host, rustup_dist)
    pb = rustup_play(rust_toolchain_rustup_home="/opt/rustup", rust_toolchain_cargo_home="/opt/cargo")
    first = host.playbook(pb, check=True)
    assert '"RUSTUP_HOME": "/opt/rustup"' in first.stdout and '"CARGO_HOME": "/opt/cargo"' in first.stdout
    assert host.exec("ls /opt/rustup/toolchains").stdout.split() == [f"stable-{host_triple()}"]
    assert {"cargo", "rustc", "rustup"} <= set(host.exec("ls /opt/cargo/bin").stdout.split())
    assert 'exec "/opt/cargo/bin/cargo"' in host.exec("cat /usr/local/bin/cargo").stdout
    assert ssh(host, "HOME=/nonexistent cargo --version").stdout.strip() == local_version("cargo")
    assert ssh(host, "rustc --version").stdout.strip() == local_version("rustc")
    assert not host.exec("ls -d /root/.cargo /root/.rustup 2>/dev/null", check=False).stdout
    again = host.playbook(pb, check=True)
    assert recap(again)["changed"] == 0, again.stdout[-3000:]
    assert not host.exec("ls -d /root/.cargo /root/.rustup 2>/dev/null", check=False).stdout


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

    # a download that never ends (a FIFO nobody writes) is killed at rust_toolchain_fetch_timeout_s and named with it
    host.exec("mkfifo /tmp/stalled.tar.zst")
    stalled = host.playbook(play(rust_toolchain_method="archive", rust_toolchain_archive="file:///tmp/stalled.tar.zst",
                                 rust_toolchain_archive_sha256="0" * 64, rust_toolchain_apt_packages=[], rust_toolchain_fetch_timeout_s=3))
    assert stalled.returncode != 0
    assert ("rust_toolchain: the download and unpack of file:///tmp/stalled.tar.zst did not end within 3 s "
            "(rust_toolchain_fetch_timeout_s)") in " ".join(stalled.stdout.split()), stalled.stdout[-2000:]
    assert "python3" not in [comm(p) for p in descendants(container_pid(host.name))]

    sha = archive_sha256(archive)
    # Build packages that are all installed already: no apt run at all (not even an index update).
    pb = play(rust_toolchain_method="archive", rust_toolchain_archive=url, rust_toolchain_archive_sha256=sha,
              rust_toolchain_apt_packages=["rsync", "tmux"])
    first = host.playbook(pb, check=True)
    assert task_result(first.stdout, "Fetch, check and unpack the archive on the host (in the background)") == "changed"
    assert task_result(first.stdout, "Copy the archive to the host") == "skipping"  # nothing pushed
    assert task_result(first.stdout, "Install the apt build dependencies") == "skipping"
    assert not host.exec("ls -d /opt/rust.staging /opt/rust.download /opt/rust.old", check=False).stdout
    assert rt.rust_toolchain_version_ok(ssh(host, "rustc --version").stdout, "1.88")
    marker = json.loads(host.exec("cat /opt/rust/.rust_toolchain.json").stdout)
    assert marker["sha256"] == sha and marker["archive"] == archive.name
    assert recap(host.playbook(pb, check=True))["changed"] == 0


def task_result(stdout: str, task: str) -> str:
    """ok / changed / skipping / failed: the first result line under the task's header."""
    block = stdout.split(f"TASK [rust_toolchain : {task}]", 1)[1]
    return re.search(r"^(ok|changed|skipping|failed|fatal)\b", block, re.M).group(1)
