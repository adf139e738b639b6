"""The pre-flight of the data, before renting (`volt-ansible check`) and in the role: every source exists, is readable
and is a file or a directory as declared, and a job's JSONL input has the record fields its binary needs; sizes and
digests (cached by path + size + mtime); transfer order (needed-first, then small-first); zstd only where it pays."""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from volt_ansible.datasync import records
from volt_ansible.datasync.manifest import MANIFEST_NAME, DigestCache, Item, Manifest, parse_manifest
from volt_ansible.errors import VoltError
from volt_ansible.fileops import digest_files, dir_digest, walk_files
from volt_ansible.spec import parse, read

COMPRESSIBLE_EXT = {"jsonl", "json", "txt", "csv", "tsv", "py", "md", "xml", "yaml", "yml", "html", "log", "rs", "c", "h", "js", "ts"}
INCOMPRESSIBLE_EXT = {"safetensors", "bin", "pt", "pth", "ckpt", "npy", "npz", "gz", "tgz", "zst", "xz", "bz2", "zip", "7z",
                      "parquet", "arrow", "jpg", "jpeg", "png", "webp", "mp4", "lz4", "br"}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"



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
    if not problems and jobs_spec:
        problems = records.problems(selected, jobs_spec)
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
