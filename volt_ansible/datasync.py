#!/usr/bin/env python3
"""The data the training jobs need: manifest, pre-flight, digests, and the transfer driver of roles/data_sync.

One self-contained file, standard library only, Python >= 3.8, because it runs in three places:

- on the controller, imported: `check()` is the pre-flight behind `volt-ansible check` (before renting);
- on the controller, as a script: `plan` (the role's pre-flight), `sync` (the background transfer
  driver: rsync, verify, markers) and `status` (what `tasks_from: wait` polls);
- on the instance, fed to `python3 -` over SSH: `probe`, `verify` and `ready`. Both ends compute
  the digest with this same code, so they cannot drift apart.

Digest: "sha256t", a two-level SHA-256 (one SHA-256 per 64 MiB chunk, then a SHA-256 over the size
and the chunk digests). SHA-256 is in every Python and runs at ~1.5 GB/s per core where the CPU has
SHA extensions (EPYC, recent Intel, Apple M); the chunks are hashed on every core at once (hashlib and
os.pread release the GIL), so a 50 GB file is bound by the disk, not the hash. xxh128 (xxhsum) would
be faster per core but is not installed on the CUDA images, macOS or WSL, and is not collision-safe.
The controller caches digests by path + size + mtime in `<VOLT_DIR>/data-manifest.json`, so a file
is hashed once; the instance writes `<root>/.volt-sync/<item>.verified` (the digest) and a `.stat`
signature beside it, so a second run re-hashes nothing that did not change.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:  # the controller has the package; the instance runs this file alone
    from volt_ansible.errors import VoltError
    from volt_ansible.ssh import host_key_line
except ImportError:  # pragma: no cover - exercised on the instance (and by a controller python without the package)

    class VoltError(Exception):  # type: ignore[no-redef]
        """A failure the user can act on (one line)."""

    def host_key_line(text: str, who: str, known_hosts: object = None) -> str | None:
        # still refused (ssh's own last line is shown), only not reworded
        return None


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; run the controller in WSL
    fcntl = None  # type: ignore[assignment]

DIGEST_CHUNK = 64 << 20
READ_BLOCK = 1 << 20
FILE_ALGO = "sha256t"
DIR_ALGO = "sha256d"
SYNC_DIR = ".volt-sync"
PARTIAL_DIR = ".rsync-partial"
MANIFEST_NAME = "data-manifest.json"
DEFAULT_ROOT_REMOTE = "/root/volt-x"
DEFAULT_LOCAL_ROOT = "~/VoltData"
DEFAULT_JOB_ORDER = ["stage1", "phase03", "stage2", "stage3"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# rsync exit codes that mean the connection, not the data, failed: retried (and resumed).
RSYNC_NETWORK_RC = {10, 12, 20, 30, 35, 255}
RSYNC_MIN_VERSION = (3, 2, 3)
MUX_BELOW_BYTES = 64 << 20  # items smaller than this share the driver's SSH connection  # --compress-choice=zstd and --mkpath
COMPRESSIBLE_EXT = {"jsonl", "json", "txt", "csv", "tsv", "py", "md", "xml", "yaml", "yml", "html", "log", "rs", "c", "h", "js", "ts"}
INCOMPRESSIBLE_EXT = {"safetensors", "bin", "pt", "pth", "ckpt", "npy", "npz", "gz", "tgz", "zst", "xz", "bz2", "zip", "7z",
                      "parquet", "arrow", "jpg", "jpeg", "png", "webp", "mp4", "lz4", "br"}


def _hash_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------------------------
# Digests (both ends)


def _chunk_digest(path: str, index: int, size: int) -> bytes:
    h = hashlib.sha256()
    off = index * DIGEST_CHUNK
    end = min(size, off + DIGEST_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        while off < end:
            block = os.pread(fd, min(READ_BLOCK, end - off), off)
            if not block:
                raise OSError(f"{path} shrank while it was being hashed")
            h.update(block)
            off += len(block)
    finally:
        os.close(fd)
    return h.digest()


def _combine(size: int, chunks: list[bytes]) -> str:
    top = hashlib.sha256(b"volt-sha256t-v1\0" + size.to_bytes(8, "big") + b"".join(chunks))
    return f"{FILE_ALGO}:{top.hexdigest()}"


def digest_files(paths: list[str], workers: int | None = None, progress=None) -> dict[str, tuple[int, str]]:
    """{path: (size, digest)}. Every chunk of every file is one task of one thread pool, so one 50 GB
    file and a thousand small ones both keep every core busy."""
    sizes = {p: os.stat(p).st_size for p in paths}
    tasks = [(p, i) for p in paths for i in range(max(1, -(-sizes[p] // DIGEST_CHUNK)))]
    done_bytes = [0]
    lock = threading.Lock()

    def run(task: tuple[str, int]) -> bytes:
        p, i = task
        d = _chunk_digest(p, i, sizes[p])
        if progress:
            with lock:
                done_bytes[0] += min(DIGEST_CHUNK, max(0, sizes[p] - i * DIGEST_CHUNK))
                progress(done_bytes[0])
        return d

    with ThreadPoolExecutor(workers or _hash_workers()) as pool:
        results = list(pool.map(run, tasks))
    chunks: dict[str, list[bytes]] = {p: [] for p in paths}
    for i, (p, _) in enumerate(tasks):
        chunks[p].append(results[i])
    return {p: (sizes[p], _combine(sizes[p], chunks[p])) for p in paths}


def file_digest(path: str | os.PathLike) -> str:
    return digest_files([str(path)])[str(path)][1]


def dir_digest(entries: list[tuple[str, int, str]]) -> str:
    """Digest of a directory: its files' relative paths, sizes and digests, sorted."""
    h = hashlib.sha256(b"volt-sha256d-v1\0")
    for rel, size, digest in sorted(entries):
        h.update(f"{rel}\0{size}\0{digest}\n".encode())
    return f"{DIR_ALGO}:{h.hexdigest()}"


def walk_files(root: str) -> list[tuple[str, str]]:
    """(relative posix path, path) of every file under root, symlinks followed (rsync runs with
    --copy-links), rsync's partial dirs skipped, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != PARTIAL_DIR)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p):
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), p))
    out.sort()
    return out


def stat_signature(path: str, kind: str) -> str | None:
    """What changes when the file (or any file of the directory) is replaced or rewritten; None when absent."""
    try:
        if kind == "file":
            st = os.stat(path)
            if not os.path.isfile(path):
                return None
            return f"f:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        if not os.path.isdir(path):
            return None
        h = hashlib.sha256()
        for rel, p in walk_files(path):
            st = os.stat(p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        return f"d:{h.hexdigest()}"
    except OSError:
        return None


def path_digest(path: str, kind: str) -> str | None:
    """The digest of what is at path (file or directory), None when it is absent or the wrong kind."""
    if kind == "file":
        return file_digest(path) if os.path.isfile(path) else None
    if not os.path.isdir(path):
        return None
    files = walk_files(path)
    digests = digest_files([p for _, p in files])
    return dir_digest([(rel, digests[p][0], digests[p][1]) for rel, p in files])


# ---------------------------------------------------------------------------------------------
# The manifest (group_vars/all.yml: volt_data) and the local digest cache


@dataclass
class Item:
    name: str
    src: str  # absolute local path
    dest: str  # relative to root_remote, no trailing slash
    kind: str  # file | dir
    jobs: list[str]
    compress: object = "auto"  # true | false | "auto"
    enabled: bool = True
    size: int = 0
    files: int = 0
    digest: str = ""
    compress_on: bool = False
    tier: int = 0
    hashed_bytes: int = 0  # read for this check (0: every digest came from the cache)


@dataclass
class Manifest:
    root_remote: str
    local_root: str
    job_order: list[str]
    items: list[Item]

    def jobs(self) -> dict[str, list[str]]:
        """job -> the names of every item it needs (enabled or not), in manifest order."""
        out: dict[str, list[str]] = {}
        for it in self.items:
            for j in it.jobs:
                out.setdefault(j, []).append(it.name)
        return out


def _where(i: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"volt_data.items[{i}]" + (f" ({name})" if name else "")


def _as_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise VoltError(f"{where} = {value!r}: use true or false")


def _did_you_mean(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# What roles/training_tmux writes under root_remote unless group_vars overrides it (its defaults/main.yml).
TRAINING_DEFAULTS = {"training_tmux_bin_dir": "target/release", "training_tmux_status_dir": "logs", "training_tmux_script_dir": ".volt-train",
                     "training_tmux_chain_name": "phase21", "training_tmux_epoch_owner_file": ".volt-epochs",
                     "training_tmux_epoch_archive": "epochs"}


def _flag_values(args: object, flag: object) -> list[str]:
    value = args.get(flag) if isinstance(args, dict) and flag else None
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v not in (None, True, False, "")]


def job_paths(jobs_spec: dict) -> tuple[list[tuple[str, str]], set[str]]:
    """([(path or glob, what it is)], input paths) of the training jobs (volt_phase03, volt_curriculum), relative to the
    repository on the instance: outputs, epoch checkpoints (next to each stage's output), logs, status files, scripts,
    binaries. Paths that are absolute or leave the repository are not ours to guard and are left out."""
    knobs = {**TRAINING_DEFAULTS, **{k: v for k, v in jobs_spec.items() if k in TRAINING_DEFAULTS and isinstance(v, str)}}
    out: list[tuple[str, str]] = []
    inputs: set[str] = set()

    def add(path: str, what: str) -> None:
        path = os.path.normpath(path).replace(os.sep, "/")
        if not path.startswith("/") and path != "." and not path.startswith("../"):
            out.append((path, what))

    jobs = []
    p03, cur = jobs_spec.get("volt_phase03"), jobs_spec.get("volt_curriculum")
    if isinstance(p03, dict):
        jobs.append((p03, p03.get("args") or {}, p03, False))
    if isinstance(cur, dict):
        common = cur.get("args") if isinstance(cur.get("args"), dict) else {}
        for st in cur.get("stages") or []:
            if isinstance(st, dict):
                jobs.append((st, {**common, **(st.get("args") if isinstance(st.get("args"), dict) else {})}, cur, True))
    sdir = knobs["training_tmux_status_dir"]
    for defn, args, kind, epochs in jobs:
        name = str(defn.get("name") or "?")
        for flag in kind.get("inputs") or []:
            inputs.update(os.path.normpath(v) for v in _flag_values(args, flag))
        if kind.get("bin"):
            add(f"{knobs['training_tmux_bin_dir']}/{kind['bin']}", f"the binary {kind['bin']}")
        if defn.get("log"):
            add(str(defn["log"]), f"the log of job {name}")
        add(f"{sdir}/{name}.status", f"the status of job {name}")
        for output in _flag_values(args, kind.get("output")):
            add(output, f"the output of job {name}")
            if epochs:
                edir = os.path.dirname(output) or "."
                stem, ext = os.path.splitext(os.path.basename(output))
                add(f"{edir}/{stem}_epoch_*{ext}", f"the epoch checkpoints of job {name}")
                template = str(kind.get("epoch_checkpoint") or "")
                if "{epoch}" in template:
                    add(f"{edir}/{template.replace('{epoch}', '*')}", f"the epoch checkpoints of job {name}")
                add(f"{edir}/{knobs['training_tmux_epoch_archive']}", "the archived epoch checkpoints")
                add(f"{edir}/{knobs['training_tmux_epoch_owner_file']}", "the epoch checkpoints' owner file")
    chain = knobs["training_tmux_chain_name"]
    add(f"{sdir}/{chain}.status", f"the status of the {chain} chain")
    add(f"{sdir}/{chain}.log", f"the log of the {chain} chain")
    add(knobs["training_tmux_script_dir"], "the job scripts")
    return out, inputs


def _check_dests(items: list[Item], raw_items: list, jobs_spec: dict) -> None:
    """No dest may wipe or overwrite what a training job writes (a dir item goes with rsync --delete)."""
    import fnmatch

    guarded, inputs = job_paths(jobs_spec)
    for i, it in enumerate(items):
        where = _where(i, raw_items[i])
        d = it.dest
        ancestors = ["/".join(d.split("/")[:n]) for n in range(1, d.count("/") + 2)]  # d's parents, then d itself
        for path, what in guarded:
            is_glob = any(c in path for c in "*?[")
            inside = any(fnmatch.fnmatchcase(a, path) if is_glob else a == path for a in ancestors)
            if it.kind == "file":
                if inside and d not in inputs:
                    raise VoltError(f"{where}.dest = {d!r} would overwrite {what} ({path}) on the instance: give the item a dest of its own, "
                                    f"e.g. data/{os.path.basename(d)}")
                continue
            contains = (os.path.dirname(path) + "/").startswith(d + "/") if is_glob else path.startswith(d + "/")
            if inside or contains:
                how = "is inside" if inside else "contains"
                raise VoltError(f"{where}.dest = {d + '/'!r} {how} {what} ({path}): a dir item is sent with rsync --delete and would "
                                f"delete it on the next re-send: give the item a directory of its own, e.g. data/{it.name}/")


def parse_manifest(volt_data: object, jobs_spec: dict | None = None) -> Manifest:
    """Validate volt_data; every problem is one line naming the key and the fix.

    jobs_spec: {volt_phase03, volt_curriculum, training_tmux_* overrides} (group_vars): no dest may reach what the jobs
    write (outputs, epoch checkpoints, logs, status files), since a dir item is sent with rsync --delete."""
    if not isinstance(volt_data, dict):
        raise VoltError("volt_data is missing or not a mapping: add the volt_data section of group_vars/all.yml (root_remote, local_root, items)")
    known = {"root_remote", "local_root", "job_order", "items"}
    extra = sorted(set(volt_data) - known)
    if extra:
        raise VoltError(f"volt_data.{extra[0]} is not a known key{_did_you_mean(extra[0], known)}: use {', '.join(sorted(known))}")
    root_remote = str(volt_data.get("root_remote") or DEFAULT_ROOT_REMOTE)
    if not root_remote.startswith("/"):
        raise VoltError(f"volt_data.root_remote = {root_remote!r}: must be an absolute path on the instance (e.g. /root/volt-x)")
    local_root = os.path.abspath(os.path.expanduser(str(volt_data.get("local_root") or DEFAULT_LOCAL_ROOT)))
    job_order = volt_data.get("job_order") or list(DEFAULT_JOB_ORDER)
    if not isinstance(job_order, list) or not all(isinstance(j, str) and NAME_RE.match(j) for j in job_order):
        raise VoltError(f"volt_data.job_order = {job_order!r}: must be a list of job names (e.g. [stage1, phase03, stage2, stage3])")
    raw_items = volt_data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise VoltError("volt_data.items is missing or empty: list the files the jobs need (name, src, dest, kind, jobs)")
    items: list[Item] = []
    names: set[str] = set()
    dests: dict[str, str] = {}
    item_keys = {"name", "src", "dest", "kind", "jobs", "compress", "enabled"}
    for i, raw in enumerate(raw_items):
        where = _where(i, raw)
        if not isinstance(raw, dict):
            raise VoltError(f"{where} must be a mapping with name, src, dest, kind, jobs")
        extra = sorted(set(raw) - item_keys)
        if extra:
            raise VoltError(f"{where}.{extra[0]} is not a known key{_did_you_mean(extra[0], item_keys)}: use {', '.join(sorted(item_keys))}")
        for key in ("name", "src", "dest"):
            if not raw.get(key) or not isinstance(raw[key], str):
                raise VoltError(f"{where}.{key} is missing: add it")
        name = raw["name"]
        if not NAME_RE.match(name):
            raise VoltError(f"{where}.name = {name!r}: use letters, digits, _ . - (it names the marker file on the instance)")
        if name in names:
            raise VoltError(f"{where}.name = {name!r} is used twice: item names must be unique")
        names.add(name)
        kind = raw.get("kind", "file")
        if kind not in ("file", "dir"):
            raise VoltError(f"{where}.kind = {kind!r}: use file or dir")
        jobs = raw.get("jobs") or []
        if not isinstance(jobs, list) or not all(isinstance(j, str) and NAME_RE.match(j) for j in jobs):
            raise VoltError(f"{where}.jobs = {jobs!r}: must be a list of job names (e.g. [stage1, phase03])")
        compress = raw.get("compress", "auto")
        if compress not in (True, False, "auto"):
            raise VoltError(f"{where}.compress = {compress!r}: use true, false or auto")
        enabled = _as_bool(raw.get("enabled", True), f"{where}.enabled")
        src = os.path.join(local_root, os.path.expanduser(raw["src"]))
        src = os.path.abspath(src.rstrip("/") or "/")
        dest = raw["dest"].strip()
        while dest.startswith("./"):
            dest = dest[2:]
        if kind == "file" and dest.endswith("/"):
            dest += os.path.basename(src)
        dest = dest.rstrip("/")
        parts = dest.split("/")
        if dest in ("", ".") and not raw["dest"].strip().startswith("/"):
            raise VoltError(f"{where}.dest = {raw['dest']!r} is root_remote itself ({root_remote}): sending there would replace (a dir item: "
                            f"rsync --delete) the clone, the binaries and the checkpoints: give the item a path of its own, e.g. data/{name}")
        if dest.startswith("/") or ".." in parts or "." in parts or "" in parts or parts[0] == SYNC_DIR or PARTIAL_DIR in parts:
            raise VoltError(f"{where}.dest = {raw['dest']!r}: must be a path relative to root_remote ({root_remote}) without . or .. "
                            "parts, e.g. data/x.jsonl")
        if dest in dests:
            raise VoltError(f"{where}.dest = {dest!r} is also the dest of {dests[dest]}: each item needs its own dest")
        dests[dest] = name
        items.append(Item(name=name, src=src, dest=dest, kind=kind, jobs=list(jobs), compress=compress, enabled=enabled))
    if jobs_spec:  # first: wiping finished work is the worse outcome
        _check_dests(items, raw_items, jobs_spec)
    for it in items:  # a dest inside another item's dir would be sent twice and break both digests
        for other in items:
            if other.kind == "dir" and it is not other and it.dest.startswith(other.dest + "/"):
                raise VoltError(f"item {it.name}: dest {it.dest} is inside the dir of item {other.name} ({other.dest}/): move one of them")
    return Manifest(root_remote.rstrip("/") or "/", local_root, list(job_order), items)


class DigestCache:
    """`<VOLT_DIR>/data-manifest.json`: digests by absolute path + size + mtime, and the last check's items."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"version": 1, "algorithm": f"{FILE_ALGO}/{DIGEST_CHUNK >> 20}MiB", "files": {}, "items": {}}
        try:
            loaded = json.loads(path.read_text())
            if loaded.get("version") == 1 and loaded.get("algorithm") == self.data["algorithm"]:
                self.data.update(loaded)
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or unreadable: start over (it is only a cache)

    def get(self, path: str, st: os.stat_result) -> str | None:
        e = self.data["files"].get(path)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            return e.get("digest")
        return None

    def put(self, path: str, st: os.stat_result, digest: str) -> None:
        self.data["files"][path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n", mode=0o600)


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _compressible(paths: list[tuple[str, int]]) -> bool:
    """By extension; for unknown extensions by a zlib sample. For a directory: by the majority of its bytes."""
    yes = no = 0
    for p, size in paths:
        ext = p.rsplit(".", 1)[-1].lower() if "." in os.path.basename(p) else ""
        if ext in COMPRESSIBLE_EXT:
            verdict = True
        elif ext in INCOMPRESSIBLE_EXT:
            verdict = False
        else:
            verdict = _sample_compresses(p, size)
        if verdict:
            yes += size
        else:
            no += size
    return yes > no


def _sample_compresses(path: str, size: int) -> bool:
    try:
        with open(path, "rb") as f:
            sample = b""
            for off in (0, size // 2, max(0, size - 65536)):
                f.seek(off)
                sample += f.read(65536)
    except OSError:
        return False
    return bool(sample) and len(zlib.compress(sample, 1)) < 0.8 * len(sample)


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


# ---------------------------------------------------------------------------------------------
# Pre-flight (controller)


@dataclass
class Report:
    """What `check()` found: every enabled item with its size and digest, per-job totals, the manifest path."""

    manifest: Manifest
    items: list[Item]  # the checked items (enabled, and needed by the requested jobs if any), in transfer order
    manifest_path: Path
    hashed_bytes: int = 0
    cached_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.items)

    def job_bytes(self) -> dict[str, int]:
        by_name = {i.name: i for i in self.items}
        return {j: sum(by_name[n].size for n in names if n in by_name) for j, names in self.manifest.jobs().items()}

    def lines(self) -> list[str]:
        """Human-readable summary, one line per item and per job."""
        out = [f"{len(self.items)} items, {human(self.total_bytes)}; digests in {self.manifest_path} "
               f"({human(self.hashed_bytes)} hashed now, {human(self.cached_bytes)} from the cache)"]
        width = max((len(i.name) for i in self.items), default=4)
        for i in self.items:
            jobs = ",".join(i.jobs) or "-"
            z = "zstd" if i.compress_on else "raw"
            out.append(f"  {i.name:<{width}}  {human(i.size):>9}  {i.kind:<4}  {z:<4}  {i.digest[:20]}  {i.src} -> {i.dest}  [{jobs}]")
        for job, size in self.job_bytes().items():
            out.append(f"  job {job}: {len(self.manifest.jobs()[job])} items, {human(size)}")
        out += [f"  warning: {w}" for w in self.warnings]
        return out

    def plan(self) -> dict:
        """What the role needs: items in transfer order, job -> items, root, local rsync."""
        return {
            "root_remote": self.manifest.root_remote,
            "job_order": self.manifest.job_order,
            "items": [asdict(i) for i in self.items],
            "jobs": self.manifest.jobs(),
            "disabled": [i.name for i in self.manifest.items if not i.enabled],
            "total_bytes": self.total_bytes,
            "manifest_path": str(self.manifest_path),
            "warnings": self.warnings,
        }


def _needed_by(item: Item) -> str:
    return "needed by " + ", ".join(item.jobs) if item.jobs else "needed by no job"


def _tier(item: Item, job_order: list[str]) -> int:
    ranks = [job_order.index(j) for j in item.jobs if j in job_order]
    if ranks:
        return min(ranks)
    return len(job_order) + (0 if item.jobs else 1)  # jobs not in job_order, then items no job needs


def preflight(volt_data: object, volt_dir: Path, jobs: list[str] | None = None, progress=None, only_jobs: bool = True,
              jobs_spec: dict | None = None) -> Report:
    """Check every source before renting: it exists, is readable, is a file or a directory as declared;
    record sizes and digests (cached by path + size + mtime) in <volt_dir>/data-manifest.json.

    jobs: these jobs must be able to start; with only_jobs, check only the items they need (default:
    every enabled item). jobs_spec: see parse_manifest. Raises VoltError (one line).
    """
    m = parse_manifest(volt_data, jobs_spec)
    all_jobs = m.jobs()
    by_name = {i.name: i for i in m.items}
    warnings = []
    for job in jobs or []:
        if job not in all_jobs:
            raise VoltError(f"job {job!r} is needed by no item of volt_data.items: jobs named there are {', '.join(sorted(all_jobs)) or 'none'}")
    for job, names in all_jobs.items():
        off = [n for n in names if not by_name[n].enabled]
        if off:
            msg = f"job {job} needs {', '.join(off)}, which is disabled (enabled: false): it can never start"
            if jobs and job in jobs:
                raise VoltError(msg + ": enable the item or do not wait for the job")
            warnings.append(msg)
    selected = [i for i in m.items if i.enabled and (not jobs or not only_jobs or set(i.jobs) & set(jobs))]

    problems = []
    for it in selected:
        p = it.src
        if not os.path.lexists(p):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} does not exist: fix volt_data.local_root ({m.local_root}) "
                            f"or the item's src, or set enabled: false")
        elif not os.path.exists(p):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is a broken symlink")
        elif it.kind == "file" and os.path.isdir(p):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is a directory but the item says kind: file: set kind: dir")
        elif it.kind == "dir" and not os.path.isdir(p):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is a file but the item says kind: dir: set kind: file")
        elif it.kind == "file" and not os.path.isfile(p):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is not a regular file")
        elif not os.access(p, os.R_OK | (os.X_OK if it.kind == "dir" else 0)):
            problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is not readable by this user: fix its permissions")
        elif it.kind == "dir":
            files = walk_files(p)
            unreadable = [f for _, f in files if not os.access(f, os.R_OK)]
            if not files:
                problems.append(f"data item {it.name} ({_needed_by(it)}): {p} is an empty directory: point src at the data or set enabled: false")
            elif unreadable:
                problems.append(f"data item {it.name} ({_needed_by(it)}): {unreadable[0]} is not readable by this user: fix its permissions")
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise VoltError(problems[0] + more)

    cache = DigestCache(Path(volt_dir) / MANIFEST_NAME)
    files_of: dict[str, list[tuple[str, str]]] = {}
    try:
        for it in selected:
            files_of[it.name] = [("", it.src)] if it.kind == "file" else walk_files(it.src)
        stats = {p: os.stat(p) for files in files_of.values() for _, p in files}
        digests = {p: cache.get(p, st) for p, st in stats.items()}
        missing = sorted(p for p, d in digests.items() if d is None)
        hashed_bytes = sum(stats[p].st_size for p in missing)
        if missing:
            hashed = digest_files(missing, progress=(lambda done: progress(done, hashed_bytes)) if progress else None)
            for p in missing:
                digests[p] = hashed[p][1]
                cache.put(p, stats[p], hashed[p][1])
    except OSError as e:
        raise VoltError(f"reading the local data failed: {e}: is a file being written or removed? check it and run again") from None
    missing_set = set(missing)
    for it in selected:
        files = files_of[it.name]
        it.size = sum(stats[p].st_size for _, p in files)
        it.files = len(files)
        it.hashed_bytes = sum(stats[p].st_size for _, p in files if p in missing_set)
        if it.kind == "file":
            it.digest = digests[it.src]
        else:
            it.digest = dir_digest([(rel, stats[p].st_size, digests[p]) for rel, p in files])
        it.compress_on = bool(it.compress) if it.compress != "auto" else _compressible([(p, stats[p].st_size) for _, p in files])
        it.tier = _tier(it, m.job_order)
        cache.data["items"][it.name] = {"src": it.src, "dest": it.dest, "kind": it.kind, "size": it.size, "files": it.files,
                                        "digest": it.digest, "jobs": it.jobs}
    cache.save()
    selected.sort(key=lambda i: (i.tier, i.size, i.name))
    return Report(m, selected, cache.path, hashed_bytes=hashed_bytes, cached_bytes=sum(i.size for i in selected) - hashed_bytes,
                  warnings=warnings)


def check(spec_file: str | os.PathLike = "group_vars/all.yml", volt_dir: str | os.PathLike | None = None,
          jobs: list[str] | None = None, progress=None, local_root: str | os.PathLike | None = None) -> Report:
    """`volt-ansible check`: the pre-flight of the data in `spec_file`'s volt_data, before renting.

    volt_dir: where data-manifest.json (the digest cache) lives; default $VOLT_DIR, else ./.volt.
    jobs: check only what these jobs need (default: every enabled item).
    progress: optional callable(done_bytes, total_bytes) while files are hashed.
    local_root: instead of volt_data.local_root (the local backend's world keeps its own data).
    Returns a Report (`.lines()` to print, `.items`, `.total_bytes`); raises VoltError with one line.
    """
    from volt_ansible.spec import parse, read

    path = Path(spec_file)
    data = read(path)
    if "volt_data" not in data:
        raise VoltError(f"{path} has no volt_data section: add it (see the volt_data block of the project's group_vars/all.yml)")
    parse(data, str(path))  # the whole spec (keys, the jobs' numeric flags): check is the last stop before renting
    vdir = Path(volt_dir) if volt_dir is not None else Path(os.environ.get("VOLT_DIR", ".volt"))
    volt_data = data["volt_data"]
    if local_root is not None and isinstance(volt_data, dict):
        volt_data = {**volt_data, "local_root": str(local_root)}
    return preflight(volt_data, vdir.absolute(), jobs, progress, jobs_spec=data)


# ---------------------------------------------------------------------------------------------
# The instance side (run as `python3 - <command> '<json>'` with this file on stdin)


def _markers(root: str) -> str:
    return os.path.join(root, SYNC_DIR)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def remote_probe(args: dict) -> dict:
    """Free disk, rsync, and which items are verified and unchanged since (marker digest and stat signature)."""
    root = args["root"]
    probe = root
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    mdir = _markers(root)
    valid = []
    need = 0
    for it in args["items"]:
        path = os.path.join(root, it["dest"])
        marker = _read(os.path.join(mdir, it["name"] + ".verified"))
        sig = _read(os.path.join(mdir, it["name"] + ".stat"))
        if not args.get("reverify") and marker and marker == it["digest"] and sig and sig == stat_signature(path, it["kind"]):
            valid.append(it["name"])
            continue
        # what will land: the whole item (rsync writes a new copy, then renames it), unless a copy of the
        # same size is already there (re-verified, at most patched); a partial file does not count
        present = _present_bytes(path, it["kind"])
        need += 0 if present == it.get("size", -1) else it.get("size", 0)
    try:
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    ready = sorted(f[: -len(".ready")] for f in (os.listdir(mdir) if os.path.isdir(mdir) else []) if f.endswith(".ready"))
    return {"free_bytes": st.f_bavail * st.f_frsize, "free_path": probe, "valid": valid, "need_bytes": need, "ready": ready,
            "rsync": rsync_capabilities(out)}


def _present_bytes(path: str, kind: str) -> int:
    try:
        if kind == "file":
            return os.path.getsize(path) if os.path.isfile(path) else 0
        return sum(os.path.getsize(p) for _, p in walk_files(path)) if os.path.isdir(path) else 0
    except OSError:
        return 0


def _reject(root: str, name: str, dest: str, kind: str) -> str | None:
    """Move a copy that failed verification off its final path; return where it went."""
    path = os.path.join(root, dest)
    if not os.path.lexists(path):
        return None
    if kind == "file":
        # rsync takes a file in the partial dir as the basis of the next transfer of that file
        aside = os.path.join(os.path.dirname(path), PARTIAL_DIR, os.path.basename(path))
    else:
        aside = os.path.join(_markers(root), "rejected", name)
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside)
    elif os.path.lexists(aside):
        os.unlink(aside)
    os.replace(path, aside)
    return aside


def remote_verify(args: dict) -> dict:
    """Hash each item where it landed; on a match write <item>.verified (the digest) and <item>.stat,
    then mark the jobs those items complete (the markers on disk decide, so concurrent calls agree).
    args: root, items [{name, dest, kind, expect}], reject (move a mismatching copy aside), jobs, digests."""
    root = args["root"]
    mdir = _markers(root)
    os.makedirs(mdir, exist_ok=True)
    results = {}
    for it in args["items"]:
        name, kind = it["name"], it["kind"]
        path = os.path.join(root, it["dest"])
        t0 = time.time()
        got = path_digest(path, kind)
        ok = got is not None and got == it["expect"]
        res = {"ok": ok, "digest": got, "seconds": round(time.time() - t0, 3), "rejected_to": None}
        if ok:
            sig = stat_signature(path, kind) or ""
            _atomic_write(Path(mdir, name + ".stat"), sig + "\n")
            _atomic_write(Path(mdir, name + ".verified"), got + "\n")
        else:
            for suffix in (".verified", ".stat"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(mdir, name + suffix))
            if args.get("reject"):
                res["rejected_to"] = _reject(root, name, it["dest"], kind)
        results[name] = res
    done = {n for n, r in results.items() if r["ok"]}
    jobs = {j: names for j, names in (args.get("jobs") or {}).items() if done & set(names)}
    ready = remote_ready({"root": root, "jobs": jobs, "digests": args.get("digests", {})}) if jobs else {"ready": [], "written": []}
    return {"results": results, **ready}


def remote_ready(args: dict) -> dict:
    """Write <job>.ready for every job of args["jobs"] ({job: [items]}) whose items all carry a .verified
    marker with the digest in args["digests"]; a job with an item without a digest (disabled) never is."""
    mdir = _markers(args["root"])
    os.makedirs(mdir, exist_ok=True)
    digests = args.get("digests", {})
    written, ready = [], []
    for job, names in sorted(args["jobs"].items()):
        if names and all(digests.get(n) and _read(os.path.join(mdir, n + ".verified")) == digests[n] for n in names):
            ready.append(job)
            marker = os.path.join(mdir, job + ".ready")
            content = "".join(f"{n} {digests[n]}\n" for n in sorted(names))
            if _read(marker) != content.strip():
                _atomic_write(Path(marker), content)
                written.append(job)
    return {"ready": ready, "written": written}


def remote_prepare(args: dict) -> dict:
    """Before the first byte moves: forget the markers of the items about to be sent (and the .ready of
    every job needing one of them), then mark the jobs whose items are all verified already."""
    mdir = _markers(args["root"])
    os.makedirs(mdir, exist_ok=True)
    send = set(args.get("send", []))
    stale = [n + sfx for n in sorted(send) for sfx in (".verified", ".stat")]
    stale += [j + ".ready" for j, names in sorted(args["jobs"].items()) if send & set(names)]
    removed = []
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(mdir, name))
            removed.append(name)
    res = remote_ready(args)
    return {"removed": removed, **res}


# ---------------------------------------------------------------------------------------------
# The transfer driver (controller, in the background)


def ssh_argv(ssh: dict, control: str | None = None, master: bool = True) -> list[str]:
    """ssh with the inventory's connection: key, port, user and the inventory's/ansible.cfg's ssh args
    (the pinned UserKnownHostsFile included). Options given first win in ssh, so ours come first:
    a data connection of its own per transfer (parallel items = parallel TCP streams, each with its
    own SSH channel window), or the driver's multiplexed control connection for the short commands."""
    argv = ["ssh"]
    if control and master:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=60"]
    elif control:  # use the control connection when it is up, else connect directly
        argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={control}"]
    else:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    argv += ["-o", "BatchMode=yes", "-o", "ForwardAgent=no", "-o", "Compression=no", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
             "-o", f"ConnectTimeout={int(ssh.get('connect_timeout', 20))}"]
    if ssh.get("port"):
        argv += ["-p", str(ssh["port"])]
    if ssh.get("key"):
        argv += ["-i", str(ssh["key"])]
    if ssh.get("user"):
        argv += ["-l", str(ssh["user"])]
    for extra in ssh.get("args") or []:
        argv += shlex.split(str(extra or ""))
    return argv


def _refused(ssh: dict, stderr: str) -> str | None:
    """ssh.host_key_line for this connection: a changed host key is never retried."""
    return host_key_line(stderr, f"the instance at {ssh.get('host')}:{ssh.get('port') or 22}")


def probe_instance(req: dict, items: list[dict]) -> dict:
    """remote_probe on the instance, over one SSH connection made like the driver's."""
    args = {"root": req["root"], "reverify": bool(req.get("reverify")),
            "items": [{k: it[k] for k in ("name", "dest", "kind", "digest", "size")} for it in items]}
    line = f"{req.get('remote_python', 'python3')} - probe {shlex.quote(json.dumps(args))}"
    host = req["ssh"]["host"]
    last = ""
    for attempt in range(3):
        p = subprocess.run([*ssh_argv(req["ssh"]), host, line], input=Path(__file__).read_bytes(), capture_output=True)
        if p.returncode == 0:
            return json.loads(p.stdout.decode().strip().splitlines()[-1])
        err = p.stderr.decode(errors="replace")
        last = (err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        if p.returncode != 255:
            raise VoltError(f"probing {host} failed: {last}: is python3 installed there (run the bootstrap role)?")
        refused = _refused(req["ssh"], err)
        if refused:
            raise VoltError(refused)
        time.sleep(2 * (attempt + 1))
    raise VoltError(f"cannot reach {host} over SSH: {last}")


def _parse_stats(text: str) -> dict:
    def num(label: str) -> int | None:
        m = re.search(rf"^{label}: ([\d,.]+)", text, re.M)
        return int(m.group(1).replace(",", "").replace(".", "")) if m else None

    return {"sent": num("Total bytes sent"), "literal": num("Literal data"), "matched": num("Matched data"),
            "files_transferred": num("Number of regular files transferred")}


class Driver:
    """Send the plan's items tier by tier (the items of earlier jobs first, several of a tier at once),
    verify each on the instance, re-send once on a mismatch, write the markers, report in a status file."""

    def __init__(self, plan: dict, status_path: Path, log_path: Path | None = None):
        self.plan = plan
        self.status_path = status_path
        self.log_file = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed in run()
        self.opts = plan.get("options", {})
        self.root = plan["root"]
        self.ssh = plan["ssh"]
        self.lock = threading.RLock()  # re-entrant: stop() runs as a signal handler in the main thread
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.procs: set[subprocess.Popen] = set()
        self.engine = Path(__file__).read_bytes()
        self.digests: dict[str, str] = dict(plan.get("digests", {}))
        self.verified: set[str] = set(plan.get("verified", []))
        self.items = {it["name"]: it for it in plan["items"]}
        self.status = {
            "run_id": plan.get("run_id", ""), "pid": os.getpid(), "state": "running", "started": time.time(), "updated": time.time(),
            "error": None, "ready_jobs": [], "jobs": plan.get("jobs", {}), "bytes_sent": 0,
            "items": {n: {"state": "queued", "size": it["size"], "tier": it.get("tier", 0), "attempts": [], "resent": False,
                          "transfer_seconds": 0.0, "verify_seconds": 0.0} for n, it in self.items.items()},
        }
        self.control_dir = tempfile.mkdtemp(prefix="vds-", dir="/tmp")  # short: ControlPath must fit 108 bytes
        self.control = os.path.join(self.control_dir, "cm")

    # -- bookkeeping
    def log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def save(self) -> None:
        with self.lock:
            self.status["updated"] = time.time()
            _atomic_write(self.status_path, json.dumps(self.status, indent=1) + "\n", mode=0o600)

    def set_item(self, name: str, **kv) -> None:
        with self.lock:
            self.status["items"][name].update(kv)
        self.save()

    def fail(self, name: str, error: str) -> None:
        self.log(f"FAILED {name}: {error}")
        with self.lock:
            self.status["items"][name].update(state="failed", error=error)
            if not self.status["error"]:
                self.status["error"] = error
        self.save()

    # -- processes
    def _run(self, argv: list[str], stdin: bytes | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with self.lock:
            self.procs.add(proc)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            with self.lock:
                self.procs.discard(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def remote(self, command: str, args: dict) -> dict:
        """Run this file's `command` on the instance (python3 -, over the control connection), with retries."""
        host = self.ssh["host"]
        line = f"{self.opts.get('remote_python', 'python3')} - {command} {shlex.quote(json.dumps(args))}"
        last = ""
        for attempt in range(int(self.opts.get("retries", 5)) + 1):
            if self.stopping.is_set():
                raise VoltError("stopped")
            p = self._run([*ssh_argv(self.ssh, self.control), host, line], stdin=self.engine)
            if p.returncode == 0:
                return json.loads(p.stdout.decode().strip().splitlines()[-1])
            err = p.stderr.decode(errors="replace")
            last = (err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            if p.returncode != 255:  # python failed on the instance: not a connection problem
                raise VoltError(f"{command} on the instance failed: {last}")
            refused = _refused(self.ssh, err)
            if refused:
                raise VoltError(refused)
            self.log(f"ssh failed ({last}); retry {attempt + 1}")
            self._sleep(self._delay(attempt))
        raise VoltError(f"ssh to {host} kept failing: {last}")

    def _delay(self, attempt: int) -> float:
        return min(60.0, float(self.opts.get("retry_delay_s", 5)) * (2 ** attempt))

    # -- one item
    def rsync_argv(self, it: dict, force: bool) -> list[str]:
        host = self.ssh["host"]
        host = f"[{host}]" if ":" in host else host
        argv = ["rsync", "-rt", "--copy-links", "-s", f"--partial-dir={PARTIAL_DIR}", "--mkpath", "--stats",
                f"--timeout={int(self.opts.get('io_timeout_s', 120))}"]
        if it.get("compress_on"):
            argv += ["--compress", "--compress-choice=zstd", f"--compress-level={int(self.opts.get('zstd_level', 3))}"]
        if int(self.opts.get("bwlimit_kbps", 0)) > 0:
            argv.append(f"--bwlimit={int(self.opts['bwlimit_kbps'])}")
        if force:
            argv.append("--ignore-times")  # a verified mismatch: compare every block again, send what differs
        dest = f"{self.root}/{it['dest']}"
        src = it["src"]
        if it["kind"] == "dir":
            argv.append("--delete")  # the dir's digest covers exactly the source's files
            src, dest = src + "/", dest + "/"
        # small items ride the driver's control connection (no SSH handshake each); big ones get a
        # connection of their own (a TCP stream and an SSH channel window each)
        ssh = ssh_argv(self.ssh, self.control, master=False) if it["size"] < MUX_BELOW_BYTES else ssh_argv(self.ssh)
        return [*argv, "-e", shlex.join(ssh), src, f"{host}:{dest}"]

    def transfer(self, name: str, force: bool = False) -> bool:
        it = self.items[name]
        argv = self.rsync_argv(it, force)
        retries = int(self.opts.get("retries", 5))
        self.set_item(name, state="sending")
        for attempt in range(retries + 1):
            if self.stopping.is_set():
                return False
            self.log(f"send {name} ({human(it['size'])}, {'zstd' if it.get('compress_on') else 'raw'}) attempt {attempt + 1}")
            t0 = time.time()
            p = self._run(argv)
            seconds = time.time() - t0
            stats = _parse_stats(p.stdout.decode(errors="replace"))
            stderr = p.stderr.decode(errors="replace")
            err = (stderr.strip().splitlines() or [""])[-1]
            rec = {"rc": p.returncode, "seconds": round(seconds, 3), "force": force, "error": err if p.returncode else None, **stats}
            with self.lock:
                st = self.status["items"][name]
                st["attempts"].append(rec)
                st["transfer_seconds"] = round(st["transfer_seconds"] + seconds, 3)
                self.status["bytes_sent"] += stats["sent"] or 0
            self.save()
            if p.returncode == 0:
                self.log(f"sent {name} in {seconds:.1f}s ({human(stats['sent'] or 0)} on the wire)")
                return True
            if self.stopping.is_set():
                return False
            refused = _refused(self.ssh, stderr)
            if refused:
                self.fail(name, refused)
                return False
            if p.returncode not in RSYNC_NETWORK_RC and p.returncode >= 0:
                self.fail(name, f"{name}: rsync to {self.ssh['host']} failed (rc={p.returncode}): {err}")
                return False
            self.log(f"{name}: connection lost (rc={p.returncode}: {err}); resuming in {self._delay(attempt):.0f}s")
            if attempt < retries:
                self._sleep(self._delay(attempt))
        self.fail(name, f"{name}: rsync to {self.ssh['host']} failed {retries + 1} times (last rc={p.returncode}: {err}): "
                        f"check the connection, then run the data_sync role again: it resumes from the partial file")
        return False

    def _verify_call(self, names: list[str], reject: bool) -> dict:
        items = [{"name": n, "dest": self.items[n]["dest"], "kind": self.items[n]["kind"], "expect": self.items[n]["digest"]} for n in names]
        return self.remote("verify", {"root": self.root, "items": items, "reject": reject, "jobs": self.plan.get("jobs", {}),
                                      "digests": self.digests})

    def verify(self, names: list[str]) -> bool:
        """Verify sent items in one call on the instance; a mismatching item is sent again once and
        checked again, then fails loudly."""
        try:
            for n in names:
                self.set_item(n, state="verifying")
            res = self._verify_call(names, reject=False)
            self._verified(res)
            ok = True
            for name, r in res["results"].items():
                if not r["ok"]:
                    ok = self._resend(name, r) and ok
            return ok
        except VoltError as e:
            for n in names:
                if self.status["items"][n]["state"] != "verified":
                    self.fail(n, f"{n}: {e}")
            return False

    def _verified(self, res: dict) -> None:
        for name, r in res["results"].items():
            with self.lock:
                self.status["items"][name]["verify_seconds"] += r.get("seconds", 0)
            if r["ok"]:
                self.set_item(name, state="verified", remote_digest=r["digest"])
                self.log(f"verified {name}")
                with self.lock:
                    self.verified.add(name)
        self.mark_ready(res)

    def _resend(self, name: str, first: dict) -> bool:
        it = self.items[name]
        self.log(f"{name}: digest on the instance {first['digest']} != {it['digest']}: sending it again")
        self.set_item(name, resent=True, remote_digest=first["digest"])
        if not self.transfer(name, force=True):
            return False
        self.set_item(name, state="verifying")
        res = self._verify_call([name], reject=True)
        self._verified(res)
        r = res["results"][name]
        if r["ok"]:
            return True
        changed = self._source_changed(it)
        where = f"moved to {r['rejected_to']}" if r.get("rejected_to") else "not on the instance"
        self.fail(name, f"{name}: digest mismatch after a re-send: the instance has {r['digest']}, the local manifest says "
                        f"{it['digest']} ({where}; no job needing it ({', '.join(it['jobs']) or 'none'}) will start)"
                        + (f": {it['src']} changed since the pre-flight, run the role again" if changed
                           else ": check the source and the instance's disk, then run the role again"))
        return False

    def _source_changed(self, it: dict) -> bool:
        try:
            if it["kind"] == "file":
                return os.stat(it["src"]).st_size != it["size"]
            return sum(os.stat(p).st_size for _, p in walk_files(it["src"])) != it["size"]
        except OSError:
            return True

    def mark_ready(self, res: dict) -> None:
        """Record the jobs the instance marked ready after a verify."""
        with self.lock:
            new = sorted(set(res.get("ready", [])) - set(self.status["ready_jobs"]))
            self.status["ready_jobs"] = sorted(set(self.status["ready_jobs"]) | set(new))
        if new:
            self.log(f"ready: {', '.join(new)}")
        self.save()

    # -- the whole plan
    def run(self) -> int:
        self.save()
        try:
            # before the first byte moves: forget the markers of what is about to be sent (and the .ready
            # of the jobs needing it), mark the jobs already complete; this also opens the control connection
            res = self.remote("prepare", {"root": self.root, "send": sorted(self.items), "jobs": self.plan.get("jobs", {}),
                                          "digests": self.digests})
            if res["removed"]:
                self.log(f"forgot markers: {', '.join(res['removed'])}")
            with self.lock:
                self.status["ready_jobs"] = sorted(res["ready"])
            tiers: dict[int, list[str]] = {}
            for it in sorted(self.items.values(), key=lambda i: (i.get("tier", 0), i["size"], i["name"])):
                tiers.setdefault(it.get("tier", 0), []).append(it["name"])
            verifies = []
            workers = max(1, int(self.opts.get("parallel", 3)))
            with ThreadPoolExecutor(workers) as sender, ThreadPoolExecutor(max(2, workers)) as checker:
                for rank, tier in enumerate(sorted(tiers)):
                    # the whole link goes to this tier's items; the next tier starts when they are sent.
                    # The first tier (the first job's items, small) is verified in one call before the
                    # next starts, so that job can start at once; later tiers overlap verification with
                    # the next transfer.
                    futures = {sender.submit(self._send_one, name): name for name in tiers[tier]}
                    if rank == 0:
                        sent = [futures[f] for f in as_completed(futures) if f.result()]
                        if sent:
                            self.verify(sent)
                    else:
                        for fut in as_completed(futures):
                            if fut.result():
                                verifies.append(checker.submit(self.verify, [futures[fut]]))
                    if self.abort.is_set() or self.stopping.is_set():
                        break
                for fut in verifies:
                    fut.result()
            with self.lock:
                failed = [n for n, s in self.status["items"].items() if s["state"] != "verified"]
                if self.stopping.is_set():
                    self.status["state"] = "stopped"
                    self.status["error"] = self.status["error"] or "the transfer was stopped before it finished: run the data_sync role again"
                elif failed:
                    self.status["state"] = "failed"
                    if not self.status["error"]:
                        self.status["error"] = f"not sent: {', '.join(failed)} (an earlier failure stopped the transfer)"
                else:
                    self.status["state"] = "done"
            self.save()
            self.log(f"finished: {self.status['state']}")
            return 0 if self.status["state"] == "done" else 1
        except Exception as e:  # the status file must say why the driver stopped
            with self.lock:
                self.status["state"] = "failed"
                self.status["error"] = self.status["error"] or (str(e) if isinstance(e, VoltError) else
                                                                f"data_sync driver crashed: {type(e).__name__}: {e}")
            self.save()
            raise
        finally:
            subprocess.run([*ssh_argv(self.ssh, self.control), "-O", "exit", self.ssh["host"]], capture_output=True)
            shutil.rmtree(self.control_dir, ignore_errors=True)
            if self.log_file:
                self.log_file.close()

    def _send_one(self, name: str) -> bool:
        if self.abort.is_set() or self.stopping.is_set():
            return False
        ok = self.transfer(name)
        if not ok:
            self.abort.set()  # the link or the disk is in trouble: start nothing new
        return ok

    def stop(self, *_: object) -> None:
        self.stopping.set()
        with self.lock:
            for p in list(self.procs):
                with contextlib.suppress(OSError):
                    p.terminate()


def _lock(path: Path, blocking: bool):
    """An exclusive lock held while a driver runs for this host; None when not acquired."""
    if fcntl is None:
        return open(path, "a")  # noqa: SIM115
    f = open(path, "a")  # noqa: SIM115 - held for the life of the driver
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return f
    except OSError:
        f.close()
        return None


def status(status_path: Path, wanted: list[str] | None, run_id: str | None = None, started: float | None = None,
           start_grace_s: float = 60) -> dict:
    """Where the driver for one host stands. wanted: jobs to wait for (None: everything).

    finished: stop waiting. satisfied: True/False, or None when no driver says (the markers decide).
    """
    lock_path = status_path.with_suffix(".lock")
    running = False
    if lock_path.exists():
        held = _lock(lock_path, blocking=False)
        running = held is None
        if held:
            held.close()
    try:
        st = json.loads(status_path.read_text())
    except (OSError, ValueError):
        st = None
    if run_id and (st is None or str(st.get("run_id")) != str(run_id)):
        if running or (started and time.time() - started < start_grace_s):
            return {"finished": False, "satisfied": False, "state": "starting", "error": None, "summary": "waiting for the transfer to start"}
        return {"finished": True, "satisfied": False, "state": "missing", "summary": "",
                "error": f"the data_sync transfer did not start (no status in {status_path}): see {status_path.with_suffix('.log')}"}
    if st is None:
        return {"finished": True, "satisfied": None, "state": "none", "error": None, "summary": "no transfer recorded"}
    items = st.get("items", {})
    verified = sum(1 for s in items.values() if s.get("state") == "verified")
    summary = f"{verified}/{len(items)} items verified, {human(st.get('bytes_sent', 0))} sent, ready: {', '.join(st.get('ready_jobs', [])) or 'none'}"
    state = st.get("state")
    if state == "running" and not running:
        state = "stopped"
        st["error"] = st.get("error") or (f"the transfer (pid {st.get('pid')}) stopped before it finished (killed or timed out): "
                                          "run the data_sync role again: it resumes where it stopped")
    ready = set(st.get("ready_jobs", []))
    satisfied = (state == "done") if wanted is None else set(wanted) <= ready
    finished = satisfied or state != "running"
    return {"finished": finished, "satisfied": satisfied, "state": state, "error": None if satisfied else st.get("error"),
            "summary": summary, "ready": sorted(ready)}


# ---------------------------------------------------------------------------------------------
# Command line


def _fail(msg: str, code: int = 2) -> int:
    print(msg, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="datasync", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="pre-flight: JSON {volt_data} on stdin -> the transfer plan on stdout")
    p.add_argument("--volt-dir", required=True)
    p.add_argument("--jobs", default="", help="comma-separated jobs that must be able to start")
    s = sub.add_parser("sync", help="transfer a plan (the role starts this in the background)")
    s.add_argument("--plan", help="the plan file")
    s.add_argument("--plan-json", help="the plan itself (kept in <status>.plan.json for reference)")
    s.add_argument("--status", required=True)
    s.add_argument("--log")
    w = sub.add_parser("status", help="JSON: where the transfer stands for the wanted jobs")
    w.add_argument("--status", required=True)
    w.add_argument("--jobs", default="", help="comma-separated; empty: wait for everything")
    w.add_argument("--run-id")
    w.add_argument("--started", type=float)
    for name in ("probe", "prepare", "verify", "ready"):
        r = sub.add_parser(name, help=f"instance side: {name}")
        r.add_argument("args")
    a = ap.parse_args(argv)

    if a.cmd in ("probe", "prepare", "verify", "ready"):
        fn = {"probe": remote_probe, "prepare": remote_prepare, "verify": remote_verify, "ready": remote_ready}[a.cmd]
        print(json.dumps(fn(json.loads(a.args))))
        return 0
    if a.cmd == "plan":
        try:
            request = json.loads(sys.stdin.read())
            # {"volt_data": ..., "probe": {"ssh", "root", "reverify", "remote_python"}}, or the volt_data alone
            volt_data = request.get("volt_data", request) if isinstance(request, dict) else request
            # every enabled item is sent; --jobs only says which jobs must be able to start
            jobs_spec = request.get("jobs") if isinstance(request, dict) and isinstance(request.get("jobs"), dict) else None
            report = preflight(volt_data, Path(a.volt_dir).absolute(), [j for j in a.jobs.split(",") if j] or None, only_jobs=False,
                               jobs_spec=jobs_spec)
            plan = report.plan()
            plan["local_rsync"] = local_rsync()
            if isinstance(request, dict) and request.get("probe"):
                plan["probe"] = probe_instance(request["probe"], plan["items"])
        except VoltError as e:
            return _fail(str(e))
        except ValueError as e:
            return _fail(f"the manifest is not valid JSON: {e}")
        print(json.dumps(plan))
        return 0
    if a.cmd == "status":
        print(json.dumps(status(Path(a.status), [j for j in a.jobs.split(",") if j] or None, a.run_id, a.started)))
        return 0
    # sync
    if not (a.plan or a.plan_json):
        return _fail("sync needs --plan or --plan-json")
    status_path = Path(a.status)
    status_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = _lock(status_path.with_suffix(".lock"), blocking=True)  # one driver per host at a time
    try:
        if a.plan_json:
            plan = json.loads(a.plan_json)
            _atomic_write(status_path.with_suffix(".plan.json"), json.dumps(plan, indent=1) + "\n", mode=0o600)
        else:
            plan = json.loads(Path(a.plan).read_text())
        driver = Driver(plan, status_path, Path(a.log) if a.log else None)
        signal.signal(signal.SIGTERM, driver.stop)
        signal.signal(signal.SIGINT, driver.stop)
        rc = driver.run()
        st = driver.status
        print(json.dumps({"state": st["state"], "error": st["error"], "ready_jobs": st["ready_jobs"], "bytes_sent": st["bytes_sent"]}))
        return rc
    finally:
        if held:
            held.close()


if __name__ == "__main__":
    sys.exit(main())
