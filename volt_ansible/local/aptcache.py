"""The local instances' package mirror: a caching HTTP proxy on the controller, reached over the podman network.

A real instance's apt fetches from a mirror next to it (its provider's or a CDN's), not over the operator's uplink. A
local instance runs the same `apt-get update` / `apt-get install` against the Debian mirror this machine's apt uses
(its sources.list, local/image.py), through this proxy: the local world mounts a one-line apt setting
(Acquire::http::Proxy, MOUNT) pointing at the podman bridge's gateway, where this process listens. What it fetched
once is kept under ~/.cache/volt-ansible/apt, so the next instance's apt reads from this machine:

- package files (/pool/) and by-hash index files never change under their URL: fetched once, then served from disk;
- InRelease and any other index file are fetched again once older than REFRESH_S (a copy is served when the mirror
  does not answer).

Started on demand by the local world before an instance is rented (ensure), shared by every command and test on this
machine (one per account: a lock and proxy.json beside the cache), in a session of its own, and gone after IDLE_S
without a request; the next rent starts it again, on the same port when it is free (the mounted setting is rewritten
in place otherwise, so instances that have it see the new one).

Only what apt needs passes: GET and HEAD of http:// URLs on the mirrors' hosts, from clients on the podman network,
on the bridge's address only (bound before the bridge exists: IP_FREEBIND). The instance's apt does all its work:
nothing is skipped or installed for it.

    python -m volt_ansible.local.aptcache          # start it if needed; prints the setting's path and the proxy URL
    python -m volt_ansible.local.aptcache stop
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from volt_ansible.errors import VoltError
from volt_ansible.local import image, podman, procs, toolchain

VERSION = 2  # of the proxy's code: a running proxy of another version is replaced
MOUNT = "/etc/apt/apt.conf.d/01volt-proxy"  # where instances see the setting (read-only)
REFRESH_S = 1800  # InRelease and other index files that change under their URL: fetched again when older
IDLE_S = 6 * 3600  # a proxy with no request for this long exits (the next rent starts one)
PRUNE_S = 30 * 86400  # cached files not read for this long are removed when a proxy starts
CHUNK = 1 << 18
MAX_REDIRECTS = 5
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def cache_dir() -> Path:
    return toolchain.default_cache_dir() / "apt"


def network() -> tuple[str, str]:
    """(gateway, subnet) of podman's default network, which the local instances are attached to."""
    proc = podman.run("network", "inspect", "podman", check=False)
    try:
        subnet = json.loads(proc.stdout)[0]["subnets"][0]
        ipaddress.ip_network(subnet["subnet"])
        return str(ipaddress.ip_address(subnet["gateway"])), subnet["subnet"]
    except (ValueError, LookupError, TypeError):
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise VoltError(f"local package cache: no gateway in `podman network inspect podman` ({err[-1] if err else 'no subnet'})") from None


def mirror_hosts() -> list[str]:
    """The hosts an instance's sources.list names (image.sources_list): the only ones the proxy fetches from."""
    return sorted({urlsplit(u).netloc for u in (image.apt_mirror(), image.apt_security_mirror()) if urlsplit(u).scheme == "http"})


def _running(pid: int | None) -> bool:
    """Whether `pid` is a proxy this module started."""
    return procs.started_here(pid, "volt_ansible.local.aptcache", "serve")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _terminate(pid: int) -> None:
    """End a proxy and wait for it to let go of its port (a new one binds the same port)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def _locked(directory: Path, blocking: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "proxy.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _write_in_place(path: Path, text: str) -> None:
    """Same inode: a container that has the file mounted sees the new text."""
    if path.exists() and path.read_text() == text:
        return
    with open(path, "a+") as f:
        f.seek(0)
        f.truncate()
        f.write(text)
    path.chmod(0o644)


def ensure(directory: Path | None = None) -> tuple[Path, str]:
    """Start the proxy unless one of this version is running for this network and these mirrors; return the apt
    setting to mount into instances (at MOUNT) and the proxy's URL."""
    directory = directory or cache_dir()
    gateway, subnet = network()
    hosts = mirror_hosts()
    want = {"version": VERSION, "ip": gateway, "subnet": subnet, "hosts": hosts}
    state_file = directory / "proxy.json"
    with _locked(directory):
        info = _read(state_file)
        if not (_running(info.get("pid")) and all(info.get(k) == v for k, v in want.items())):
            if _running(info.get("pid")):
                _terminate(info["pid"])
            info = _start(directory, gateway, subnet, hosts, info.get("port") or 0)
        url = f"http://{gateway}:{info['port']}/"
        conf = directory / "apt-proxy.conf"
        _write_in_place(conf, f'// volt-ansible local world: apt fetches through the controller\'s package cache '
                              f'(volt_ansible/local/aptcache.py)\nAcquire::http::Proxy "{url}";\n')
    return conf, url


def endpoint(directory: Path | None = None) -> tuple[str, int] | None:
    """(address, port) of the running proxy, or None: what the link model leaves unshaped (the mirror is next to a
    real instance, not behind the operator's uplink)."""
    info = _read((directory or cache_dir()) / "proxy.json")
    return (info["ip"], int(info["port"])) if _running(info.get("pid")) and info.get("ip") and info.get("port") else None


def _start(directory: Path, ip: str, subnet: str, hosts: list[str], port: int) -> dict:
    state_file = directory / "proxy.json"
    state_file.unlink(missing_ok=True)
    with open(directory / "proxy.log", "ab") as log:
        # cwd /: it outlives the command (and the test's project directory) that started it; PYTHONPATH: this very code
        code = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen([sys.executable, "-m", "volt_ansible.local.aptcache", "serve", str(directory), ip, str(port), subnet,
                                 ",".join(hosts)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/",
                                env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = _read(state_file)
        if info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    tail = (directory / "proxy.log").read_text(errors="replace").strip().splitlines()[-1:]
    raise VoltError(f"local package cache: the proxy did not start ({tail[0] if tail else 'no output'}): see {directory / 'proxy.log'}")


def stop(directory: Path | None = None) -> bool:
    directory = directory or cache_dir()
    with _locked(directory):
        info = _read(directory / "proxy.json")
        if _running(info.get("pid")):
            _terminate(info["pid"])  # proxy.json stays: the next start takes the same port
            return True
    return False


def stats(directory: Path | None = None) -> dict[str, int]:
    """Requests served per outcome (hit, miss, refresh, stale, pass, refused, error), from the proxy's access log."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open((directory or cache_dir()) / "access.log") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5:
                out[parts[4]] = out.get(parts[4], 0) + 1
    return out


# -- the proxy ---------------------------------------------------------------------------------------------------------


def immutable(path: str) -> bool:
    """Debian's package files and by-hash index files never change under their URL."""
    return "/pool/" in path or "/by-hash/" in path


class Cache:
    def __init__(self, directory: Path):
        self.objects = directory / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        log = directory / "access.log"
        if log.exists() and log.stat().st_size > 64 << 20:
            log.replace(directory / "access.log.1")
        self.log = log
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.last_request = time.monotonic()
        self.active = 0

    def path(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.objects / digest[:2] / digest

    def lock(self, url: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(url, threading.Lock())

    def record(self, client: str, method: str, url: str, status: int, outcome: str, size: int) -> None:
        with self._guard, open(self.log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {client} {method} {status} {outcome} {size} {url}\n")

    def prune(self) -> None:
        cutoff = time.time() - PRUNE_S
        for p in self.objects.glob("*/*"):
            with contextlib.suppress(OSError):
                if max(p.stat().st_atime, p.stat().st_mtime) < cutoff or p.name.startswith("."):
                    p.unlink()


class _Upstream(threading.local):
    """One keep-alive connection per mirror and handler thread (apt asks for dozens of files in a row); a mirror's
    redirects are followed here, so the instance's apt only ever talks to the proxy."""

    def __init__(self):
        self.conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def _request(self, scheme: str, netloc: str, target: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        for attempt in (0, 1):  # a kept-alive connection the mirror has closed meanwhile: once more on a new one
            conn = self.conns.get((scheme, netloc))
            if conn is None:
                conn = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(netloc, timeout=60)
                self.conns[(scheme, netloc)] = conn
            try:
                conn.request("GET", target, headers={"User-Agent": "volt-ansible-aptcache", "Accept-Encoding": "identity"})
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException):
                self.drop(conn)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        for _ in range(MAX_REDIRECTS):
            parts = urlsplit(url)
            conn, resp = self._request(parts.scheme, parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            location = resp.getheader("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return conn, resp
            resp.read()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise http.client.HTTPException(f"redirected to {url}")
        raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")

    def drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self.conns = {k: c for k, c in self.conns.items() if c is not conn}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: apt sends its requests down one connection
    cache: Cache
    hosts: frozenset[str]
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    upstream = _Upstream()

    def log_message(self, *args) -> None:  # the access log is Cache.record
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse(self, status: int, why: str) -> None:
        self.cache.record(self.client_address[0], self.command, self.path, status, "refused", 0)
        body = f"volt-ansible package cache: {why}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        self.cache.last_request = time.monotonic()
        with self.cache._guard:
            self.cache.active += 1
        try:
            self._answer(head)
        finally:
            with self.cache._guard:
                self.cache.active -= 1
            self.cache.last_request = time.monotonic()

    def _answer(self, head: bool) -> None:
        if ipaddress.ip_address(self.client_address[0]) not in self.subnet:
            return self._refuse(403, "only instances on the podman network may use this proxy")
        url = urlsplit(self.path)
        if url.scheme != "http" or url.netloc not in self.hosts or not url.path.startswith("/") or ".." in url.path.split("/"):
            return self._refuse(403, f"only http:// URLs on {', '.join(sorted(self.hosts))} pass")
        key = f"http://{url.netloc}{url.path}" + (f"?{url.query}" if url.query else "")
        cached = self.cache.path(key)
        if immutable(url.path) and cached.is_file():
            return self._send_file(cached, key, head, "hit")
        with self.cache.lock(key):
            fresh = cached.is_file() and (immutable(url.path) or time.time() - cached.stat().st_mtime < REFRESH_S)
            if fresh:
                return self._send_file(cached, key, head, "hit")
            self._fetch(key, cached, head)

    def _send_file(self, path: Path, key: str, head: bool, outcome: str) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not head:
                while chunk := f.read(CHUNK):
                    self.wfile.write(chunk)
        self.cache.record(self.client_address[0], self.command, key, 200, outcome, size)

    def _fetch(self, key: str, cached: Path, head: bool) -> None:
        had = cached.is_file()
        try:
            conn, resp = self.upstream.get(key)
        except (OSError, http.client.HTTPException) as e:
            if had:  # the mirror does not answer: the copy apt got last time is better than nothing
                return self._send_file(cached, key, head, "stale")
            return self._refuse(502, f"the mirror did not answer for {key}: {e}")
        length = resp.getheader("Content-Length")
        if resp.status != 200 or length is None:
            body = resp.read()  # small (an error page) or unsized: passed on whole, never cached
            if resp.status != 200 and had and resp.status >= 500:
                return self._send_file(cached, key, head, "stale")
            self.send_response(resp.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            self.cache.record(self.client_address[0], self.command, key, resp.status, "pass", len(body))
            return
        size = int(length)
        cached.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", dir=cached.parent)
        got, client_gone = 0, head
        try:
            with os.fdopen(fd, "wb") as out:
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    if not client_gone:
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            client_gone = True  # the rest still goes into the cache: the next apt gets it from here
            if got != size:
                raise OSError(f"short read: {got} of {size} bytes")
            os.chmod(tmp, 0o644)
            os.replace(tmp, cached)
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # the client was promised `size` bytes: only a closed connection tells it
            self.upstream.drop(conn)
            self.cache.record(self.client_address[0], self.command, key, 200, "error", got)
            return
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.cache.record(self.client_address[0], self.command, key, 200, "refresh" if had else "miss", size)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    cache: Cache

    def server_bind(self) -> None:
        # The bridge (and its address) exists only while a container is attached: bind the address before it does.
        self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        super().server_bind()


def make_server(directory: Path, ip: str, port: int, subnet: str, hosts: list[str]) -> Server:
    """The proxy, bound (not serving yet): apt's requests from `subnet` for `hosts`, cached under `directory`."""
    cache = Cache(directory)
    cache.prune()
    handler = type("Handler", (Handler,), {"cache": cache, "hosts": frozenset(hosts), "subnet": ipaddress.ip_network(subnet)})
    try:
        server = Server((ip, port), handler)
    except OSError:
        if not port:
            raise
        server = Server((ip, 0), handler)  # the old port is taken: a new one (ensure rewrites the setting in place)
    server.cache = cache
    return server


def serve(directory: Path, ip: str, port: int, subnet: str, hosts: list[str]) -> int:
    server = make_server(directory, ip, port, subnet, hosts)
    cache = server.cache
    info = {"pid": os.getpid(), "version": VERSION, "ip": ip, "port": server.server_address[1], "subnet": subnet, "hosts": hosts}
    fd, tmp = tempfile.mkstemp(prefix=".proxy.", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, directory / "proxy.json")

    def idle_watch() -> None:
        while True:
            time.sleep(60)
            if cache.active or time.monotonic() - cache.last_request < IDLE_S:
                continue
            with _locked(directory, blocking=False) as mine:  # not while a rent is deciding whether this one runs
                if not mine:
                    continue
                if _read(directory / "proxy.json").get("pid") == os.getpid():
                    (directory / "proxy.json").unlink(missing_ok=True)
                server.shutdown()
                return

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    threading.Thread(target=idle_watch, daemon=True).start()
    server.serve_forever()
    server.server_close()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 6:
        directory, ip, port, subnet, hosts = argv[1:]
        return serve(Path(directory), ip, int(port), subnet, [h for h in hosts.split(",") if h])
    if argv == ["stop"]:
        print("stopped" if stop() else "not running")
        return 0
    if not argv:
        try:
            conf, url = ensure()
        except VoltError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{conf} {url}")
        return 0
    print("usage: python -m volt_ansible.local.aptcache [stop]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
