"""The local world's link model (volt_ansible/local/link.py): a local instance made as far away as a real one."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time

import pytest
from testhost import start, stop

from volt_ansible.errors import VoltError
from volt_ansible.local import link, podman

ECHO_PORT = 7007
ECHO = (f"import socket\ns = socket.create_server(('0.0.0.0', {ECHO_PORT}))\nwhile True:\n    c, _ = s.accept()\n"
        "    while (b := c.recv(65536)):\n        c.sendall(b)\n    c.close()\n")


def round_trips(host: str, port: int, n: int = 15) -> list[float]:
    """Seconds per 1-byte ping-pong over one TCP connection (the first, which pays the connect, left out)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n + 1):
            t0 = time.monotonic()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            times.append(time.monotonic() - t0)
    return times[1:]


def test_the_settings_come_from_the_environment_and_a_bad_one_is_one_line():
    assert not link.Model.from_env({}).active
    m = link.Model.from_env({"VOLT_LOCAL_RTT_MS": "80", "VOLT_LOCAL_RATE_MBIT": "200", "VOLT_LOCAL_LOSS_PCT": ""})
    assert (m.rtt_ms, m.rate_mbit, m.loss_pct, m.active) == (80.0, 200.0, 0.0, True)
    for name, raw, want in [("VOLT_LOCAL_RTT_MS", "eighty", "a number >= 0 (0 = off)"), ("VOLT_LOCAL_RATE_MBIT", "-5", "a number >= 0 (0 = off)"),
                            ("VOLT_LOCAL_LOSS_PCT", "100", "a number of percent from 0 to 99")]:
        with pytest.raises(VoltError) as e:
            link.Model.from_env({name: raw})
        assert str(e.value) == f"{name}={raw!r} is not {want}: fix or unset it"


@pytest.mark.podman
def test_the_relay_adds_the_round_trip_time_and_the_veth_gets_the_rate(tmp_path):
    host = start(f"vt-link-{os.getpid()}")
    pid = None
    try:
        podman.run("exec", "-d", host.name, "python3", "-c", ECHO)
        veth = link.Veth(host.name)
        for _ in range(50):  # the echo server is up
            try:
                socket.create_connection((veth.ip, ECHO_PORT), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        direct = statistics.median(round_trips(veth.ip, ECHO_PORT))
        port, pid = link.start_relay(tmp_path, host.name, veth.ip, 80, port=ECHO_PORT)
        assert link.relay_running(pid)
        far = round_trips("127.0.0.1", port)
        assert min(far) >= 0.080, far  # never shorter than the model: each direction held 40 ms
        assert statistics.median(far) < 0.080 + 0.25 and direct < 0.02, (far, direct)  # and not much longer
        cut_silently_and_restore(port, pid)
        veth.shape(link.Model(rate_mbit=50))
        assert "tbf" in veth.qdiscs() and "rate 50Mbit" in veth.qdiscs()
        # the package mirror (aptcache's address and port) stays unshaped: a real one is next to the instance
        veth.shape(link.Model(rate_mbit=50), exempt=("10.88.0.1", 3142))
        qd = veth.qdiscs()
        assert "qdisc htb 1: root" in qd and "rate 50Mbit" in qd and "parent 1:20" in qd, qd
        filters = subprocess.run(["tc", "filter", "show", "dev", veth.dev], capture_output=True, text=True).stdout
        assert "flowid 1:10" in filters and "0a580001/ffffffff at 12" in filters and "0c460000/ffff0000 at 20" in filters, filters
    finally:
        link.stop_relay(pid)
        stop(host)
    time.sleep(0.2)
    assert not link.relay_running(pid)


def echoes(s: socket.socket, data: bytes, wait: float) -> bytes | None:
    s.settimeout(wait)
    try:
        return s.recv(len(data))
    except TimeoutError:
        return None


def cut_silently_and_restore(port: int, pid: int) -> None:
    """link.cut: nothing passes either way and no socket is closed (a new connection is accepted, then silent); after
    restore what was held arrives on the same connections; a connection whose client gave up during the cut is dropped."""
    kept = socket.create_connection(("127.0.0.1", port), timeout=5)
    kept.sendall(b"a")
    assert echoes(kept, b"a", 5) == b"a"
    with link.cut_for(pid, 30) as t0:
        kept.sendall(b"b")
        assert echoes(kept, b"b", 1.0) is None  # silent: no reply, no RST, no EOF
        late = socket.create_connection(("127.0.0.1", port), timeout=5)  # the relay's kernel still accepts
        late.sendall(b"c")
        assert echoes(late, b"c", 0.5) is None
        gone = socket.create_connection(("127.0.0.1", port), timeout=5)
        gone.close()  # gives up during the cut
        time.sleep(0.2)
    assert time.monotonic() - t0 < 5  # the block's end restored it, not the 30 s timer
    assert echoes(kept, b"b", 5) == b"b"  # held, then delivered
    kept.sendall(b"d")
    assert echoes(kept, b"d", 5) == b"d"
    kept.close()  # the echo server serves one connection at a time: the late one is next
    assert echoes(late, b"c", 5) == b"c"
    late.close()
    with pytest.raises(VoltError):
        link.cut(os.getpid())  # only a relay this module started


@pytest.mark.podman
def test_loss_needs_netem_and_is_refused_in_one_line_without_it():
    host = start(f"vt-loss-{os.getpid()}")
    try:
        model = link.Model(rtt_ms=40, loss_pct=1)
        if link.netem_available():
            veth, relay = link.apply(host.name, model)
            assert not relay and "netem" in veth.qdiscs() and "loss 1%" in veth.qdiscs()
        else:
            with pytest.raises(VoltError) as e:
                link.apply(host.name, model)
            assert str(e.value) == ("VOLT_LOCAL_LOSS_PCT=1: this kernel has no netem (CONFIG_NET_SCH_NETEM), so loss cannot be modelled "
                                    "here: unset it (the delay and the rate work without netem)")
    finally:
        stop(host)


@pytest.mark.podman
def test_an_instance_rented_with_an_rtt_is_that_far_away_and_its_relay_goes_with_it(project):
    env = {"VOLT_LOCAL_RTT_MS": "80", "VOLT_LOCAL_RATE_MBIT": "200"}
    project.cli("provision", "--backend", "local", **env)
    inst = project.state()["instance"]
    with project.double().store() as s:
        rec = s["instances"][str(inst["id"])]
    far = rec["link"]
    assert far["rtt_ms"] == 80 and far["rate_mbit"] == 200
    assert "rate 200Mbit" in link.Veth(rec["container"]).qdiscs()
    if far["delay_by"] == "relay":
        assert link.relay_running(far["relay_pid"])
        assert inst["ssh_port"] == far["relay_port"] != int(podman.out("port", rec["container"], "22/tcp").rsplit(":", 1)[1])
    t0 = time.monotonic()
    assert project.cli("ssh", "--", "echo", "far").stdout.strip() == "far"
    took = time.monotonic() - t0
    assert took >= 4 * 0.080, took  # a new SSH connection: banner, key exchange, auth, channel, exec: >= 4 round trips
    project.cli("destroy", "--yes")
    time.sleep(0.2)
    assert not link.relay_running(far.get("relay_pid"))  # destroy ended it


@pytest.mark.podman
def test_a_bad_setting_stops_provision_in_one_line_before_anything_is_rented(project):
    proc = project.cli("provision", "--backend", "local", check=False, VOLT_LOCAL_RTT_MS="80ms")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: VOLT_LOCAL_RTT_MS='80ms' is not a number >= 0 (0 = off): fix or unset it"], proc.stderr
    assert project.double().instances() == [] and project.double().containers() == []
    if not link.netem_available():  # loss needs netem: said before renting too, not by a create that fails later
        proc = project.cli("provision", "--backend", "local", check=False, VOLT_LOCAL_LOSS_PCT="1")
        assert proc.returncode != 0 and "VOLT_LOCAL_LOSS_PCT=1: this kernel has no netem" in proc.stderr, proc.stderr
        assert project.double().instances() == [] and project.double().containers() == []
