"""A local rustup dist server: this machine's stable toolchain, laid out the way static.rust-lang.org serves it.

Test hosts have no internet, yet the rust_toolchain role's default method is rustup. This tree lets the real
rustup-init install from a `file://` URL (a read-only mount on the test host), exactly as it would from the
official server:

    dist/channel-rust-stable.toml (+ .sha256)        the channel manifest this toolchain was installed from, with
                                                     only its own components (the `minimal` profile) available
    dist/channel-rust-<release>.toml (+ .sha256)     the same, for a pinned channel (rust_toolchain_channel: 1.95.0)
    dist/<date>/<pkg>-<version>-<triple>.tar.gz      one rust-installer tarball per component (+ .sha256), rebuilt
                                                     from the installed files its manifest-<pkg>-<triple> lists
    rustup/dist/<triple>/rustup-init (+ .sha256)     this machine's rustup binary, which acts as rustup-init under
                                                     that name; what the role downloads
    rustup/archive/<version>/<triple>/rustup-init    where `rustup self update` would fetch it
    rustup/release-stable.toml                       rustup's own version, so `rustup update` finds it current
    rustdist.json                                    what was built (versions, hashes): for tests and people

    RUSTUP_DIST_SERVER=file://<tree>  RUSTUP_UPDATE_ROOT=file://<tree>/rustup

The manifest keeps the real one's version strings, `[renames]` and `[profiles]`; every package and target it lists
stays (rustup checks that each component and rename names a package), but only the components rebuilt here are
`available`, with a gzip tarball (rustup always accepts `url`/`hash`; no xz or zst is made). Their `url`s keep the
official prefix: rustup swaps https://static.rust-lang.org for RUSTUP_DIST_SERVER, so the tree works at any mount
point.

Built once per machine (per toolchain, rustup and recipe version) under ~/.cache/volt-ansible, in a temporary
directory renamed into place when complete, under a lock so that concurrent test workers build it once.

    python -m volt_ansible.local.rustdist   # prints the tree's path, building it first if needed
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import plain_sha256
from volt_ansible.local import toolchain

RECIPE_VERSION = 1  # bump when the layout below changes
MOUNT = "/srv/rustup-dist"  # where test hosts see the tree (read-only)
DEFAULT_DIST_SERVER = "https://static.rust-lang.org"
PROFILE = "minimal"
GZIP_LEVEL = 1  # ~610 MB of toolchain: level 1 packs it in seconds; rustup unpacks any level as fast
INSTALLER_VERSION = "3"  # rust-installer's format, the only one rustup accepts


def role_vars(mount: str = MOUNT) -> dict[str, str]:
    """The rust_toolchain inputs that point rustup at the tree mounted at `mount` on the host."""
    return {"rust_toolchain_method": "rustup", "rust_toolchain_rustup_dist_server": f"file://{mount}",
            "rust_toolchain_rustup_update_root": f"file://{mount}/rustup"}


def find_rustup() -> Path:
    """This machine's rustup binary ($VOLT_RUSTUP overrides)."""
    candidates = [Path(p) for p in (os.environ.get("VOLT_RUSTUP"),) if p]
    if not candidates:
        candidates = [Path.home() / ".cargo" / "bin" / "rustup", toolchain.account_home() / ".cargo" / "bin" / "rustup"]
        if found := shutil.which("rustup"):
            candidates.append(Path(found))
    for path in dict.fromkeys(candidates):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise VoltError(f"no rustup at {' or '.join(map(str, dict.fromkeys(candidates)))}: install rustup, or point VOLT_RUSTUP "
                    "at its binary")


def rustup_version(rustup: Path) -> str:
    """`rustup --version` -> "1.29.0"."""
    proc = subprocess.run([str(rustup), "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "RUSTUP_AUTO_INSTALL": "0"})
    # stdout's first line; the exit code is not asked: with no toolchain for $HOME it may complain on stderr
    if not (m := re.match(r"rustup (\S+)", proc.stdout)):
        raise VoltError(f"{rustup} --version failed: {(proc.stderr or proc.stdout).strip()}")
    return m.group(1)


def _publish(path: Path) -> str:
    """Write `<path>.sha256` as static.rust-lang.org does ("<sha256>  <name>") and return the digest."""
    digest = plain_sha256(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def profile_components(manifest: dict, triple: str, profile: str = PROFILE) -> list[str]:
    """The packages rustup installs for `profile` on `triple`: the profile's names that the `rust` package lists for
    that target (what rustup's get_profile_components does; rust-mingw drops out on Linux)."""
    try:
        names = manifest["profiles"][profile]
        rust = manifest["pkg"]["rust"]["target"][triple]
    except KeyError as e:
        raise VoltError(f"the toolchain's channel manifest has no {e.args[0]!r} for profile {profile} on {triple}") from None
    listed = {c["pkg"] for c in rust.get("components", []) if c.get("target") in (triple, "*")}
    return [n for n in names if n in listed]


def installer_tarball(root: Path, pkg: str, triple: str, dest: Path, level: int = GZIP_LEVEL) -> None:
    """Rebuild the rust-installer tarball of an installed component from the files its installed manifest lists:
    <top>/rust-installer-version, <top>/components, <top>/<pkg>/manifest.in and <top>/<pkg>/<each file>.
    Regular files and directories only (rustup's unpacker refuses anything else): links are followed."""
    rustlib = root / "lib" / "rustlib"
    listing = rustlib / f"manifest-{pkg}-{triple}"
    if not listing.is_file():
        raise VoltError(f"{pkg} for {triple} is not installed in {root} (no {listing}): `rustup component add {pkg}`")
    lines = [line for line in listing.read_text().splitlines() if line.strip()]
    top = dest.name.removesuffix(".tar.gz")
    dirs: set[str] = set()

    def add_dir(tar: tarfile.TarFile, name: str) -> None:
        if name in dirs:
            return
        if "/" in name:
            add_dir(tar, name.rsplit("/", 1)[0])
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(info)
        dirs.add(name)

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        add_dir(tar, name.rsplit("/", 1)[0])
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))

    def add_file(tar: tarfile.TarFile, name: str, src: Path) -> None:
        add_dir(tar, name.rsplit("/", 1)[0])
        st = src.stat()  # follows links
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, int(st.st_mtime)
        with src.open("rb") as f:
            tar.addfile(info, f)

    with tarfile.open(dest, "w:gz", compresslevel=level, format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, f"{top}/rust-installer-version", f"{INSTALLER_VERSION}\n".encode())
        add_bytes(tar, f"{top}/components", f"{pkg}\n".encode())
        add_bytes(tar, f"{top}/{pkg}/manifest.in", "".join(f"{line}\n" for line in lines).encode())
        for line in lines:
            kind, _, rel = line.partition(":")
            src = root / rel
            if kind == "file":
                add_file(tar, f"{top}/{pkg}/{rel}", src)
            elif kind == "dir":
                for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
                    dirnames.sort()
                    sub = Path(dirpath).relative_to(root).as_posix()
                    add_dir(tar, f"{top}/{pkg}/{sub}")
                    for fn in sorted(filenames):
                        add_file(tar, f"{top}/{pkg}/{sub}/{fn}", Path(dirpath) / fn)
            else:
                raise VoltError(f"{listing}: unknown entry {line!r} (rustup knows file: and dir:)")


_TARGET_HEADER = re.compile(r'^\[pkg\.("[^"]+"|[A-Za-z0-9_-]+)\.target\.("[^"]+"|[A-Za-z0-9_-]+)\]\s*$')
_BIN_KEYS = re.compile(r"^(url|hash|xz_url|xz_hash|zst_url|zst_hash)\s*=")


def channel_manifest(text: str, served: dict[tuple[str, str], tuple[str, str]]) -> str:
    """The real channel manifest, rewritten line by line: the (pkg, target) tables in `served` get their gzip
    url/hash, every other target table becomes `available = false` with no download keys. All else is kept as is."""
    out, table = [], None
    for line in text.splitlines():
        if line.startswith("["):
            m = _TARGET_HEADER.match(line)
            table = (m.group(1).strip('"'), m.group(2).strip('"')) if m else None
        elif table is not None and (line.startswith("available") or _BIN_KEYS.match(line)):
            if table in served:
                url, digest = served[table]
                if line.startswith("url"):
                    line = f'url = "{url}"'
                elif line.startswith("hash"):
                    line = f'hash = "{digest}"'
                elif not line.startswith("available"):
                    continue  # no xz/zst made here
            elif line.startswith("available"):
                line = "available = false"
            else:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def check_manifest(text: str, served: dict[tuple[str, str], tuple[str, str]]) -> dict:
    """Parse the rewritten manifest and require exactly the served components to be downloadable."""
    manifest = tomllib.loads(text)
    offered = {(pkg, target): (t.get("url"), t.get("hash"))
               for pkg, p in manifest["pkg"].items() for target, t in p.get("target", {}).items() if t.get("available")}
    if offered != served:
        raise VoltError(f"rewriting the channel manifest went wrong: offers {sorted(offered)}, built {sorted(served)}")
    return manifest


def build(root: Path, rustup: Path, out: Path, triple: str) -> dict:
    """Make the tree in `out` (an empty directory); returns what rustdist.json records."""
    rustlib = root / "lib" / "rustlib"
    text = (rustlib / "multirust-channel-manifest.toml").read_text()
    manifest = tomllib.loads(text)
    date, release = manifest["date"], manifest["pkg"]["rust"]["version"].split()[0]
    pkgs = profile_components(manifest, triple)
    for pkg in pkgs:  # fail before packing anything
        if not (rustlib / f"manifest-{pkg}-{triple}").is_file():
            raise VoltError(f"{pkg} ({PROFILE} profile) is not installed in {root}: `rustup component add {pkg}`")
    day = out / "dist" / date
    day.mkdir(parents=True)

    def tarball_name(pkg: str) -> str:
        target = manifest["pkg"][pkg]["target"].get(triple, {})
        official = (target.get("url") or "").rsplit("/", 1)[-1]
        if official.endswith(".tar.gz"):
            return official
        return f"{pkg}-{release}-{triple}.tar.gz"

    names = {pkg: tarball_name(pkg) for pkg in pkgs}
    with ThreadPoolExecutor(max_workers=max(1, min(len(pkgs), os.cpu_count() or 1))) as pool:
        for f in [pool.submit(installer_tarball, root, pkg, triple, day / names[pkg]) for pkg in pkgs]:
            f.result()
    served = {(pkg, triple): (f"{DEFAULT_DIST_SERVER}/dist/{date}/{names[pkg]}", _publish(day / names[pkg])) for pkg in pkgs}

    rewritten = channel_manifest(text, served)
    check_manifest(rewritten, served)
    for channel in ("stable", release):
        path = out / "dist" / f"channel-rust-{channel}.toml"
        path.write_text(rewritten)
        channel_sha = _publish(path)

    version = rustup_version(rustup)
    init = out / "rustup" / "dist" / triple / "rustup-init"
    init.parent.mkdir(parents=True)
    shutil.copyfile(rustup, init)
    init.chmod(0o755)
    init_sha = _publish(init)
    archived = out / "rustup" / "archive" / version / triple / "rustup-init"
    archived.parent.mkdir(parents=True)
    os.link(init, archived)
    _publish(archived)
    (out / "rustup" / "release-stable.toml").write_text(f"schema-version = '1'\nversion = '{version}'\n")

    return {"recipe": RECIPE_VERSION, "triple": triple, "date": date, "rust": manifest["pkg"]["rust"]["version"],
            "profile": PROFILE, "components": {pkg: {"file": f"dist/{date}/{names[pkg]}", "sha256": served[(pkg, triple)][1]}
                                               for pkg in pkgs},
            "channel_sha256": channel_sha, "rustup": version, "rustup_init_sha256": init_sha}


def ensure_tree(toolchain_root: Path | None = None, rustup: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Return the cached dist tree of this machine's toolchain, building it first when it is not there yet."""
    root = toolchain_root or toolchain.find_toolchain()
    rustup = rustup or find_rustup()
    info = toolchain.version_info(root)
    triple = info.get("host", toolchain.host_triple())
    cache = cache_dir or toolchain.default_cache_dir()
    date = info.get("commit-date", "unknown")
    dest = cache / f"rustup-dist-{info['release']}-{date}-{triple}-rustup{rustup_version(rustup)}-r{RECIPE_VERSION}"
    if (dest / "rustdist.json").is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time: a concurrent caller (another test worker) waits for it instead of building twice.
    with open(cache / ".rustup-dist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "rustdist.json").is_file():
            return dest
        for stale in cache.glob(".rustup-dist-*.tmp"):  # left by a killed build: only a lock holder makes them
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".rustup-dist-", suffix=".tmp", dir=cache))
        try:
            record = build(root, rustup, tmp, triple)
            (tmp / "rustdist.json").write_text(json.dumps(record, indent=2) + "\n")
            for dirpath, _, _ in os.walk(tmp):
                os.chmod(dirpath, 0o755)  # mkdtemp makes 0700: the tree is for any reader
            if dest.exists():  # an incomplete tree of an older run without rustdist.json
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def main() -> None:
    try:
        print(ensure_tree())
    except VoltError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
