"""The background transfer driver (`python -m volt_ansible.datasync sync`, an Ansible async job on the controller):
tier by tier, needed-first, several items at once, retried and resumed; each item verified on the instance (the later
tiers while the next one moves), sent again once on a mismatch; the markers written there; a status file the role's
wait polls.

Compression adapts (datasync/compress.py): before its first big compressible item moves, the driver measures this
controller's zstd speed per level and the link's raw rate once, and sends those items at the level that moves them
fastest, or raw; the decision is one line in the log and `compression` in the status file.

On the instance it runs the helper the role installed (`<root>/.volt-sync/lib/data_sync_remote.py`, the role's
module_utils with volt_fileops beside it), so both ends hash with the same code."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from volt_ansible.datasync import compress, retry
from volt_ansible.datasync.preflight import human
from volt_ansible.datasync.transport import (
    RSYNC_NETWORK_RC,
    keepalive_of,
    parse_stats,
    refused,
    remote_argv,
    rsync_argv,
    ssh_argv,
)
from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write, walk_files


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
        self.keepalive = keepalive_of(self.opts)
        self._decision: compress.Decision | None = None
        self._deciding = threading.Lock()

    # -- bookkeeping
    def log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def save(self) -> None:
        with self.lock:
            self.status["updated"] = time.time()
            atomic_write(self.status_path, json.dumps(self.status, indent=1) + "\n", mode=0o600, durable=False)

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
    def _run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with self.lock:
            self.procs.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
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
        """Run the instance side's `command` (the helper the role installed), over the control connection, with retries."""
        host = self.ssh["host"]
        argv = remote_argv(self.ssh, self.control, self.opts.get("remote_python", "python3"), self.root, command, args, self.keepalive)
        down = retry.of(self.opts)
        while True:
            if self.stopping.is_set():
                raise VoltError("stopped")
            t0 = time.time()
            p = self._run(argv)
            if p.returncode == 0:
                return json.loads(p.stdout.decode().strip().splitlines()[-1])
            err = p.stderr.decode(errors="replace")
            last = (err.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            if p.returncode != 255:  # python failed on the instance: not a connection problem
                raise VoltError(f"{command} on the instance failed: {last} (the data_sync role installs the instance side: run the role)")
            why = refused(self.ssh, err)
            if why:
                raise VoltError(why)
            if down.failed(t0, time.time()):
                raise VoltError(f"ssh to {host} kept failing for {down.down_s(time.time()):.0f} s ({down.failures} attempts): {last}")
            self.log(f"ssh failed ({last}); retry {down.failures} in {down.delay():.0f}s")
            self._sleep(down.delay())

    # -- compression
    def adaptive(self, it: dict) -> bool:
        """Whether this item's compression is the run's measured decision (else the configured level, or raw)."""
        return (bool(it.get("compress_on")) and self.opts.get("compression", "auto") == "auto"
                and it["size"] >= int(self.opts.get("adapt_min_bytes", compress.MIN_ADAPT_BYTES)))

    def decision(self) -> compress.Decision:
        """The run's compression decision, measured once (the first caller measures, the others wait for it)."""
        with self._deciding:
            if self._decision is None:
                self._decision = self._measure()
                with self.lock:
                    self.status["compression"] = self._decision.as_dict()
                self.save()
        return self._decision

    def _measure(self) -> compress.Decision:
        big = max((it for it in self.items.values() if self.adaptive(it)), key=lambda it: it["size"])
        t0 = time.time()
        # the link over the driver's control connection (up since prepare: no handshake), the cores meanwhile
        rate: list[float] = []
        via = ssh_argv(self.ssh, self.control, master=False, keepalive=self.keepalive)
        prober = threading.Thread(target=lambda: rate.append(compress.probe_link(via, self.ssh["host"], self.opts.get("remote_python", "python3"))))
        prober.start()
        sample = compress.sample_of(big["src"], big["kind"])
        try:
            speeds = compress.probe_levels(sample, self.control_dir) if sample else []
        except (OSError, subprocess.SubprocessError) as e:
            self.log(f"compression probe failed ({e}): zstd-{int(self.opts.get('zstd_level', 3))} as configured")
            speeds = []
        prober.join()
        link = rate[0] if rate else 0.0
        if not speeds:
            level = int(self.opts.get("zstd_level", 3))
            d = compress.Decision(level, link, 0.0, (), "the compression probe failed: the configured level")
        else:
            d = compress.decide(link, speeds)
        self.log(d.line(big["name"]) + f" [measured in {time.time() - t0:.1f}s]")
        return d

    def level_for(self, it: dict) -> int | None | str:
        if not it.get("compress_on"):
            return None
        if self.adaptive(it):
            return self.decision().level
        return "default"

    # -- one item
    def rsync_argv(self, it: dict, force: bool, level: int | None | str = "default") -> list[str]:
        return rsync_argv(self.ssh, self.control, self.root, it, self.opts, force, level)

    def transfer(self, name: str, force: bool = False) -> bool:
        it = self.items[name]
        level = self.level_for(it)
        argv = self.rsync_argv(it, force, level)
        how = "raw" if level is None else f"zstd-{int(self.opts.get('zstd_level', 3)) if level == 'default' else level}"
        down = retry.of(self.opts)
        self.set_item(name, state="sending", compression=how)
        for attempt in itertools.count():
            if self.stopping.is_set():
                return False
            if attempt:
                self._reap(name)
            self.log(f"send {name} ({human(it['size'])}, {how}) attempt {attempt + 1}")
            t0 = time.time()
            p = self._run(argv)
            seconds = time.time() - t0
            stats = parse_stats(p.stdout.decode(errors="replace"))
            stderr = p.stderr.decode(errors="replace")
            err = (stderr.strip().splitlines() or [""])[-1]
            rec = {"rc": p.returncode, "seconds": round(seconds, 3), "started": round(t0, 3), "ended": round(t0 + seconds, 3),
                   "force": force, "error": err if p.returncode else None, **stats}
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
            why = refused(self.ssh, stderr)
            if why:
                self.fail(name, why)
                return False
            if p.returncode not in RSYNC_NETWORK_RC and p.returncode >= 0:
                self.fail(name, f"{name}: rsync to {self.ssh['host']} failed (rc={p.returncode}): {err}")
                return False
            if down.failed(t0, t0 + seconds):
                self.fail(name, f"{name}: rsync to {self.ssh['host']} kept failing for {down.down_s(t0 + seconds):.0f} s "
                                f"({down.failures} attempts in a row; last rc={p.returncode}: {err}): check the connection, then "
                                f"run the data_sync role again: it resumes from the partial file")
                return False
            self.log(f"{name}: connection lost (rc={p.returncode}: {err}); resuming in {down.delay():.0f}s "
                     f"(down {down.down_s(t0 + seconds):.0f} s)")
            self._sleep(down.delay())

    def _reap(self, name: str) -> None:
        """Before a retry, stop the rsync the dropped connection left receiving this item on the instance (after a silent
        drop its sshd may not have noticed yet), so that it keeps its partial file and the retry resumes from it. Best
        effort, one try: a link still down fails here, and the retry's own rsync says so."""
        it = self.items[name]
        dest = f"{self.root}/{it['dest']}" + ("/" if it["kind"] == "dir" else "")
        argv = remote_argv(self.ssh, self.control, self.opts.get("remote_python", "python3"), self.root, "reap", {"dest": dest},
                           self.keepalive)
        p = self._run(argv, timeout=60)
        if p.returncode == 0:
            with contextlib.suppress(ValueError, IndexError):
                res = json.loads(p.stdout.decode().strip().splitlines()[-1])
                if res.get("reaped") or res.get("left"):
                    self.log(f"{name}: stopped the instance's rsync left from the dropped connection ({res})")

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
                        self._decide_early()  # the link is free while the first tier verifies
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
            subprocess.run([*ssh_argv(self.ssh, self.control, keepalive=self.keepalive), "-O", "exit", self.ssh["host"]], capture_output=True)
            shutil.rmtree(self.control_dir, ignore_errors=True)
            if self.log_file:
                self.log_file.close()

    def _decide_early(self) -> None:
        """Measure for the compression decision now, in the background, when a later item will need it."""
        if any(self.adaptive(it) for it in self.items.values()) and not self._deciding.locked() and self._decision is None:
            threading.Thread(target=self._decide_quietly, daemon=True).start()

    def _decide_quietly(self) -> None:
        with contextlib.suppress(Exception):  # a failed measurement is measured again (and reported) by the item that needs it
            self.decision()

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
