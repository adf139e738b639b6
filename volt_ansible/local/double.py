"""The local Vast double's state: instances as podman containers, kept on disk between commands."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write
from volt_ansible.local import bids, billing, copies, execute, hosts, link, offers, podman, price_increases
from volt_ansible.local.world import World, image_recipe

LABEL = "volt-ansible.local"


def offer_of(inst: dict) -> dict:
    return next(o for o in offers.CATALOGUE if o["id"] == inst["offer_id"])


class LocalVast:
    """One double per state directory; every command that opens it sees the same instances."""

    def __init__(self, state_dir: Path, world: World | None = None):
        self.dir = state_dir
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.world = world  # None: bare containers (enough for provisioning tests)
        # Containers of this double carry this label, so destroy/cleanup never touches others.
        self.scope = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:12]

    # -- persistence ---------------------------------------------------------------------------
    @property
    def api_key(self) -> str:
        p = self.dir / "api_key"
        if not p.exists():
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(24))
        elif p.stat().st_mode & 0o077:  # made by an older version, or copied: the key is the operator's alone
            p.chmod(0o600)
        return p.read_text().strip()

    @contextmanager
    def store(self) -> Iterator[dict]:
        """Locked read-modify-write of the double's own JSON file."""
        with open(os.open(self.dir / "vast.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            p = self.dir / "vast.json"
            data = json.loads(p.read_text()) if p.exists() else {}
            data.setdefault("next_id", 20000001)
            data.setdefault("instances", {})
            data.setdefault("faults", {"http": [], "next_create": [], "dph_factor": 1.0, "loading_s": 0.5})
            data.setdefault("competitors", {})  # machine_id -> the competing bid there ($/h)
            # a host's price increase nobody answered takes effect at its due time: whenever the state is read after it
            price_increases.apply_due(data, self.now(data), lambda row, when: self._apply_price(data, row, when))
            yield data
            # instances, ports, attached keys: private; the double stands for a remote service, not worth an fsync
            atomic_write(p, json.dumps(data, indent=1), mode=0o600, durable=False)

    @staticmethod
    def now(store: dict) -> float:
        """The double's clock: billing and due times read it; a test may advance it (advance_clock)."""
        return time.time() + float(store.get("clock_offset") or 0.0)

    @staticmethod
    def _apply_price(store: dict, row: dict, when: float) -> None:
        inst = store["instances"].get(str(row["contract_id"]))
        if inst and not inst.get("destroyed"):
            billing.accrue(inst, offer_of(inst), when)
            inst["dph_total"] = round(float(row["new_dph"]), 6)

    def _live(self, s: dict, instance_id: int) -> dict:
        inst = s["instances"].get(str(instance_id))
        if not inst or inst.get("destroyed"):
            raise VoltError(f"local instance {instance_id} does not exist")
        return inst

    # -- test hooks ----------------------------------------------------------------------------
    def advance_clock(self, seconds: float) -> float:
        """Move the double's clock forward (billing, price increase due times): hours pass without waiting for them."""
        with self.store() as s:
            s["clock_offset"] = float(s.get("clock_offset") or 0.0) + float(seconds)
            return self.now(s)

    def outbid(self, instance_id: int, price: float | None = None) -> float:
        """A competing bid above the instance's arrives on its machine: the instance stops at once (its processes killed,
        its disk and container filesystem kept). Returns the competitor's bid."""
        with self.store() as s:
            inst = self._live(s, instance_id)
            if not inst.get("is_bid"):
                raise VoltError(f"local instance {instance_id} is on-demand: only an interruptible (bid) instance can be outbid")
            bid = float(inst["bid"])
            price = round(bid + 0.01, 4) if price is None else float(price)
            if price <= bid:
                raise VoltError(f"a competing bid of ${price}/h does not outbid instance {instance_id}'s ${bid}/h")
            offer = offer_of(inst)
            s["competitors"][str(offer["machine_id"])] = price
            victims = self._losers(s, offer["machine_id"])
        for v in victims:
            self._halt(v)
        return price

    def competitor_leaves(self, instance_id: int) -> list[int]:
        """The competitor on the instance's machine leaves: every instance there that was outbid (and not stopped by its
        client) runs again: its container started again (all processes gone, the files kept), reachable at the same
        ssh_host/ssh_port with the same host key. Returns the ids that run again."""
        with self.store() as s:
            inst = self._live(s, instance_id)
            machine = offer_of(inst)["machine_id"]
            s["competitors"].pop(str(machine), None)
            back = self._winners(s, machine)
        for b in back:
            self._resume(b)
        return [b["id"] for b in back]

    def cost(self, instance_id: int) -> dict:
        """What the instance has cost so far (destroyed ones: up to their destroy): compute, storage, total, $."""
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst:
                raise VoltError(f"local instance {instance_id} does not exist")
            return billing.totals(inst, offer_of(inst), self.now(s))

    def post_price_increase(self, instance_id: int, new_dph: float, due_in_s: float) -> dict:
        """A host raises the instance's price to new_dph $/h, taking effect due_in_s from now unless answered first."""
        with self.store() as s:
            inst = self._live(s, instance_id)
            now = self.now(s)
            row = price_increases.post(s, inst, offer_of(inst), float(new_dph), now + float(due_in_s), now)
            return {**price_increases.public(row), "due": row["due"]}

    # -- market: who runs on a machine --------------------------------------------------------------
    def _losers(self, s: dict, machine: int) -> list[dict]:
        """Mark every running bid instance on `machine` that no longer wins as outbid (billing first); return copies."""
        out = []
        rival = bids.competitor(s, machine)
        for inst in s["instances"].values():
            offer = offer_of(inst)
            if (inst.get("destroyed") or inst.get("held") or inst.get("forced_status") or offer["machine_id"] != machine
                    or bids.wins(inst, offer, rival)):
                continue
            billing.accrue(inst, offer, self.now(s))
            inst.update(held=True, outbid=True, intended="stopped",
                        status_msg=f"outbid: a higher bid (${rival}/h) took this machine; the instance is stopped, its disk kept")
            out.append(dict(inst))
        return out

    def _winners(self, s: dict, machine: int) -> list[dict]:
        """Mark every outbid instance on `machine` that wins again (and that its client did not stop) as running; return
        copies."""
        out = []
        rival = bids.competitor(s, machine)
        for inst in s["instances"].values():
            offer = offer_of(inst)
            if (inst.get("destroyed") or not inst.get("held") or inst.get("user_stopped") or inst.get("forced_status")
                    or offer["machine_id"] != machine or not bids.wins(inst, offer, rival)):
                continue
            billing.accrue(inst, offer, self.now(s))
            inst.update(held=False, outbid=False, intended="running", status_msg=None)
            out.append(dict(inst))
        return out

    def _halt(self, inst: dict) -> None:
        """Stop the container (every process killed, its filesystem kept) and its link's relay (the port is kept for the
        restart). An instance whose container is still being created is stopped by finish_create."""
        if not inst.get("ssh_port"):
            return
        podman.run("stop", "-t", "0", inst["container"], check=False)
        pid = (inst.get("link") or {}).get("relay_pid")
        if pid:
            link.stop_relay(pid)
            with self.store() as s:  # a dead relay's pid, once reused by another process, must never be signalled
                rec = s["instances"][str(inst["id"])]
                if (rec.get("link") or {}).get("relay_pid") == pid:
                    rec["link"]["relay_pid"] = None

    def _resume(self, inst: dict) -> None:
        """Start the stopped container again, then its link model: a restarted container has a new veth and address, so
        the shaping is applied anew and the relay restarted on the port it had; the keys attached meanwhile are added."""
        if not inst.get("ssh_port"):
            return
        podman.run("start", inst["container"])
        far = dict(inst.get("link") or {})
        if far:
            model = link.Model(rtt_ms=far.get("rtt_ms") or 0.0, rate_mbit=far.get("rate_mbit") or 0.0, loss_pct=far.get("loss_pct") or 0.0)
            veth, needs_relay = link.apply(inst["container"], model)
            far["dev"] = veth.dev
            if needs_relay:
                far["relay_port"], far["relay_pid"] = link.start_relay(self.dir, inst["container"], veth.ip, model.rtt_ms,
                                                                       listen_port=far.get("relay_port") or 0)
        with self.store() as s:
            rec = s["instances"][str(inst["id"])]
            rec["link"] = far
            keys = list(rec.get("ssh_keys") or [])
        self._add_keys(inst["container"], keys)

    @staticmethod
    def _add_keys(container: str, keys: list[str]) -> None:
        """Append each key to root's authorized_keys unless it is there already (a restart re-adds what a stop missed)."""
        if not keys:
            return
        script = "umask 077; mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys && " + " && ".join(
            f"{{ grep -qxF {shlex.quote(k)} /root/.ssh/authorized_keys || printf '%s\\n' {shlex.quote(k)} >> /root/.ssh/authorized_keys; }}"
            for k in keys)
        podman.run("exec", container, "sh", "-c", script)

    # -- API operations: bids, start/stop, price increases ------------------------------------------------
    def change_bid(self, instance_id: int, price: float | None) -> tuple[int, dict]:
        """PUT /api/v0/instances/bid_price/{id}/: the new bid (None: the double picks a winning one); a bid that wins
        again runs the instance again, one that loses stops it."""
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return 404, {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
            if not inst.get("is_bid"):
                return 400, {"success": False, "error": "invalid_request",
                             "msg": f"Instance {instance_id} is an on-demand instance: only interruptible instances have a bid."}
            offer = offer_of(inst)
            rival = bids.competitor(s, offer["machine_id"])
            price = bids.winning_price(offer, rival) if price is None else round(float(price), 6)
            billing.accrue(inst, offer, self.now(s))
            inst["bid"] = price
            inst["dph_total"] = price
            back = self._winners(s, offer["machine_id"])
            lost = self._losers(s, offer["machine_id"])
        for b in back:
            self._resume(b)
        for v in lost:
            self._halt(v)
        return 200, {"success": True}

    def set_state(self, instance_id: int, state: str) -> tuple[int, dict]:
        """PUT /api/v0/instances/{id}/ {"state": ...}: stopped keeps the disk (storage billed); running runs it again if its
        bid wins, else it waits for its GPUs (scheduling) until it does."""
        if state not in ("running", "stopped"):
            return 400, {"success": False, "error": "invalid_args", "msg": f"state must be running or stopped, not {state!r}"}
        halt = resume = None
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return 404, {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
            offer = offer_of(inst)
            billing.accrue(inst, offer, self.now(s))
            if state == "stopped":
                inst.update(user_stopped=True, intended="stopped", status_msg="stopped by its client")
                if not inst.get("held"):
                    inst["held"] = True
                    halt = dict(inst)
            else:
                inst.update(user_stopped=False, intended="running")
                if inst.get("held"):
                    if bids.wins(inst, offer, bids.competitor(s, offer["machine_id"])):
                        inst.update(held=False, outbid=False, status_msg=None)
                        resume = dict(inst)
                    else:
                        inst.update(outbid=True, status_msg="scheduling: waiting for this machine's GPUs (outbid: its bid does not win)")
        if halt:
            self._halt(halt)
        if resume:
            self._resume(resume)
        return 200, {"success": True}

    def set_label(self, instance_id: int, label: str) -> bool:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return False
            inst["label"] = label
            return True

    def pending_price_increases(self) -> list[dict]:
        with self.store() as s:
            return [price_increases.public(r) for r in price_increases.pending(s)]

    def answer_price_increase(self, pending_id: int, accept: bool) -> dict | None:
        """Accept (the new price applies now) or reject one pending row; None when there is no such pending row."""
        with self.store() as s:
            row = price_increases.find(s, pending_id)
            if row is None:
                return None
            if accept:
                self._apply_price(s, row, self.now(s))
            row["status"] = "accepted" if accept else "rejected"
            return {"success": True, "pending_price_increase_id": pending_id, "contract_id": row["contract_id"]}

    # -- API operations: copies between instances, limited commands ------------------------------------
    def copy_direct(self, body: dict) -> dict:
        """PUT /api/v0/commands/copy_direct/: start an instance-to-instance copy (local/copies.py) and answer at once."""
        parsed = copies.check(body)
        if isinstance(parsed, str):
            return {"success": False, "error": "invalid_args", "msg": parsed}
        src, dst, src_path, dst_path = parsed
        with self.store() as s:
            for iid in (src, dst):
                inst = s["instances"].get(str(iid))
                if not inst or inst.get("destroyed"):
                    return {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."}
            jid = s.get("next_copy_id", 1)
            s["next_copy_id"] = jid + 1
            s.setdefault("copies", {})[str(jid)] = {
                "id": jid, "src_id": src, "dst_id": dst, "src_path": src_path, "dst_path": dst_path, "started_at": time.time(),
                "finished_at": None, "bytes": 0, "ok": None, "error": None, "status_msg": f"copying from C.{src}:{src_path}",
            }
            # started under the lock, as create's starter: the job exists only with something that will finish it
            copies.start(self.dir, jid)
        return {"success": True, "msg": "Remote to Remote copy initiated - check instance status bar for progress updates."}

    def copy_jobs(self) -> list[dict]:
        """Every copy_direct so far: src_id, dst_id, paths, bytes (of the files transferred), finished_at (None while it
        runs), ok, error."""
        with self.store() as s:
            return [dict(c) for c in (s.get("copies") or {}).values()]

    def execute(self, instance_id: int, command: object) -> dict:
        """PUT /api/v0/instances/command/{id}/: ls or du (local/execute.py) against the instance's filesystem, running or
        stopped; the answer names the result token (the server makes it a URL) and the host prefix in the output."""
        parsed = execute.parse_or_error(command)
        if isinstance(parsed, str):
            return {"success": False, "error": "invalid_command", "msg": parsed}
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
        token = execute.new_token()
        root = podman.out("mount", inst["container"])  # mounted until the command has run (its thread unmounts)

        def work() -> None:
            try:
                text = execute.run(Path(root), *parsed)
            except (VoltError, OSError, subprocess.SubprocessError) as e:
                text = f"error: {e}\n"
            finally:
                podman.run("unmount", inst["container"], check=False)
            execute.write_result(self.dir / "results", token, text)

        threading.Thread(target=work, daemon=True).start()
        return {"success": True, "token": token, "writeable_path": root}

    def command_result(self, token: str) -> str | None:
        return execute.read_result(self.dir / "results", token)

    # -- test hooks (faults) ---------------------------------------------------------------------
    def add_http_fault(self, status: int, count: int = 1, path_prefix: str = "/", body: dict | None = None) -> None:
        with self.store() as s:
            s["faults"]["http"].append({"status": status, "count": count, "path_prefix": path_prefix, "body": body or {}})

    def take_http_fault(self, path: str) -> dict | None:
        with self.store() as s:
            for fault in s["faults"]["http"]:
                if path.startswith(fault["path_prefix"]) and fault["count"] > 0:
                    fault["count"] -= 1
                    s["faults"]["http"] = [f for f in s["faults"]["http"] if f["count"] > 0]
                    return fault
        return None

    def add_after_create_fault(self, status: int) -> None:
        """The next successful create answers `status` (e.g. 502) instead: the instance exists, the client never hears it."""
        with self.store() as s:
            s["faults"].setdefault("after_create", []).append(status)

    def take_after_create_fault(self) -> int | None:
        with self.store() as s:
            pending = s["faults"].get("after_create") or []
            return pending.pop(0) if pending else None

    def set_next_create(self, behaviour: str) -> None:
        """'never_running', 'exits', 'offline' or 'no_sshd' for the next created instance."""
        with self.store() as s:
            s["faults"]["next_create"].append(behaviour)

    def set_faults(self, **kw: float) -> None:
        """dph_factor (live price vs offer), loading_s (time spent 'loading')."""
        with self.store() as s:
            s["faults"].update(kw)

    def preempt(self, instance_id: int) -> None:
        """What a host reclaiming an interruptible machine looks like: container killed, status exited."""
        with self.store() as s:
            inst = self._live(s, instance_id)
            billing.accrue(inst, offer_of(inst), self.now(s))
            inst["forced_status"] = "exited"
            inst["status_msg"] = "preempted by the local double"
        podman.run("kill", inst["container"], check=False)

    # -- API operations --------------------------------------------------------------------------
    def search(self, query: dict) -> list[dict]:
        with self.store() as s:
            rented = {i["offer_id"] for i in s["instances"].values() if not i.get("destroyed")}
            competitors = dict(s.get("competitors") or {})
        return offers.search(query, rented, competitors)

    def create(self, offer_id: int, body: dict) -> dict:
        offer = next((o for o in offers.CATALOGUE if o["id"] == offer_id), None)
        if offer is None:
            return {"success": False, "error": "no_such_ask", "msg": f"Offer {offer_id} does not exist."}
        with self.store() as s:
            if any(i["offer_id"] == offer_id and not i.get("destroyed") for i in s["instances"].values()):
                return {"success": False, "error": "no_such_ask", "msg": "Instance type no longer available."}
            iid = s["next_id"]
            s["next_id"] += 1
            is_bid = body.get("price") is not None  # the SDK sends "price": null for on-demand
            bid = round(float(body["price"]), 6) if is_bid else None
            rival = bids.competitor(s, offer["machine_id"])
            lost = is_bid and not bids.wins({"is_bid": True, "bid": bid}, offer, rival)
            if lost and body.get("cancel_unavail"):
                return {"success": False, "error": "bid_too_low",
                        "msg": f"Bid ${bid}/h is below the winning bid ${bids.winning_price(offer, rival)}/h on this machine."}
            behaviour = s["faults"]["next_create"].pop(0) if s["faults"]["next_create"] else ""
            dph = round(float(bid if is_bid else offer["dph_total"]) * s["faults"]["dph_factor"], 4)
            name = f"volt-local-{self.scope}-{iid}"
            s["instances"][str(iid)] = {
                "id": iid,
                "offer_id": offer_id,
                "container": name,
                "behaviour": behaviour,
                "image": body.get("image"),
                "label": body.get("label"),
                "disk": body.get("disk"),
                "env": body.get("env") or {},
                "runtype": body.get("runtype"),
                "recipe": image_recipe(),  # the local image standing for body["image"] (VOLT_LOCAL_IMAGE, world.py)
                "dph_total": dph,
                "start_date": time.time(),
                "ssh_port": 0,
                "ssh_keys": [],
                "is_bid": is_bid,
                "bid": bid,
                # a bid that loses at creation: the instance exists, stopped, as if outbid (bids.states)
                "held": lost,
                "outbid": lost,
                "intended": "stopped" if lost else "running",
                "status_msg": f"outbid: the bid ${bid}/h is below the winning bid ${bids.winning_price(offer, rival)}/h" if lost else None,
            }
            billing.open_account(s["instances"][str(iid)], self.now(s), s["faults"]["loading_s"])
            # The starter is spawned before the record is written (it waits on this store's lock): the instance
            # exists for the API only if something will start it.
            starter, log = self._start_detached(iid, self.world.volumes(iid, offer) if self.world else [])
        if starter.wait() != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise VoltError(f"local double: starting instance {iid} failed: {lines[-1] if lines else starter.returncode}")
        log.unlink(missing_ok=True)
        if lost:  # as Vast does: the instance was created (stopped, destroyable), the call reports the error
            return {"success": False, "new_contract": iid, "error": "bid_too_low",
                    "msg": f"Bid ${bid}/h is below the winning bid ${bids.winning_price(offer, rival)}/h on this machine: "
                           f"instance {iid} was created stopped; raise the bid (change bid) to run it."}
        return {"success": True, "new_contract": iid}

    def _start_detached(self, iid: int, volumes: list[str]) -> tuple[subprocess.Popen, Path]:
        """Start the instance's container in a process of its own session. Vast finishes a create server-side
        whatever happens to the client: a Ctrl-C or a death of the controller that runs this double (its HTTP
        server is a thread of the CLI) must not leave an instance that never starts."""
        log = self.dir / f"start-{iid}.log"  # a file, not a pipe: the starter may outlive this process
        with open(log, "wb") as err:
            starter = subprocess.Popen([sys.executable, "-m", "volt_ansible.local.double", "start", str(self.dir), str(iid), json.dumps(volumes)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        return starter, log

    def finish_create(self, iid: int, volumes: list[str]) -> None:
        """The detached half of create: the container, then its port and the keys attached meanwhile; a destroy that
        came first wins."""
        with self.store() as s:
            inst = s["instances"].get(str(iid))
            if inst is None:  # the create's record was never written (its process died first): nothing to start
                return
            inst = dict(inst)
        port = self._start_container(inst["container"], iid, inst["behaviour"], inst.get("env") or {}, volumes,
                                     inst.get("recipe") or "bare")
        far = self._far_away(inst["container"]) if inst["behaviour"] != "exits" else {}
        with self.store() as s:
            rec = s["instances"][str(iid)]
            rec["ssh_port"] = far.get("relay_port") or port
            rec["link"] = far
            destroyed, keys, held = rec.get("destroyed"), list(rec.get("ssh_keys") or []), rec.get("held")
            rec = dict(rec)
        if destroyed:
            link.stop_relay(far.get("relay_pid"))
            hosts.remove(inst["container"])
            return
        if keys and self._container_running(inst["container"]):
            self._add_keys(inst["container"], keys)
        if held:  # a bid that lost at creation, or stopped / outbid while its container was being made
            self._halt(rec)

    def _start_container(self, name: str, iid: int, behaviour: str, env: dict, volumes: list[str], recipe: str = "bare") -> int:
        port = hosts.start(
            name,
            recipe=recipe,  # bare: like nvidia/cuda *-devel (curl, no python3, git or C toolchain); dev: those prepared
            volumes=volumes,
            labels={LABEL: self.scope, "volt-ansible.instance": str(iid)},
            env={str(k): str(v) for k, v in env.items() if not str(k).startswith("-")},
            sshd=behaviour != "no_sshd",
            hostname=f"C.{iid}",
        )
        if behaviour == "exits":
            podman.run("kill", name, check=False)
        return port

    def _far_away(self, name: str) -> dict:
        """The link model of VOLT_LOCAL_RTT_MS / _RATE_MBIT / _LOSS_PCT on the container's veth (local/link.py); where the
        kernel has no netem the delay comes from a relay, and the instance's ssh_port is the relay's."""
        model = link.Model.from_env()
        if not model.active:
            return {}
        veth, needs_relay = link.apply(name, model)
        out = {"rtt_ms": model.rtt_ms, "rate_mbit": model.rate_mbit, "loss_pct": model.loss_pct, "dev": veth.dev,
               "delay_by": "relay" if needs_relay else ("netem" if model.rtt_ms else "")}
        if needs_relay:
            out["relay_port"], out["relay_pid"] = link.start_relay(self.dir, name, veth.ip, model.rtt_ms)
        return out

    def _container_running(self, name: str) -> bool:
        return podman.init_pid(name) != 0

    def row(self, inst: dict, loading_s: float, market: dict | None = None) -> dict:
        """The instance as Vast shows it. market: {"rival": the competing bid on its machine or None, "now": the double's
        clock, "copy": the newest copy into it or None}."""
        offer = offer_of(inst)
        market = market or {}
        if inst.get("forced_status"):
            status = inst["forced_status"]
        elif inst["behaviour"] == "offline":
            status = "offline"
        elif not inst["ssh_port"]:  # its container is still being started (or its creator died doing so): Vast says loading
            status = "loading"
        elif inst.get("held"):  # stopped by its client, or outbid: it runs again (an "exited" one never does)
            status = "stopped"
        elif not self._container_running(inst["container"]):
            status = "exited"
        elif inst["behaviour"] == "never_running" or time.time() - inst["start_date"] < loading_s:
            status = "loading"
        else:
            status = "running"
        port = str(inst["ssh_port"])
        held = bool(inst.get("held"))
        disk_hour = billing.storage_per_hour(offer, inst["disk"])
        gpu_hour = 0.0 if held else float(inst["dph_total"])
        states = bids.states(inst) if held else {"cur_state": "running" if status != "exited" else "stopped",
                                                 "intended_status": "running", "next_state": "running"}
        copy = market.get("copy")
        msg = inst.get("status_msg") or (copy and copy["status_msg"]) or f"{status}"
        return {
            "id": inst["id"],
            "actual_status": status,
            **states,
            "label": inst["label"],
            "image_uuid": inst["image"],
            "image_runtype": inst["runtype"],
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer["gpu_ram"],
            "cpu_cores": offer["cpu_cores"],
            "cpu_ram": offer["cpu_ram"],
            "disk_space": inst["disk"],
            "cuda_max_good": offer["cuda_max_good"],
            "driver_version": offer["driver_version"],
            "ssh_host": "127.0.0.1",
            "ssh_port": inst["ssh_port"],
            "ssh_idx": "0",
            "public_ipaddr": "127.0.0.1",
            "ports": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]},
            "direct_port_start": inst["ssh_port"],
            "direct_port_end": inst["ssh_port"],
            # what it bills now: its price (the bid for an interruptible one) while it runs, its storage while stopped
            "dph_total": round(disk_hour, 6) if held else inst["dph_total"],
            "dph_base": gpu_hour,
            "is_bid": bool(inst.get("is_bid")),
            "min_bid": bids.winning_price(offer, market.get("rival")),  # the lowest bid that runs on this machine now
            "time_remaining_isbid": "",
            "storage_cost": offer["storage_cost"],  # $/GB/month
            "storage_total_cost": round(disk_hour, 6),  # $/h for this instance's disk
            "instance": {"gpuCostPerHour": gpu_hour, "diskHour": round(disk_hour, 6), "totalHour": round(gpu_hour or disk_hour, 6)},
            "reliability2": offer["reliability"],
            "machine_id": offer["machine_id"],
            "status_msg": msg,
            "start_date": inst["start_date"],
            "extra_env": [[k, str(v)] for k, v in inst["env"].items()],
            "inet_up": offer["inet_up"],
            "inet_down": offer["inet_down"],
            "geolocation": offer["geolocation"],
        }

    @staticmethod
    def _market(s: dict, inst: dict) -> dict:
        copies = [c for c in (s.get("copies") or {}).values() if c["dst_id"] == inst["id"]]
        return {"rival": bids.competitor(s, offer_of(inst)["machine_id"]), "copy": copies[-1] if copies else None}

    def instance(self, instance_id: int) -> dict | None:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            loading_s = s["faults"]["loading_s"]
            market = self._market(s, inst) if inst else {}
        if not inst or inst.get("destroyed"):
            return None
        return self.row(inst, loading_s, market)

    def instances(self) -> list[dict]:
        with self.store() as s:
            live = [(i, self._market(s, i)) for i in s["instances"].values() if not i.get("destroyed")]
            loading_s = s["faults"]["loading_s"]
        return [self.row(i, loading_s, m) for i, m in live]

    def destroy(self, instance_id: int) -> bool:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return False
            billing.accrue(inst, offer_of(inst), self.now(s))
            inst["destroyed"] = time.time()
        link.stop_relay((inst.get("link") or {}).get("relay_pid"))
        hosts.remove(inst["container"])
        return True

    def attach_ssh(self, instance_id: int, key: str) -> dict:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
            inst["ssh_keys"].append(key.strip())
        if self._container_running(inst["container"]):
            script = f"umask 077; mkdir -p /root/.ssh && printf '%s\\n' {shlex.quote(key.strip())} >> /root/.ssh/authorized_keys"
            podman.run("exec", inst["container"], "sh", "-c", script)
        return {"success": True, "msg": "SSH key attached."}

    def containers(self) -> list[str]:
        """Names of this double's containers that podman still has (running or not)."""
        out = podman.out("ps", "-a", "--filter", f"label={LABEL}={self.scope}", "--format", "{{.Names}}")
        return [n for n in out.splitlines() if n]

    def clean(self) -> int:
        """Remove every container of this double and mark its instances destroyed."""
        names = self.containers()
        for n in names:
            hosts.remove(n)
        with self.store() as s:
            for inst in s["instances"].values():
                inst.setdefault("destroyed", time.time())
                link.stop_relay((inst.get("link") or {}).get("relay_pid"))
        return len(names)


def main(argv: list[str] | None = None) -> None:
    """python -m volt_ansible.local.double start STATE_DIR ID VOLUMES_JSON: the detached half of a create."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 4 or args[0] != "start":
        raise SystemExit("usage: python -m volt_ansible.local.double start STATE_DIR ID VOLUMES_JSON")
    LocalVast(Path(args[1])).finish_create(int(args[2]), json.loads(args[3]))


if __name__ == "__main__":
    main()
