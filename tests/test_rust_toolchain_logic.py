"""roles/rust_toolchain without a host: the decision logic (filter plugin), the toolchain archive the tests feed
the role, and files/unpack.py run here as the role runs it on the host (a tampered or unverified archive)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest
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
    assert sorted(p.name for p in cache.iterdir()) == [path.name, path.name + ".lock"]  # no temp file left behind (the packers' lock stays)
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


