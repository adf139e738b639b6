"""The local instance image is what nvidia/cuda:*-devel has (plus sshd): the product installs everything else with the
real apt-get on the instance, through the controller's package cache (volt_ansible/local/aptcache.py)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from testhost import container_root

from volt_ansible.local import aptcache, image, podman

LACKS = ("python3", "rsync", "tmux", "git", "zstd", "sudo", "gcc", "cc", "make", "pkg-config")


# -- the image ---------------------------------------------------------------------------------------------------------


@pytest.mark.podman
def test_the_instance_image_has_what_nvidia_cuda_devel_has_and_nothing_the_roles_install():
    script = (
        f"for c in {' '.join(LACKS)} curl sshd; do command -v $c >/dev/null && echo has $c || echo no $c; done; "
        "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' build-essential libssl-dev python3-apt 2>/dev/null; "
        "echo lists: $(ls /var/lib/apt/lists | grep -v -x -e partial -e lock); "
        "test -s /etc/ssl/certs/ca-certificates.crt && echo has ca-roots; cat /etc/apt/sources.list"
    )
    out = podman.out("run", "--rm", image.ensure(image.BARE), "sh", "-c", script)
    for command in LACKS:
        assert f"no {command}" in out, out
    assert "has curl" in out and "has sshd" in out and "has ca-roots" in out, out
    assert not re.search(r"^ii ", out, re.M), out  # build-essential, libssl-dev, python3-apt: not installed
    assert re.search(r"^lists:$", out, re.M), out  # no package lists: the first apt needs an update, as on nvidia/cuda
    assert f"deb {image.apt_mirror()} bookworm main" in out and "bookworm-security" in out, out


# -- the package cache, against a mirror double on 127.0.0.1 ------------------------------------------------------------


class Mirror:
    """A tiny HTTP mirror: serves `files`, counts requests per path, can go down."""

    def __init__(self, files: dict[str, bytes], redirects: dict[str, str] | None = None):
        self.files, self.hits, self.redirects = files, {}, redirects or {}
        mirror = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.hits[self.path] = mirror.hits.get(self.path, 0) + 1
                if self.path in mirror.redirects:
                    self.send_response(302)
                    self.send_header("Location", mirror.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = mirror.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                body = body if body is not None else b"not here"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(tmp_path):
    files = {"/debian/pool/main/p/python3/python3_3.11_amd64.deb": os.urandom(700_000),
             "/debian/dists/bookworm/InRelease": b"Origin: Debian\n",
             "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/ab12": b"Package: python3\n"}
    mirror = Mirror(files, {"/debian/pool/main/m/moved/moved_1_amd64.deb": "/debian/pool/main/p/python3/python3_3.11_amd64.deb"})
    server = aptcache.make_server(tmp_path, "127.0.0.1", 0, "127.0.0.0/8", [mirror.host])
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield mirror, server, tmp_path
    server.shutdown()
    server.server_close()
    mirror.down()


def through(server, url: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    conn = conn or http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("GET", url)
    resp = conn.getresponse()
    return resp.status, resp.read()


def settled(directory: Path, want: dict[str, int]) -> dict[str, int]:
    """The proxy's counts once they reach `want` (each request is logged just after its last byte went out)."""
    deadline = time.monotonic() + 10
    while (got := aptcache.stats(directory)) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def test_package_files_are_fetched_once_then_served_from_the_cache(proxy):
    mirror, server, directory = proxy
    deb, by_hash = "/debian/pool/main/p/python3/python3_3.11_amd64.deb", "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/ab12"
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)  # apt sends its requests down one connection
    for _ in range(3):
        assert through(server, f"http://{mirror.host}{deb}", conn) == (200, mirror.files[deb])
        assert through(server, f"http://{mirror.host}{by_hash}", conn) == (200, mirror.files[by_hash])
    assert mirror.hits == {deb: 1, by_hash: 1}
    assert settled(directory, {"miss": 2, "hit": 4}) == {"miss": 2, "hit": 4}


def test_index_files_are_fetched_again_once_old_and_served_stale_when_the_mirror_is_down(proxy):
    mirror, server, directory = proxy
    url = f"http://{mirror.host}/debian/dists/bookworm/InRelease"
    assert through(server, url)[0] == 200 and through(server, url)[0] == 200
    assert mirror.hits["/debian/dists/bookworm/InRelease"] == 1  # fresh: from the cache
    mirror.files["/debian/dists/bookworm/InRelease"] = b"Origin: Debian\nDate: later\n"
    cached = server.cache.path(url)
    old = time.time() - aptcache.REFRESH_S - 1
    os.utime(cached, (old, old))
    assert through(server, url) == (200, b"Origin: Debian\nDate: later\n")  # old: fetched again
    assert mirror.hits["/debian/dists/bookworm/InRelease"] == 2
    settled(directory, {"miss": 1, "hit": 1, "refresh": 1})  # the client has every byte just before the copy is renamed
    os.utime(cached, (old, old))
    mirror.down()
    assert through(server, url) == (200, b"Origin: Debian\nDate: later\n")  # the mirror is gone: the last copy
    assert settled(directory, {"miss": 1, "hit": 1, "refresh": 1, "stale": 1}) == {"miss": 1, "hit": 1, "refresh": 1, "stale": 1}


def test_a_mirrors_redirect_is_followed_by_the_proxy(proxy):
    mirror, server, directory = proxy
    url = f"http://{mirror.host}/debian/pool/main/m/moved/moved_1_amd64.deb"
    for _ in range(2):
        assert through(server, url) == (200, mirror.files["/debian/pool/main/p/python3/python3_3.11_amd64.deb"])
    assert mirror.hits == {"/debian/pool/main/m/moved/moved_1_amd64.deb": 1, "/debian/pool/main/p/python3/python3_3.11_amd64.deb": 1}
    assert settled(directory, {"miss": 1, "hit": 1}) == {"miss": 1, "hit": 1}


def test_misses_are_passed_on_and_not_cached(proxy):
    mirror, server, _ = proxy
    url = f"http://{mirror.host}/debian/pool/main/n/nope/nope_1_amd64.deb"
    assert through(server, url)[0] == 404 and through(server, url)[0] == 404
    assert mirror.hits["/debian/pool/main/n/nope/nope_1_amd64.deb"] == 2


def test_only_apt_requests_for_the_mirrors_from_the_instances_pass(proxy, tmp_path):
    mirror, server, _ = proxy
    for url in ("http://example.com/debian/dists/bookworm/InRelease", f"http://{mirror.host}/debian/../etc/passwd", "/debian/x"):
        status, body = through(server, url)
        assert status == 403 and b"only http:// URLs on" in body, (url, body)
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("CONNECT", f"{mirror.host}:443")
    assert conn.getresponse().status == 501
    # a client outside the podman network (here: every client, the proxy admits 10.88.0.0/16 only)
    strict = aptcache.make_server(tmp_path / "strict", "127.0.0.1", 0, "10.88.0.0/16", [mirror.host])
    threading.Thread(target=strict.serve_forever, args=(0.05,), daemon=True).start()
    try:
        status, body = through(strict, f"http://{mirror.host}/debian/dists/bookworm/InRelease")
        assert status == 403 and b"podman network" in body
    finally:
        strict.shutdown()
        strict.server_close()
    assert mirror.hits == {}


# -- the product on it -------------------------------------------------------------------------------------------------


BOOT = """\
- name: What up.yml runs first
  hosts: volt
  gather_facts: false
  roles:
    - role: bootstrap

- name: What rust_toolchain installs its build packages with
  hosts: volt
  gather_facts: false
  tasks:
    - name: Install pkg-config with ansible.builtin.apt
      ansible.builtin.apt:
        name: pkg-config
        install_recommends: false
"""


@pytest.mark.podman
def test_the_bootstrap_installs_what_the_image_lacks_with_apt_through_the_package_cache(project):
    access = aptcache.cache_dir() / "access.log"
    start = access.stat().st_size if access.exists() else 0  # shared with every test: only what this one's instance asks
    project.cli("provision")  # the default image: bare
    assert [i["recipe"] for i in json.loads((project.volt_dir / "local" / "vast.json").read_text())["instances"].values()] == ["bare"]
    (project.root / "playbooks" / "boot.yml").write_text(BOOT)
    container = project.double().containers()[0]
    assert not project.cli("ssh", "--", "command -v python3 || true").stdout.strip()
    proxy = json.loads((aptcache.cache_dir() / "proxy.json").read_text())
    setting = project.cli("ssh", "--", f"cat {aptcache.MOUNT}").stdout
    assert f'Acquire::http::Proxy "http://{proxy["ip"]}:{proxy["port"]}/";' in setting, setting

    first = project.cli("run", "boot", timeout=600).stdout
    assert "boot ok: changed=2" in first, first  # the bootstrap's apt, then the apt module's
    have = project.cli("ssh", "--", f"for c in {' '.join(LACKS[:6])} pkg-config; do command -v $c || echo MISSING $c; done").stdout
    assert "MISSING" not in have, have

    # the instance's apt went through the cache: the index and the packages, from this container's address
    ip = podman.out("inspect", "-f", "{{.NetworkSettings.IPAddress}}", container)
    with open(access, "rb") as f:
        f.seek(start)
        seen = [ln.split() for ln in f.read().decode().splitlines() if f" {ip} " in ln]
    urls = [parts[-1] for parts in seen if parts[3] == "200"]
    assert any(u.endswith("/dists/bookworm/InRelease") for u in urls), urls
    for package in ("python3", "rsync", "git", "tmux", "zstd", "sudo", "python3-apt", "pkg-config"):
        assert any(re.search(rf"/pool/.*/{re.escape(package)}_[^/]*\.deb$", u) for u in urls), (package, urls)
    # one index update: the bootstrap's. python3-apt came with it, so ansible.builtin.apt did not run an update and an
    # install of its own first (it does when it cannot import apt_pkg)
    assert sum(u.endswith("/dists/bookworm/InRelease") for u in urls) == 1, urls

    # an apt that fails says so in the one line the CLI prints (raw over a tty: the script's line is in stdout)
    proc = project.cli("run", "boot", "-e", "bootstrap_commands={nosuch: volt-no-such-package}", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stdout + proc.stderr
    assert "volt-bootstrap: apt-get install volt-no-such-package failed:" in lines[0], lines
    assert "Unable to locate package volt-no-such-package" in lines[0], lines

    again = project.cli("run", "boot").stdout
    assert "boot ok: changed=0" in again, again  # everything there: no apt at all


@pytest.mark.podman
def test_a_bootstrap_interrupted_while_dpkg_runs_is_finished_by_the_next_run(project):
    """Ctrl-C of `up` while the bootstrap's apt installs, then that apt dies too (the instance's OOM killer, a reboot):
    dpkg is left half done, and the next run finishes it instead of failing on "dpkg was interrupted"."""
    project.cli("provision")
    (project.root / "playbooks" / "boot.yml").write_text(BOOT)
    container = project.double().containers()[0]

    def inside(script: str) -> str:
        return podman.run("exec", container, "sh", "-c", script, check=False).stdout.decode()

    first = subprocess.Popen([sys.executable, "-m", "volt_ansible", "run", "boot"], cwd=project.root, env=project.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    journal = container_root(container) / "var/lib/dpkg/updates"  # read from here: no podman exec per look

    def dpkg_mid_work() -> bool:  # its journal has entries (apt also runs short `dpkg --print-foreign-architectures` calls)
        try:
            return any(journal.iterdir())
        except OSError:
            return False

    while not dpkg_mid_work():
        assert first.poll() is None and time.monotonic() < deadline, f"dpkg never ran: {first.communicate()[0][-3000:]}"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does (apt on the instance goes on: it ignores SIGHUP)
    inside("for d in /proc/[0-9]*; do case $(cat $d/comm 2>/dev/null) in apt-get|dpkg) kill -9 ${d#/proc/};; esac; done")
    first.communicate(timeout=120)
    assert inside("ls -A /var/lib/dpkg/updates; dpkg --audit").strip(), "dpkg was not left half done: nothing to test"

    again = project.cli("run", "boot", timeout=600).stdout
    assert "boot ok" in again, again
    state = inside(f"dpkg --audit; ls -A /var/lib/dpkg/updates; for c in {' '.join(LACKS[:6])} pkg-config; do "
                   "command -v $c >/dev/null || echo MISSING $c; done")
    assert state.strip() == "", state  # nothing half installed, nothing missing
    assert "boot ok: changed=0" in project.cli("run", "boot").stdout


@pytest.mark.podman
def test_a_bad_image_choice_stops_provision_in_one_line_before_anything_is_rented(project):
    proc = project.cli("provision", "--backend", "local", check=False, VOLT_LOCAL_IMAGE="host")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: VOLT_LOCAL_IMAGE='host': choose bare"), proc.stderr
    assert "or unset it" in lines[0]
    assert project.double().instances() == [] and project.double().containers() == []
