"""Adaptive compression for data_sync: which zstd level, or none, moves a compressible item fastest over this link
with this controller's cores.

rsync compresses in its own single thread on the controller, so an item's effective rate at zstd level L is at most
what that thread compresses (C_L, source bytes/s) and at most what the link carries times the ratio (R x r_L): at
50 Mbit a high level wins (the link is the limit, a better ratio moves more), at gigabit on two cores a low one or
none (the cores are). The driver measures both cheaply before its first big compressible item moves, once per run:

- the cores: `probe_levels` runs the controller's own rsync with zstd at each level on a sample of the item
  (~24 MB; local, through a pass-through remote shell so rsync really compresses), ~0.5 s in all;
- the link: `probe_link` pushes raw bytes over ssh (the driver's control connection: no handshake) for ~1.2 s
  and the instance counts what arrives after the first 0.4 s (slow start left out), while the cores are probed.
  Over a long path one ssh channel is capped by its window (OpenSSH's 2 MiB per round trip, ~20 MB/s at 80 ms):
  the probe measures that cap too, which is what rsync over ssh gets.

`decide` then takes the level whose predicted rate min(C_L, R x r_L) is highest (a lower level within 10 % of it is
preferred: it leaves cores for the items moving beside it), and none when even that is not GAIN faster than the
raw link. Items under MIN_ADAPT_BYTES keep the configured level (data_sync_zstd_level): there the probe would cost
more than it can save.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LEVELS = (1, 3, 6)
SAMPLE_BYTES = 24 << 20
MIN_ADAPT_BYTES = 64 << 20
GAIN = 1.10  # compression must be predicted this much faster than the raw link to be used
TIE = 0.10  # a lower level within this of the best predicted rate is preferred (fewer cores, as fast)
LINK_PROBE_S = 1.2
LINK_PROBE_SKIP_S = 0.4



def link_probe_script(seconds: float = LINK_PROBE_S, skip: float = LINK_PROBE_SKIP_S) -> str:
    """Runs on the instance (python3 -c): reads stdin for `seconds` after the first byte, prints the rate of what arrived
    after the first `skip` seconds (bytes/s), then exits, which ends the controller's writes."""
    return ("import os, time\n"
            "n = 0; t0 = None; n1 = t1 = None\n"
            "while True:\n"
            "    b = os.read(0, 1 << 20)\n"
            "    if not b: break\n"
            "    now = time.monotonic(); n += len(b)\n"
            "    if t0 is None: t0 = now\n"
            f"    if t1 is None and now - t0 >= {skip}: n1, t1 = n, now\n"
            f"    if now - t0 >= {seconds}: break\n"
            "print((n - n1) / (now - t1) if t1 and now > t1 else 0.0, flush=True)\n")


@dataclass(frozen=True)
class LevelSpeed:
    level: int
    rate: float  # source bytes/s rsync compressed (and its receiver took) on this controller
    ratio: float  # source bytes / bytes rsync sent


@dataclass(frozen=True)
class Decision:
    level: int | None  # None: send raw
    link_Bps: float
    predicted_Bps: float
    speeds: tuple[LevelSpeed, ...]
    why: str

    def line(self, item: str) -> str:
        """The one log line that records the decision."""
        levels = ", ".join(f"zstd-{s.level} {s.rate / 1e6:.0f} MB/s x{s.ratio:.2f}" for s in self.speeds)
        choice = f"zstd-{self.level}" if self.level is not None else "raw"
        return (f"compression for {item}: {choice} (predicted {self.predicted_Bps / 1e6:.1f} MB/s of data; link "
                f"{self.link_Bps / 1e6:.1f} MB/s raw; this controller: {levels or 'no probe'}): {self.why}")

    def as_dict(self) -> dict:
        return {"level": self.level, "link_Bps": round(self.link_Bps), "predicted_Bps": round(self.predicted_Bps),
                "speeds": [asdict(s) for s in self.speeds], "why": self.why}


def predicted(s: LevelSpeed, link_Bps: float) -> float:
    return min(s.rate, link_Bps * s.ratio)


def decide(link_Bps: float, speeds: list[LevelSpeed] | tuple[LevelSpeed, ...], gain: float = GAIN, tie: float = TIE) -> Decision:
    """The level (or None: raw) that moves the data fastest, from the link's raw rate and each level's speed here."""
    speeds = tuple(sorted(speeds, key=lambda s: s.level))
    if not speeds:
        return Decision(None, link_Bps, link_Bps, speeds, "no compression probe: raw")
    if link_Bps <= 0:
        best = max(speeds, key=lambda s: s.ratio)
        return Decision(best.level, link_Bps, 0.0, speeds, "the link probe measured nothing: the best ratio")
    top = max(predicted(s, link_Bps) for s in speeds)
    best = next(s for s in speeds if predicted(s, link_Bps) >= (1 - tie) * top)  # the lowest level within TIE of the top
    rate = predicted(best, link_Bps)
    if rate < gain * link_Bps:
        return Decision(None, link_Bps, link_Bps, speeds,
                        f"no level is {gain:.2f}x faster than the raw link (the best, zstd-{best.level}, {rate / link_Bps:.2f}x)")
    bound = "the cores" if best.rate < link_Bps * best.ratio else "the link"
    return Decision(best.level, link_Bps, rate, speeds, f"{rate / link_Bps:.2f}x the raw link, bound by {bound}")


def sample_of(src: str, kind: str) -> str | None:
    """The file to probe: the item itself, or a dir item's largest file."""
    if kind == "file":
        return src
    best, size = None, -1
    for dirpath, _, files in os.walk(src):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                s = os.path.getsize(p)
            except OSError:
                continue
            if s > size:
                best, size = p, s
    return best


def probe_levels(src: str, workdir: str, levels: tuple[int, ...] = LEVELS, sample_bytes: int = SAMPLE_BYTES) -> list[LevelSpeed]:
    """Each level's speed on this controller: its rsync, zstd at the level, on the first sample_bytes of src, sent through a
    pass-through remote shell to a local rsync receiver (so rsync compresses and decompresses as in a transfer)."""
    work = Path(workdir) / "probe"
    work.mkdir(parents=True, exist_ok=True)
    try:
        sample = work / "sample"
        with open(src, "rb") as f, open(sample, "wb") as out:
            out.write(f.read(sample_bytes))
        size = sample.stat().st_size
        rsh = work / "rsh"
        rsh.write_text('#!/bin/sh\nshift\nexec "$@"\n')
        rsh.chmod(0o700)
        out = []
        for level in levels:
            dest = work / f"recv-{level}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            t0 = time.monotonic()
            p = subprocess.run(["rsync", "-t", "--stats", "--compress", "--compress-choice=zstd", f"--compress-level={level}", "-e", str(rsh),
                                str(sample), f"probe:{dest}/"], capture_output=True, text=True, timeout=120)
            seconds = max(time.monotonic() - t0, 1e-3)
            m = re.search(r"^Total bytes sent: ([\d,.]+)", p.stdout, re.M)
            if p.returncode != 0 or not m or size == 0:
                continue
            sent = int(m.group(1).replace(",", "").replace(".", "")) or 1
            out.append(LevelSpeed(level, size / seconds, size / sent))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe_link(ssh_cmd: list[str], host: str, python: str = "python3", timeout: float = 30, seconds: float = LINK_PROBE_S,
               skip: float = LINK_PROBE_SKIP_S) -> float:
    """The link's raw rate to the instance (bytes/s), over the given ssh command line (a data connection of its own);
    0.0 when the probe failed (the decision then falls back to the best ratio)."""
    proc = subprocess.Popen([*ssh_cmd, host, shlex.join([python, "-c", link_probe_script(seconds, skip)])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    block = os.urandom(1 << 20)

    def feed() -> None:
        with contextlib.suppress(OSError, ValueError):  # the instance's end closed (it has counted): ssh exits, EPIPE
            while proc.poll() is None:
                proc.stdin.write(block)

    killer = threading.Timer(timeout, proc.kill)
    killer.daemon = True
    killer.start()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        out = proc.stdout.read().decode(errors="replace").strip()
        proc.wait()
    finally:
        killer.cancel()
        feeder.join(5)
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stdout.close()
    try:
        return float(out.splitlines()[-1]) if proc.returncode == 0 and out else 0.0
    except ValueError:
        return 0.0
