"""The file primitives every side shares: one digest scheme, one atomic write, one walk (stdlib only, Python >= 3.7).

Ansible ships this file to the instance with each module that imports it (`ansible.module_utils.volt_fileops`);
the controller imports the very same file (`volt_ansible.fileops`). So both ends of a transfer compute a digest
with the same code, in both directions (data up, checkpoints home), and a file is hashed once per side.

Digest "sha256t": one SHA-256 per 64 MiB chunk, then a SHA-256 over the size and the chunk digests. SHA-256 is in
every Python and runs at ~1.5 GB/s per core where the CPU has SHA extensions; the chunks of all files are hashed
on every core at once (hashlib and os.pread release the GIL), so a 50 GB file is bound by the disk, not the hash.
A directory's digest ("sha256d") covers its files' relative paths, sizes and digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

DIGEST_CHUNK = 64 << 20
READ_BLOCK = 1 << 20
FILE_ALGO = "sha256t"
DIR_ALGO = "sha256d"
PARTIAL_DIR = ".rsync-partial"  # rsync's --partial-dir: never part of what a directory holds


def hash_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


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


def _combine(size: int, chunks: list) -> str:
    top = hashlib.sha256(b"volt-sha256t-v1\0" + size.to_bytes(8, "big") + b"".join(chunks))
    return f"{FILE_ALGO}:{top.hexdigest()}"


def digest_files(paths: list, workers: int | None = None, progress=None) -> dict:
    """{path: (size, digest)}. Every chunk of every file is one task of one thread pool, so one 50 GB
    file and a thousand small ones both keep every core busy. progress(bytes_done) is called as chunks finish."""
    sizes = {p: os.stat(p).st_size for p in paths}
    tasks = [(p, i) for p in paths for i in range(max(1, -(-sizes[p] // DIGEST_CHUNK)))]
    done_bytes = [0]
    lock = threading.Lock()

    def run(task):
        p, i = task
        d = _chunk_digest(p, i, sizes[p])
        if progress:
            with lock:
                done_bytes[0] += min(DIGEST_CHUNK, max(0, sizes[p] - i * DIGEST_CHUNK))
                progress(done_bytes[0])
        return d

    with ThreadPoolExecutor(workers or hash_workers()) as pool:
        results = list(pool.map(run, tasks))
    chunks = {p: [] for p in paths}
    for i, (p, _) in enumerate(tasks):
        chunks[p].append(results[i])
    return {p: (sizes[p], _combine(sizes[p], chunks[p])) for p in paths}


def file_digest(path) -> str:
    return digest_files([str(path)])[str(path)][1]


def plain_sha256(path) -> str:
    """The hex SHA-256 of a file as sha256sum prints it (not the product's sha256t): what rustup and sha256sum check,
    and what old home.json entries hold."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def dir_digest(entries: list) -> str:
    """Digest of a directory from (relative path, size, digest) of each of its files."""
    h = hashlib.sha256(b"volt-sha256d-v1\0")
    for rel, size, digest in sorted(entries):
        h.update(f"{rel}\0{size}\0{digest}\n".encode())
    return f"{DIR_ALGO}:{h.hexdigest()}"


def walk_files(root: str, skip_dirs: tuple = (PARTIAL_DIR,)) -> list:
    """(relative posix path, path) of every file under root, symlinks followed (rsync runs with
    --copy-links), the skip_dirs left out at any depth, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p):
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), p))
    out.sort()
    return out


def path_digest(path: str, kind: str) -> str | None:
    """The digest of what is at path (kind "file" or "dir"), None when it is absent or of the other kind."""
    if kind == "file":
        return file_digest(path) if os.path.isfile(path) else None
    if not os.path.isdir(path):
        return None
    files = walk_files(path)
    digests = digest_files([p for _, p in files])
    return dir_digest([(rel, digests[p][0], digests[p][1]) for rel, p in files])


def stat_signature(path: str, kind: str) -> str | None:
    """What changes when the file (or any file of the directory) is replaced or rewritten; None when absent."""
    try:
        if kind == "file":
            if not os.path.isfile(path):
                return None
            st = os.stat(path)
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


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # the rename itself survives a power cut (not every filesystem allows it)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path, mode: int = 0o644, owner: tuple | None = None, durable: bool = True):
    """Yield a temp path beside `path`; when the block ends without an exception it is chmod-ed (and chown-ed to
    owner=(uid, gid)), fsync-ed and renamed over `path`, then the directory is fsync-ed. A crash or an exception
    leaves the old file or the new one, never half of either, and no temp file behind."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, owner[0], owner[1])
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(directory)


def atomic_write(path, data, mode: int = 0o644, owner: tuple | None = None, durable: bool = True) -> None:
    """Replace `path` with data (str: UTF-8, or bytes) atomically; see atomic_path."""
    blob = data.encode() if isinstance(data, str) else data
    with atomic_path(path, mode=mode, owner=owner, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(blob)


def write_if_changed(path, data, mode: int = 0o644, owner: tuple | None = None, check: bool = False) -> bool:
    """atomic_write only when the content or the mode (or owner) differs; True when it did (or would, with check)."""
    blob = data.encode() if isinstance(data, str) else data
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            same = f.read() == blob and (st.st_mode & 0o7777) == mode and (owner is None or (st.st_uid, st.st_gid) == tuple(owner))
    except OSError:
        same = False
    if same:
        return False
    if not check:
        atomic_write(path, blob, mode=mode, owner=owner)
    return True
