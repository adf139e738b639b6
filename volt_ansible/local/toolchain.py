"""This machine's rustup stable toolchain, packed as the rust_toolchain role's `archive` input.

Test hosts have no internet (no rustup downloads), so the role's `archive` method is fed a tarball
of a toolchain prefix: bin/{cargo,rustc,rustdoc}, lib/*.so*, lib/rustlib/<triple>/{bin,lib}. That
is what `cargo build` of a std-only crate needs (rust-lld and gcc-ld/ under rustlib/<triple>/bin are
the default linker on x86_64-unknown-linux-gnu since 1.90; cc from build-essential drives it).
Docs, clippy, rustfmt, gdb scripts and rustup's manifests are left out.

    python -m volt_ansible.local.toolchain   # prints the archive's path, packing it first if needed
"""

from __future__ import annotations

import fcntl
import os
import platform
import pwd
import shutil
import subprocess
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_path, atomic_write, plain_sha256

ZSTD_LEVEL = 3  # 594 MB -> ~183 MB in ~2 s on 2 cores; -9 saves 10% for 4x the time


def account_home() -> Path:
    """The user's real home, even when $HOME points elsewhere (tests run the CLI with a throwaway HOME)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def default_cache_dir() -> Path:
    """~/.cache/volt-ansible of the account: one packed archive per machine, not one per throwaway HOME."""
    return account_home() / ".cache" / "volt-ansible"


def host_triple() -> str:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{arch}-unknown-linux-gnu"


def find_toolchain() -> Path:
    """The rustup stable toolchain of this machine ($VOLT_RUST_TOOLCHAIN overrides: any toolchain prefix)."""
    if env := os.environ.get("VOLT_RUST_TOOLCHAIN"):
        candidates = [Path(env)]
    else:
        homes = [os.environ.get("RUSTUP_HOME"), Path.home() / ".rustup", account_home() / ".rustup"]
        candidates = list(dict.fromkeys(Path(h) / "toolchains" / f"stable-{host_triple()}" for h in homes if h))
    for root in candidates:
        if (root / "bin" / "rustc").is_file() and (root / "bin" / "cargo").is_file():
            return root
    raise VoltError(f"no Rust toolchain at {' or '.join(map(str, candidates))} (needs bin/rustc and bin/cargo): install one with "
                    "`rustup toolchain install stable --profile minimal`, or point VOLT_RUST_TOOLCHAIN at a toolchain prefix")


def version_info(root: Path) -> dict[str, str]:
    """`rustc -vV` as a dict: release, host, commit-hash, ..."""
    proc = subprocess.run([str(root / "bin" / "rustc"), "-vV"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VoltError(f"{root / 'bin' / 'rustc'} -vV failed: {proc.stderr.strip()}")
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)


def members(root: Path, triple: str) -> list[str]:
    """What goes into the archive, relative to the toolchain prefix."""
    names = [f"bin/{b}" for b in ("cargo", "rustc", "rustdoc") if (root / "bin" / b).is_file()]
    names += sorted(f"lib/{p.name}" for p in (root / "lib").iterdir() if ".so" in p.name and p.is_file())
    for sub in ("bin", "lib"):
        if (root / "lib" / "rustlib" / triple / sub).is_dir():
            names.append(f"lib/rustlib/{triple}/{sub}")
    return names


def ensure_archive(toolchain: Path | None = None, cache_dir: Path | None = None, level: int = ZSTD_LEVEL) -> Path:
    """Return the cached archive of the toolchain, packing it first when it is not there yet."""
    root = toolchain or find_toolchain()
    info = version_info(root)
    triple = info.get("host", host_triple())
    dest = (cache_dir or default_cache_dir()) / f"rust-{info['release']}-{triple}.tar.zst"
    if dest.is_file():
        return dest
    if not shutil.which("zstd"):
        raise VoltError("zstd is not installed: apt-get install zstd (needed to pack the Rust toolchain archive)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:  # one packer; the others wait for its archive
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file():
            return dest
        _pack(root, triple, dest, level)
    return dest


def _pack(root: Path, triple: str, dest: Path, level: int) -> None:
    # atomic: a concurrent reader sees no half-written archive
    with atomic_path(dest, mode=0o644, durable=False) as tmp:
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
                                *members(root, triple)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        zstd = subprocess.run(["zstd", "-q", "-T0", f"-{level}", "-f", "-o", tmp], stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace").strip()
        if tar.wait() != 0 or zstd.returncode != 0:
            raise VoltError(f"packing {root} failed: {tar_err or zstd.stderr.decode(errors='replace').strip()}")


def archive_sha256(archive: Path) -> str:
    """The archive's sha256, kept beside it (<archive>.sha256) so it is hashed once, not per instance."""
    side = archive.with_name(archive.name + ".sha256")
    st = archive.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    if side.is_file():
        digest, _, seen = side.read_text().partition(" ")
        if seen.strip() == stamp:
            return digest
    digest = plain_sha256(archive)
    atomic_write(side, f"{digest} {stamp}\n", mode=0o644, durable=False)
    return digest


def main() -> None:
    try:
        print(ensure_archive())
    except VoltError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
