"""The link between the controller and a local instance. A real instance is 20-150 ms away behind a limited uplink;
a local container is neither unless this models it:

- rate: `tbf` on the container's host-side veth (egress there is traffic to the instance);
- delay and loss: `netem` on that same veth where the kernel has it (CONFIG_NET_SCH_NETEM). Where it does not (the
  Firecracker kernel of this project's CI machines has tbf and htb but no netem), the delay is made by a relay in
  the SSH path instead: `ssh_port` then points at a process on 127.0.0.1 that forwards to the container's sshd and
  holds every chunk RTT/2 in each direction, so each SSH round trip (an Ansible task, a rsync handshake, an SSH
  channel window update) costs the RTT, as it would over a real link. TCP's own slow start over the long path is not
  modelled by the relay, and loss needs netem (refused without it).
- a silent drop (the link loses everything for a while, no RST, no FIN): `cut(relay_pid)` / `restore(relay_pid)`, or
  `with cut_for(relay_pid, 30):`, on an instance whose delay the relay makes (this kernel has no netem and no
  act_gact, so no qdisc or filter can drop on the veth): the relay stops reading and writing both ways without
  closing a socket (class Gate). A test that needs a cut without a delay starts a relay with rtt 0.

Set from the environment of the command that rents (the double starts the instance): VOLT_LOCAL_RTT_MS,
VOLT_LOCAL_RATE_MBIT, VOLT_LOCAL_LOSS_PCT; all unset = a free local link. Only ever the test container's own
host-side veth is touched: anything else (the default route's device, lo, an unbridged interface) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import aptcache, podman, procs

ENV = {"rtt_ms": "VOLT_LOCAL_RTT_MS", "rate_mbit": "VOLT_LOCAL_RATE_MBIT", "loss_pct": "VOLT_LOCAL_LOSS_PCT"}
RELAY_BUFFER = 16 << 20  # bytes in flight per direction: more than 1 Gbit/s x 80 ms


@dataclass(frozen=True)
class Model:
    rtt_ms: float = 0.0
    rate_mbit: float = 0.0
    loss_pct: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.rtt_ms or self.rate_mbit or self.loss_pct)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Model:
        environ = os.environ if environ is None else environ
        values = {}
        for field, name in ENV.items():
            raw = (environ.get(name) or "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if value < 0 or (field == "loss_pct" and value >= 100):
                limit = "a number of percent from 0 to 99" if field == "loss_pct" else "a number >= 0 (0 = off)"
                raise VoltError(f"{name}={raw!r} is not {limit}: fix or unset it")
            values[field] = value
        return cls(**values)


@functools.cache
def netem_available() -> bool:
    """Whether the kernel has netem (its config; trying a qdisc would mean touching an interface)."""
    for config in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            text = gzip.decompress(config.read_bytes()).decode(errors="replace") if config.suffix == ".gz" else config.read_text(errors="replace")
        except OSError:
            continue
        return "CONFIG_NET_SCH_NETEM=y" in text or "CONFIG_NET_SCH_NETEM=m" in text
    return Path("/sys/module/sch_netem").exists()


class Veth:
    """The host side of one container's veth: the only interface this module ever shapes."""

    def __init__(self, container: str):
        iflink = podman.out("exec", container, "cat", "/sys/class/net/eth0/iflink").strip()
        names = [p.parent.name for p in Path("/sys/class/net").glob("*/ifindex") if p.read_text().strip() == iflink]
        if len(names) != 1:
            raise VoltError(f"local link: no single host interface with ifindex {iflink} for {container}: {names}")
        dev = names[0]
        route = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True).stdout
        default_dev = (route.split(" dev ") + [""])[1].split(" ")[0]
        base = Path(f"/sys/class/net/{dev}")
        # the container's peer: a bridge port whose own link points into another namespace
        paired = (base / "master").exists() and (base / "iflink").read_text().strip() != (base / "ifindex").read_text().strip()
        if dev == default_dev or dev in ("lo", "eth0") or not paired:
            raise VoltError(f"local link: refusing to shape {dev}: not the test container's bridged veth")
        self.dev = dev
        self.ip = podman.out("inspect", "-f", "{{.NetworkSettings.IPAddress}}", container).strip()

    def shape(self, model: Model, netem: bool = False, exempt: tuple[str, int] | None = None) -> None:
        """Replace the veth's root qdisc: netem (delay, loss) with tbf under it, or tbf alone. exempt: (address, port)
        whose traffic to the container is not shaped (the package mirror next to the instance, local/aptcache.py): an
        htb root sends it to a class of its own, everything else to the class that holds the model."""
        tbf = ["tbf", "rate", f"{model.rate_mbit:g}mbit", "burst", "32kb", "latency", "50ms"]
        em = ["netem", "delay", f"{model.rtt_ms:g}ms"] + (["loss", f"{model.loss_pct:g}%"] if model.loss_pct else [])
        leaves = ([em] if netem and (model.rtt_ms or model.loss_pct) else []) + ([tbf] if model.rate_mbit else [])
        if not leaves:
            return
        parent = ["root"]
        if exempt:
            self.unshape()  # a fresh htb: classes of an earlier shape would be in the way
            _tc("qdisc", "add", "dev", self.dev, "root", "handle", "1:", "htb", "default", "20")
            for cls in ("1:10", "1:20"):
                _tc("class", "add", "dev", self.dev, "parent", "1:", "classid", cls, "htb", "rate", "10gbit")
            _tc("filter", "add", "dev", self.dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip", "src",
                f"{exempt[0]}/32", "match", "ip", "sport", str(exempt[1]), "0xffff", "flowid", "1:10")
            parent = ["parent", "1:20"]
        for i, leaf in enumerate(leaves):
            # tbf's burst: a few ms at the rate (TCP hits the rate without ack-clocking gaps); latency bounds the queue
            _tc("qdisc", "replace" if parent == ["root"] else "add", "dev", self.dev, *parent, "handle", f"{i + 2}:", *leaf)
            parent = ["parent", f"{i + 2}:"]

    def unshape(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.dev, "root"], capture_output=True)

    def qdiscs(self) -> str:
        return subprocess.run(["tc", "qdisc", "show", "dev", self.dev], capture_output=True, text=True).stdout

    def tx_bytes(self) -> int:
        return int(Path(f"/sys/class/net/{self.dev}/statistics/tx_bytes").read_text())


def _tc(*args: str) -> None:
    proc = subprocess.run(["tc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VoltError(f"local link: tc {' '.join(args)} failed: {proc.stderr.strip()}")


def check(model: Model) -> Model:
    """The model, or one line when this machine cannot make it (loss without netem)."""
    if model.loss_pct and not netem_available():
        raise VoltError(f"{ENV['loss_pct']}={model.loss_pct:g}: this kernel has no netem (CONFIG_NET_SCH_NETEM), so loss cannot "
                        "be modelled here: unset it (the delay and the rate work without netem)")
    return model


def apply(container: str, model: Model) -> tuple[Veth, bool]:
    """Shape the container's link; returns the veth and whether the delay still needs the relay."""
    check(model)
    veth = Veth(container)
    netem = netem_available()
    veth.shape(model, netem, aptcache.endpoint())
    return veth, bool(model.rtt_ms) and not netem


# -- the relay: the delay where the kernel has no netem ----------------------------------------------------------------

READ_CHUNK = 256 << 10  # bytes per read: fewer wake-ups per MB (the relay is pure Python and shares the cores)
TCP_ESTABLISHED = 1


class Gate:
    """The relay's silent cut (`cut()` / `restore()` below, SIGUSR1 / SIGUSR2 to the relay): while it is closed the
    relay reads nothing and writes nothing in either direction and opens no new upstream connection, but closes no
    socket, as a path that drops every packet does (no RST, no FIN: only the endpoints' own timeouts notice).
    On restore, a connection of which one end gave up during the cut (it closed its socket: the relay's side is in
    CLOSE_WAIT or closed) is dropped with a RST on both sides and what the relay held for it is discarded (lost on
    the dead path, as in a real drop); a connection both ends kept goes on where it was (TCP's retransmission).
    The RST at restore is kinder than a real path: there the far end learns of it only when its own retransmission
    (backed off, maybe tens of seconds later) meets the closed end's RST; data_sync does not rely on it (its retry
    stops the instance's leftover rsync itself)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.conns: set[_Conn] = set()

    def cut(self) -> None:
        self.open.clear()

    def restore(self) -> None:
        if self.open.is_set():
            return
        for conn in list(self.conns):
            if not conn.alive():
                conn.abort()
        self.open.set()


class _Conn:
    def __init__(self, gate: Gate, client: asyncio.StreamWriter):
        self.gate = gate
        self.writers = [client]
        self.dead = False

    def alive(self) -> bool:
        for w in self.writers:
            sock = w.get_extra_info("socket")
            try:
                if sock is None or sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED:
                    return False
            except OSError:
                return False
        return True

    def abort(self) -> None:
        self.dead = True
        for w in self.writers:
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST
            w.transport.abort()

    def hang_up(self) -> None:
        for w in self.writers:
            w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, conn: _Conn,
                counted: list[int] | None = None) -> None:
    """Copy one direction, each chunk written `delay_s` after it arrived (order kept). The relay holds about the
    link's bandwidth x delay, not more: it reads on only while its writes flow (`flowing`) and at most RELAY_BUFFER
    is held, so a slower link behind it (tbf) backs up into the sender, as at a real bottleneck, instead of into the
    relay. A write that fails hangs up both connections, as a dead path does. Nothing moves while the gate is closed."""
    loop = asyncio.get_running_loop()
    gate = conn.gate
    queue: asyncio.Queue = asyncio.Queue()
    room = asyncio.Semaphore(max(1, RELAY_BUFFER // READ_CHUNK))
    flowing = asyncio.Event()
    flowing.set()

    async def deliver() -> None:
        ended = False  # the reader's None was taken
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await gate.open.wait()
                if conn.dead:
                    break
                writer.write(data)
                if writer.transport.get_write_buffer_size() > 0:
                    flowing.clear()
                    await writer.drain()
                    flowing.set()
                room.release()
            else:
                ended = True
                if writer.can_write_eof():
                    await gate.open.wait()
                    if not conn.dead:
                        writer.write_eof()
        except (ConnectionError, OSError):
            conn.hang_up()
        finally:
            flowing.set()
        if not ended:  # the reading side must never wait for room again
            while await queue.get() is not None:
                room.release()

    sender = asyncio.create_task(deliver())
    try:
        while not conn.dead:
            await room.acquire()
            await flowing.wait()
            await gate.open.wait()
            if conn.dead:
                break
            data = await reader.read(READ_CHUNK)
            if not data or conn.dead:
                break
            if counted is not None:
                counted[0] += len(data)
            queue.put_nowait((loop.time() + delay_s, data))
    except (ConnectionError, OSError):
        conn.hang_up()
    finally:
        queue.put_nowait(None)
        await sender


async def _count(path: Path, counts: dict[str, list[int]]) -> None:
    """Every 0.2 s, the bytes relayed so far each way into `path` (a test's measure of what crossed the operator's
    link to the instance: apt's packages from the world's mirror do not pass here, SSH does)."""
    last = None
    while True:
        now = {k: v[0] for k, v in counts.items()}
        if now != last:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{now['to_instance']} {now['from_instance']}\n")
            os.replace(tmp, path)
            last = now
        await asyncio.sleep(0.2)


async def _serve(listen: socket.socket, target: tuple[str, int], delay_s: float, gate: Gate, counts_path: Path | None = None) -> None:
    counts = {"to_instance": [0], "from_instance": [0]}

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        conn = _Conn(gate, c_writer)
        gate.conns.add(conn)
        try:
            await gate.open.wait()  # a cut link: the client's connect is answered (by the kernel), then nothing
            if conn.dead:
                return
            try:
                s_reader, s_writer = await asyncio.open_connection(*target)
            except OSError:
                c_writer.close()  # like a host that is gone: the client sees the connection closed
                return
            conn.writers.append(s_writer)
            await asyncio.gather(_pump(c_reader, s_writer, delay_s, conn, counts["to_instance"]),
                                 _pump(s_reader, c_writer, delay_s, conn, counts["from_instance"]))
            if not conn.dead:
                conn.hang_up()
        finally:
            gate.conns.discard(conn)

    server = await asyncio.start_server(handle, sock=listen)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, gate.cut)
    loop.add_signal_handler(signal.SIGUSR2, gate.restore)
    counter = asyncio.create_task(_count(counts_path, counts)) if counts_path else None
    async with server:
        await server.serve_forever()
    if counter:
        counter.cancel()


def relay_main(argv: list[str]) -> int:
    """python -m volt_ansible.local.link relay <listen-port-file> <target-ip> <target-port> <rtt-ms> [<listen-port>]:
    bind the port (default: a free one) on 127.0.0.1, write it to the file, forward with the delay until killed."""
    port_file, ip, port, rtt_ms, *listen_port = argv
    listen = socket.create_server(("127.0.0.1", int(listen_port[0]) if listen_port else 0))
    Path(port_file).write_text(f"{listen.getsockname()[1]}\n")
    asyncio.run(_serve(listen, (ip, int(port)), float(rtt_ms) / 2000.0, Gate(), Path(port_file).with_suffix(".bytes")))
    return 0


def relay_bytes(run_dir: Path, name: str) -> tuple[int, int]:
    """(bytes relayed to the instance, bytes from it) by the current relay of container `name` (0, 0 before any)."""
    try:
        to_instance, from_instance = (run_dir / f"relay-{name}.bytes").read_text().split()
        return int(to_instance), int(from_instance)
    except (OSError, ValueError):
        return 0, 0


def start_relay(run_dir: Path, name: str, ip: str, rtt_ms: float, port: int = 22, listen_port: int = 0) -> tuple[int, int]:
    """Start the relay to a container's port (sshd) in a session of its own; returns (its port on 127.0.0.1, its pid).
    listen_port: the port an earlier relay of this instance had (a restarted container has a new address, its
    ssh_port stays); 0: a free one."""
    port_file = run_dir / f"relay-{name}.port"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "volt_ansible.local.link", "relay", str(port_file), ip, str(port), f"{rtt_ms:g}"]
    proc = subprocess.Popen(argv + ([str(listen_port)] if listen_port else []),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text:
            return int(text), proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise VoltError(f"local link: the delay relay for {name} did not start")


def relay_running(pid: int | None) -> bool:
    """Whether `pid` is a relay this module started."""
    return procs.started_here(pid, "volt_ansible.local.link", "relay")


def cut(pid: int | None) -> None:
    """Cut the link of the instance behind relay `pid` silently (see Gate): nothing passes until restore(pid)."""
    if not relay_running(pid):
        raise VoltError(f"local link: no relay {pid} of this module to cut (the link is cut only where a relay makes the delay)")
    os.kill(pid, signal.SIGUSR1)


def restore(pid: int | None) -> None:
    """End a cut(pid)."""
    if relay_running(pid):
        os.kill(pid, signal.SIGUSR2)


@contextlib.contextmanager
def cut_for(pid: int | None, seconds: float):
    """Cut the link now and restore it `seconds` later (or when the block ends, whichever is first); yields the
    monotonic time of the cut."""
    cut(pid)
    t0 = time.monotonic()
    timer = threading.Timer(seconds, restore, (pid,))
    timer.daemon = True
    timer.start()
    try:
        yield t0
    finally:
        timer.cancel()
        restore(pid)


def stop_relay(pid: int | None) -> None:
    if relay_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        sys.exit(relay_main(sys.argv[2:]))
    print("usage: python -m volt_ansible.local.link relay <port-file> <ip> <port> <rtt-ms>", file=sys.stderr)
    sys.exit(2)
