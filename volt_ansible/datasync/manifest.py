"""The manifest (group_vars/all.yml: volt_data): its items, their validation (one line per problem, naming the key and
the fix), the dest checks against what the training jobs write, and the controller's digest cache."""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from volt_ansible import curriculum
from volt_ansible.errors import VoltError
from volt_ansible.fileops import DIGEST_CHUNK, FILE_ALGO, PARTIAL_DIR, atomic_write

SYNC_DIR = ".volt-sync"  # on the instance, under root_remote: the markers (and lib/, the instance side of the driver)
MANIFEST_NAME = "data-manifest.json"
DEFAULT_ROOT_REMOTE = "/root/volt-x"
DEFAULT_LOCAL_ROOT = "~/VoltData"
DEFAULT_JOB_ORDER = ["stage1", "phase03", "stage2", "stage3"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# What roles/training_tmux writes under root_remote unless group_vars overrides it (its defaults/main.yml).
def job_paths(jobs_spec: dict) -> tuple[list[tuple[str, str]], set[str]]:
    """What the training jobs write and read (curriculum.job_paths), from the spec's job tables and training_tmux settings."""
    p03, cur = jobs_spec.get("volt_phase03"), jobs_spec.get("volt_curriculum")
    settings = curriculum.settings_from(jobs_spec)
    return curriculum.job_paths(curriculum.resolve(p03, cur, settings), settings)


def _check_dests(items: list[Item], raw_items: list, jobs_spec: dict) -> None:
    """No dest may wipe or overwrite what a training job writes (a dir item goes with rsync --delete)."""
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
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n", mode=0o600, durable=False)
