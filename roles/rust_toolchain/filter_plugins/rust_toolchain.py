"""Decisions of the rust_toolchain role, kept here so they are plain Python and unit-testable.

    rust_toolchain_version     'rustc 1.85.0 (4d91de4e4 2025-02-17)' -> '1.85.0'
    rust_toolchain_version_ok  the same text, min version -> bool
    rust_toolchain_probe       the role's remote probe output -> dict (what rustc/cargo are where)
    rust_toolchain_current     probe, method -> the toolchain that counts for this method
    rust_toolchain_decide      current `rustc --version`, min version, method, ... -> skip|install|update|fail
    rust_toolchain_path_problem  probe after install -> '' or why cargo/rustc on PATH is not what was installed
    rust_toolchain_triple      `uname -m` -> rustup host triple
"""

from __future__ import annotations

import re

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported outside Ansible
    AnsibleFilterError = ValueError

METHODS = ("rustup", "archive")
ACTIONS = ("skip", "install", "update", "fail")
_VERSION_RE = re.compile(r"^(?:rustc|cargo)?\s*(\d+)\.(\d+)(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\s|$)")
_MIN_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def rust_toolchain_version(text) -> str:
    """The version in `rustc --version` / `cargo --version` output ('1.86.0-nightly'), or '' if there is none."""
    m = _VERSION_RE.match(str(text or "").strip())
    if not m:
        return ""
    major, minor, patch, pre = m.groups()
    return f"{major}.{minor}.{patch or 0}" + (f"-{pre}" if pre else "")


def _key(version: str) -> tuple:
    """Sort key: a pre-release (beta, nightly) sorts below its release, as in semver."""
    core, _, pre = version.partition("-")
    nums = [int(x) for x in core.split(".")] + [0, 0]
    return (nums[0], nums[1], nums[2], 0 if pre else 1)


def _min_key(min_version) -> tuple:
    m = _MIN_RE.match(str(min_version).strip())
    if not m:
        raise AnsibleFilterError(f"rust_toolchain_min_version must look like 1.85 or 1.85.0, not {min_version!r}")
    return _key(".".join(g or "0" for g in m.groups()))


def rust_toolchain_version_ok(text, min_version) -> bool:
    """True when the version in text (`rustc --version` output) is at least min_version."""
    version = rust_toolchain_version(text)
    return bool(version) and _key(version) >= _min_key(min_version)


def rust_toolchain_triple(arch) -> str:
    """rustup's host triple for `uname -m` (x86_64, aarch64/arm64)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(str(arch).strip().lower(), str(arch).strip().lower())
    if machine not in ("x86_64", "aarch64"):
        raise AnsibleFilterError(f"unsupported CPU architecture {arch!r}: rust_toolchain knows x86_64 and aarch64 (linux-gnu)")
    return f"{machine}-unknown-linux-gnu"


def rust_toolchain_probe(stdout) -> dict:
    """Parse the role's probe script output (tab-separated lines) into a dict.

    Lines: `<key>\\t<value>` for arch, home, cargo_home, rustup_home, path, zstd; `tool\\t<rustc|cargo>\\t<where>\\t<path>\\t
    <rustup beside it: 0|1>\\t<rc, -1 = missing>\\t<first line of --version>` with where = path|cargo_home|prefix;
    `bin\\t<name>\\t<absent|link|ours|foreign>\\t<link target>`; `prefixbin\\t<names in prefix/bin>`;
    `pkg\\t<apt package>\\t<installed: 0|1>`.
    """
    probe: dict = {"tools": {"rustc": {}, "cargo": {}}, "bin": {}, "prefixbin": [], "zstd": False, "packages": {}}
    for line in str(stdout or "").splitlines():
        f = line.split("\t")
        if f[0] == "tool" and len(f) >= 7:
            tool, where, path, rustup, rc, output = f[1], f[2], f[3], f[4] == "1", int(f[5] or -1), "\t".join(f[6:])
            probe["tools"].setdefault(tool, {})[where] = (
                {"path": path, "rustup": rustup, "rc": rc, "output": output, "where": where} if rc != -1 and path else {}
            )
        elif f[0] == "bin" and len(f) >= 3:
            probe["bin"][f[1]] = {"state": f[2], "target": f[3] if len(f) > 3 else ""}
        elif f[0] == "prefixbin":
            probe["prefixbin"] = sorted((f[1] if len(f) > 1 else "").split())
        elif f[0] == "pkg" and len(f) >= 3:
            probe["packages"][f[1]] = f[2] == "1"
        elif f[0] == "zstd" and len(f) > 1:
            probe["zstd"] = f[1] == "1"
        elif len(f) == 2:
            probe[f[0]] = f[1]
    return probe


def rust_toolchain_current(probe: dict, method: str) -> dict:
    """The rustc that counts: the one in the method's own place (~/.cargo/bin for rustup, the prefix for archive)
    if there is one there, else the one the non-login PATH finds; {} when there is none at all.
    `in_place` tells the two apart (an old one in place is updated; elsewhere it is shadowed or refused)."""
    own = {"rustup": "cargo_home", "archive": "prefix"}.get(method)
    if own is None:
        raise AnsibleFilterError(f"rust_toolchain_method must be one of {', '.join(METHODS)}, not {method!r}")
    rustc = probe.get("tools", {}).get("rustc", {})
    if rustc.get(own):
        return {**rustc[own], "in_place": True}
    if rustc.get("path"):
        return {**rustc["path"], "in_place": False}
    return {}


def rust_toolchain_decide(current, min_version, method, managed_by_rustup=False, path="", in_place=False) -> dict:
    """What to do about the current toolchain.

    current: the `rustc --version` output of the toolchain that counts ('' or None: there is none);
    managed_by_rustup: a rustup sits beside that rustc; path: where it is; in_place: it is in the method's own place.
    Returns {action: skip|install|update|fail, version, min_version, method, path, rustup, message}.
    """
    if method not in METHODS:
        raise AnsibleFilterError(f"rust_toolchain_method must be one of {', '.join(METHODS)}, not {method!r}")
    _min_key(min_version)
    text = str(current or "").strip()
    version = rust_toolchain_version(text)
    where = path or "rustc"
    plan = {"version": version, "min_version": str(min_version), "method": method, "path": path,
            "rustup": f"{path.rsplit('/', 1)[0]}/rustup" if managed_by_rustup and "/" in path else ""}

    def out(action: str, message: str) -> dict:
        return {**plan, "action": action, "message": message}

    if not text:
        return out("install", f"no rustc found: installing Rust >= {min_version} with method {method}")
    if version and _key(version) >= _min_key(min_version):
        return out("skip", f"{where} is rustc {version} (>= {min_version}): nothing to install")
    found = f"{where} is rustc {version}, older than {min_version}" if version else f"{where} does not report a version ({text!r})"
    if method == "rustup":
        if managed_by_rustup:
            return out("update", f"{found}: updating it with {plan['rustup']}")
        return out("fail", f"{found} and is not managed by rustup, so rustup cannot update it. Fix: remove it "
                           f"(e.g. apt-get remove rustc cargo, or delete {where}), or set rust_toolchain_method: archive "
                           "to install a toolchain beside it")
    if in_place:
        return out("update", f"{found}: replacing it with the toolchain in the archive")
    return out("install", f"{found}: installing the archive's toolchain beside it (it will be shadowed on PATH)")


def rust_toolchain_path_problem(probe: dict, min_version, bin_dir: str = "/usr/local/bin") -> str:
    """After the role's work: '' when a non-login shell's PATH finds cargo and rustc >= min_version, else the problem."""
    problems = []
    for tool in ("rustc", "cargo"):
        found = probe.get("tools", {}).get(tool, {}).get("path") or {}
        if not found:
            problems.append(f"{tool} is not on the non-login PATH ({probe.get('path', '?')})")
            continue
        if rust_toolchain_version_ok(found["output"], min_version):
            continue
        version = rust_toolchain_version(found["output"]) or repr(found["output"])
        hint = ""
        if probe.get("bin", {}).get(tool, {}).get("state") == "foreign":
            hint = f"; {bin_dir}/{tool} is not this role's, so it was left alone: remove it"
        elif not found["path"].startswith(f"{bin_dir}/"):
            hint = f"; it comes before {bin_dir} on PATH: remove it or put {bin_dir} first"
        problems.append(f"{tool} on the non-login PATH is {found['path']} ({version}), older than {min_version}{hint}")
    return "; ".join(problems)


class FilterModule:
    def filters(self):
        return {
            "rust_toolchain_version": rust_toolchain_version,
            "rust_toolchain_version_ok": rust_toolchain_version_ok,
            "rust_toolchain_triple": rust_toolchain_triple,
            "rust_toolchain_probe": rust_toolchain_probe,
            "rust_toolchain_current": rust_toolchain_current,
            "rust_toolchain_decide": rust_toolchain_decide,
            "rust_toolchain_path_problem": rust_toolchain_path_problem,
        }
