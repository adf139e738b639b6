"""roles/rust_toolchain: the decision logic (filter plugin), and the role run for real on SSH test hosts.

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


# --- the filter plugin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, version",
    [
        (OLD_RUSTC, "1.80.0"),
        ("cargo 1.95.0 (f2d3ce0bd 2026-03-21)", "1.95.0"),
        ("rustc 1.86.0-nightly (a1b2c3d4e 2025-01-10)", "1.86.0-nightly"),
        ("rustc 1.85.0-beta.1 (aaa 2025-01-01)", "1.85.0-beta.1"),
        ("1.85", "1.85.0"),
        ("", ""),
        (None, ""),
        ("rustc: error while loading shared libraries: librustc_driver.so", ""),
        ("bash: rustc: command not found", ""),
    ],
)
def test_version_parsing(text, version):
    assert rt.rust_toolchain_version(text) == version


@pytest.mark.parametrize(
    "text, min_version, ok",
    [
        (NEW_RUSTC, "1.85", True),
        ("rustc 1.85.0 (4d91de4e4 2025-02-17)", "1.85", True),
        ("rustc 1.85.0 (4d91de4e4 2025-02-17)", "1.85.1", False),
        (OLD_RUSTC, "1.85", False),
        ("rustc 1.85.0-beta.1 (x 2025-01-01)", "1.85", False),  # a pre-release is below its release (semver)
        ("rustc 1.86.0-nightly (x 2025-01-10)", "1.85", True),
        ("rustc 1.100.0 (x 2030-01-01)", "1.85", True),  # numeric, not string, comparison
        ("garbage", "1.85", False),
    ],
)
def test_version_ok(text, min_version, ok):
    assert rt.rust_toolchain_version_ok(text, min_version) is ok


@pytest.mark.parametrize("bad", ["1", "1.85.x", "latest", "", ">=1.85"])
def test_bad_min_version_is_refused(bad):
    with pytest.raises(rt.AnsibleFilterError, match="rust_toolchain_min_version"):
        rt.rust_toolchain_decide(NEW_RUSTC, bad, "rustup")


def test_bad_method_is_refused():
    with pytest.raises(rt.AnsibleFilterError, match="rustup, archive"):
        rt.rust_toolchain_decide(NEW_RUSTC, "1.85", "apt")
    with pytest.raises(rt.AnsibleFilterError, match="rustup, archive"):
        rt.rust_toolchain_current({}, "apt")


@pytest.mark.parametrize("method", ["rustup", "archive"])
@pytest.mark.parametrize("current", ["", None, "  "])
def test_no_rustc_installs(method, current):
    plan = rt.rust_toolchain_decide(current, "1.85", method)
    assert plan["action"] == "install"
    assert "no rustc found" in plan["message"]


@pytest.mark.parametrize("method", ["rustup", "archive"])
@pytest.mark.parametrize("managed", [True, False])
def test_new_enough_is_skipped_whoever_manages_it(method, managed):
    plan = rt.rust_toolchain_decide(NEW_RUSTC, "1.85", method, managed_by_rustup=managed, path="/usr/bin/rustc")
    assert plan["action"] == "skip"
    assert plan["version"] == "1.95.0"
    assert "/usr/bin/rustc is rustc 1.95.0" in plan["message"]


def test_rustup_updates_an_old_rustup_toolchain():
    plan = rt.rust_toolchain_decide(OLD_RUSTC, "1.85", "rustup", managed_by_rustup=True, path="/root/.cargo/bin/rustc", in_place=True)
    assert plan["action"] == "update"
    assert plan["rustup"] == "/root/.cargo/bin/rustup"
    assert "older than 1.85" in plan["message"]


def test_rustup_updates_a_broken_rustup_toolchain():
    text = "error: toolchain 'stable-x86_64-unknown-linux-gnu' is not installed"
    plan = rt.rust_toolchain_decide(text, "1.85", "rustup", managed_by_rustup=True, path="/root/.cargo/bin/rustc")
    assert plan["action"] == "update"
    assert "does not report a version" in plan["message"]


@pytest.mark.parametrize("current, shown", [(OLD_RUSTC, "rustc 1.80.0, older than 1.85"), ("Segmentation fault", "does not report a version")])
def test_rustup_fails_on_an_old_rustc_it_does_not_manage(current, shown):
    plan = rt.rust_toolchain_decide(current, "1.85", "rustup", managed_by_rustup=False, path="/usr/bin/rustc")
    assert plan["action"] == "fail"
    msg = plan["message"]
    assert f"/usr/bin/rustc {'is ' if 'older' in shown else ''}{shown}" in msg
    assert "not managed by rustup" in msg
    assert "remove it" in msg and "rust_toolchain_method: archive" in msg


@pytest.mark.parametrize("current", [OLD_RUSTC, "garbage"])
def test_archive_replaces_an_old_toolchain_in_its_prefix(current):
    plan = rt.rust_toolchain_decide(current, "1.85", "archive", path="/opt/rust/bin/rustc", in_place=True)
    assert plan["action"] == "update"


@pytest.mark.parametrize("managed", [True, False])
def test_archive_installs_beside_an_old_toolchain_elsewhere(managed):
    plan = rt.rust_toolchain_decide(OLD_RUSTC, "1.85", "archive", managed_by_rustup=managed, path="/usr/bin/rustc")
    assert plan["action"] == "install"
    assert "beside it" in plan["message"]


def test_every_action_is_known():
    seen = {
        rt.rust_toolchain_decide(c, "1.85", m, managed_by_rustup=r, path="/x/rustc", in_place=i)["action"]
        for c in ("", OLD_RUSTC, NEW_RUSTC, "junk")
        for m in rt.METHODS
        for r in (True, False)
        for i in (True, False)
    }
    assert seen == set(rt.ACTIONS)


PROBE = "\n".join(
    [
        "arch\tx86_64",
        "home\t/root",
        "path\t/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "cargo_home\t/root/.cargo",
        "rustup_home\t/root/.rustup",
        "zstd\t0",
        f"tool\trustc\tpath\t/usr/bin/rustc\t0\t0\t{OLD_RUSTC}",
        "tool\trustc\tcargo_home\t/root/.cargo/bin/rustc\t0\t-1\t",
        f"tool\trustc\tprefix\t/opt/rust/bin/rustc\t0\t0\t{NEW_RUSTC}",
        "tool\tcargo\tpath\t\t0\t-1\t",
        "tool\tcargo\tcargo_home\t/root/.cargo/bin/cargo\t0\t-1\t",
        "tool\tcargo\tprefix\t/opt/rust/bin/cargo\t0\t0\tcargo 1.95.0 (f2d3ce0bd 2026-03-21)",
        "bin\tcargo\tabsent\t",
        "bin\trustc\tforeign\t",
        "bin\trustdoc\tours\t/opt/rust/bin/rustdoc",
        "prefixbin\tcargo rustc rustdoc",
        "pkg\tbuild-essential\t1",
        "pkg\tlibssl-dev\t0",
    ]
)


def test_probe_parsing_and_the_toolchain_that_counts():
    p = rt.rust_toolchain_probe(PROBE)
    assert p["arch"] == "x86_64" and p["home"] == "/root" and p["cargo_home"] == "/root/.cargo" and p["zstd"] is False
    assert p["tools"]["rustc"]["path"] == {"path": "/usr/bin/rustc", "rustup": False, "rc": 0, "output": OLD_RUSTC, "where": "path"}
    assert p["tools"]["rustc"]["cargo_home"] == {}
    assert p["tools"]["cargo"]["path"] == {}
    assert p["bin"]["rustc"]["state"] == "foreign" and p["bin"]["rustdoc"]["target"] == "/opt/rust/bin/rustdoc"
    assert p["prefixbin"] == ["cargo", "rustc", "rustdoc"]
    assert p["packages"] == {"build-essential": True, "libssl-dev": False}
    # archive: the prefix's own toolchain counts, even with an older one first on PATH
    assert rt.rust_toolchain_current(p, "archive") == {**p["tools"]["rustc"]["prefix"], "in_place": True}
    # rustup: nothing in ~/.cargo/bin, so the PATH one counts (and it is not in place)
    assert rt.rust_toolchain_current(p, "rustup") == {**p["tools"]["rustc"]["path"], "in_place": False}
    assert rt.rust_toolchain_current(rt.rust_toolchain_probe("arch\tx86_64\n"), "rustup") == {}


def test_path_problems_name_what_is_in_the_way():
    p = rt.rust_toolchain_probe(PROBE)
    problem = rt.rust_toolchain_path_problem(p, "1.85")
    assert "rustc on the non-login PATH is /usr/bin/rustc (1.80.0), older than 1.85" in problem
    assert "comes before /usr/local/bin on PATH" not in problem  # /usr/bin comes after it: says to remove it
    assert "cargo is not on the non-login PATH (/usr/local/sbin:" in problem
    shadowed = PROBE.replace("path\t/usr/bin/rustc", "path\t/usr/local/bin/rustc")
    problem = rt.rust_toolchain_path_problem(rt.rust_toolchain_probe(shadowed), "1.85")
    assert "/usr/local/bin/rustc (1.80.0)" in problem and "not this role's, so it was left alone: remove it" in problem
    fine = PROBE.replace(f"path\t/usr/bin/rustc\t0\t0\t{OLD_RUSTC}", f"path\t/usr/local/bin/rustc\t0\t0\t{NEW_RUSTC}").replace(
        "tool\tcargo\tpath\t\t0\t-1\t", "tool\tcargo\tpath\t/usr/local/bin/cargo\t0\t0\tcargo 1.95.0 (x 2026-03-21)"
    )
    assert rt.rust_toolchain_path_problem(rt.rust_toolchain_probe(fine), "1.85") == ""


@pytest.mark.parametrize("arch, triple", [("x86_64", "x86_64-unknown-linux-gnu"), ("aarch64", "aarch64-unknown-linux-gnu"),
                                          ("arm64", "aarch64-unknown-linux-gnu")])
def test_triple(arch, triple):
    assert rt.rust_toolchain_triple(arch) == triple


def test_unknown_arch_is_refused():
    with pytest.raises(rt.AnsibleFilterError, match="ppc64le"):
        rt.rust_toolchain_triple("ppc64le")


# --- the archive the tests feed the role -----------------------------------------------------------------


def test_ensure_archive_packs_what_compiling_needs_once(tmp_path):
    from volt_ansible.local import toolchain

    root, triple = tmp_path / "toolchain", "x86_64-unknown-linux-gnu"
    files = ["bin/cargo", "bin/rustdoc", "bin/rustfmt", "lib/librustc_driver-abc.so", "lib/libLLVM.so.22.1-rust-1.95.0-stable",
             f"lib/rustlib/{triple}/bin/rust-lld", f"lib/rustlib/{triple}/bin/gcc-ld/ld.lld", f"lib/rustlib/{triple}/lib/libstd-abc.rlib",
             "lib/rustlib/etc/gdb_load_rust_pretty_printers.py", "lib/rustlib/components", "share/doc/rust/README.md"]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)
    (root / "bin/rustc").write_text(f"#!/bin/sh\nprintf 'rustc 1.95.0 (x 2026-04-14)\\nhost: {triple}\\nrelease: 1.95.0\\n'\n")
    (root / "bin/rustc").chmod(0o755)
    cache = tmp_path / "cache"

    path = toolchain.ensure_archive(root, cache)
    assert path == cache / f"rust-1.95.0-{triple}.tar.zst"
    names = subprocess.run(["tar", "--use-compress-program=zstd", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert {n.rstrip("/") for n in names} >= {"bin/cargo", "bin/rustc", "bin/rustdoc", "lib/librustc_driver-abc.so",
                                               "lib/libLLVM.so.22.1-rust-1.95.0-stable", f"lib/rustlib/{triple}/bin/gcc-ld/ld.lld",
                                               f"lib/rustlib/{triple}/lib/libstd-abc.rlib"}
    assert not [n for n in names if n.startswith(("share/", "lib/rustlib/etc", "lib/rustlib/components", "bin/rustfmt"))]
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    assert toolchain.ensure_archive(root, cache) == path and path.stat().st_mtime_ns == mtime  # reused, not repacked


# --- files/unpack.py, run here as the role runs it on the host -------------------------------------------

UNPACK = REPO / "roles/rust_toolchain/files/unpack.py"


def toolchain_archive(tmp_path: Path, marker: Path, padding: int = 0) -> Path:
    """A .tar.gz whose bin/rustc and bin/cargo leave `marker` behind when they run, then `padding` random bytes."""
    import os
    import tarfile

    root = tmp_path / "src"
    (root / "bin").mkdir(parents=True)
    for tool in ("rustc", "cargo"):
        (root / "bin" / tool).write_text(f"#!/bin/sh\necho ran >> {marker}\necho '{tool} 1.95.0 (x 2026-04-14)'\n")
        (root / "bin" / tool).chmod(0o4755)  # setuid, as an attacker's archive might have it
    (root / "lib").mkdir()
    (root / "lib" / "padding").write_bytes(os.urandom(padding))
    path = tmp_path / "rust.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("bin", "bin/rustc", "bin/cargo", "lib", "lib/padding"):  # the programs first, the padding last
            tar.add(root / name, name, recursive=False)
    return path


def unpack(url: str, sha256: str, staging: Path) -> subprocess.Popen:
    cfg = {"url": url, "sha256": sha256, "staging": str(staging), "zstd": False, "remove": []}
    return subprocess.Popen(["python3", "-c", UNPACK.read_text(), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_tampered_archive_leaves_nothing_behind_and_runs_nothing(tmp_path):
    import hashlib

    marker = tmp_path / "ran"
    archive = toolchain_archive(tmp_path, marker)
    prefix = tmp_path / "opt"
    prefix.mkdir()
    proc = unpack(archive.as_uri(), "0" * 64, prefix / "rust.staging")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"rust_toolchain: checksum mismatch: {archive.as_uri()}" in err and "nothing was installed" in err
    assert list(prefix.iterdir()) == [] and not marker.exists()  # nothing unpacked is left, nothing of it ran

    good = unpack(archive.as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest(), prefix / "rust.staging")
    out, err = good.communicate(timeout=60)
    assert good.returncode == 0, err
    assert json.loads(out)["rustc"] == {"rc": 0, "out": "rustc 1.95.0 (x 2026-04-14)"} and marker.exists()  # verified: then it runs
    assert sorted(p.name for p in prefix.iterdir()) == ["rust.staging"] and (prefix / "rust.staging").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("digest_matches", [True, False])
def test_nothing_unverified_reaches_the_staging_path_or_other_users_while_it_downloads(tmp_path, digest_matches):
    """The download and the unpack overlap, but until the digest matches the files are in a 0700 directory that is
    not the staging path archive_finish swaps into the prefix: a host killed mid-download leaves them there, unused."""
    import hashlib
    import os
    import stat

    archive = toolchain_archive(tmp_path, tmp_path / "ran", padding=6 << 20)
    data = archive.read_bytes()
    fifo = tmp_path / "download"
    os.mkfifo(fifo)  # a download that stops half-way until the test lets it go on
    prefix = tmp_path / "opt"
    prefix.mkdir()
    staging = prefix / "rust.staging"
    proc = unpack(fifo.as_uri(), hashlib.sha256(data).hexdigest() if digest_matches else "f" * 64, staging)
    try:
        with open(fifo, "wb") as w:
            w.write(data[: len(data) // 2])
            w.flush()
            deadline = time.monotonic() + 30
            while not (unpacked := [p for p in prefix.rglob("rustc")]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert unpacked, "tar never unpacked bin/rustc from the first half of the archive"
            assert not staging.exists(), f"unverified files are at the staging path: {unpacked}"
            top = prefix / unpacked[0].relative_to(prefix).parts[0]
            assert stat.S_IMODE(top.stat().st_mode) == 0o700, oct(top.stat().st_mode)  # no other user reaches them
            w.write(data[len(data) // 2:])
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode == 0) == digest_matches, err
    assert sorted(p.name for p in prefix.iterdir()) == (["rust.staging"] if digest_matches else [])
    assert (tmp_path / "ran").exists() == digest_matches


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
