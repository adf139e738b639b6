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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write
from volt_ansible.local import hosts, link, offers, podman
from volt_ansible.local.world import World, image_recipe

LABEL = "volt-ansible.local"


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
            yield data
            # instances, ports, attached keys: private; the double stands for a remote service, not worth an fsync
            atomic_write(p, json.dumps(data, indent=1), mode=0o600, durable=False)

    # -- test hooks ----------------------------------------------------------------------------
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
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                raise VoltError(f"local instance {instance_id} does not exist")
            inst["forced_status"] = "exited"
            inst["status_msg"] = "preempted by the local double"
        podman.run("kill", inst["container"], check=False)

    # -- API operations --------------------------------------------------------------------------
    def search(self, query: dict) -> list[dict]:
        with self.store() as s:
            rented = {i["offer_id"] for i in s["instances"].values() if not i.get("destroyed")}
        return offers.search(query, rented)

    def create(self, offer_id: int, body: dict) -> dict:
        offer = next((o for o in offers.CATALOGUE if o["id"] == offer_id), None)
        if offer is None:
            return {"success": False, "error": "no_such_ask", "msg": f"Offer {offer_id} does not exist."}
        with self.store() as s:
            if any(i["offer_id"] == offer_id and not i.get("destroyed") for i in s["instances"].values()):
                return {"success": False, "error": "no_such_ask", "msg": "Instance type no longer available."}
            iid = s["next_id"]
            s["next_id"] += 1
            behaviour = s["faults"]["next_create"].pop(0) if s["faults"]["next_create"] else ""
            dph = round(float(body.get("price") or offer["dph_total"]) * s["faults"]["dph_factor"], 4)
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
            }
            # The starter is spawned before the record is written (it waits on this store's lock): the instance
            # exists for the API only if something will start it.
            starter, log = self._start_detached(iid, self.world.volumes(iid, offer) if self.world else [])
        if starter.wait() != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise VoltError(f"local double: starting instance {iid} failed: {lines[-1] if lines else starter.returncode}")
        log.unlink(missing_ok=True)
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
            destroyed, keys = rec.get("destroyed"), list(rec.get("ssh_keys") or [])
        if destroyed:
            link.stop_relay(far.get("relay_pid"))
            hosts.remove(inst["container"])
        elif keys and self._container_running(inst["container"]):
            script = "umask 077; mkdir -p /root/.ssh && " + " && ".join(
                f"printf '%s\\n' {shlex.quote(k)} >> /root/.ssh/authorized_keys" for k in keys)
            podman.run("exec", inst["container"], "sh", "-c", script)

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
        proc = podman.run("inspect", "-f", "{{.State.Running}}", name, check=False)
        return proc.returncode == 0 and proc.stdout.decode().strip() == "true"

    def row(self, inst: dict, loading_s: float) -> dict:
        offer = next(o for o in offers.CATALOGUE if o["id"] == inst["offer_id"])
        if inst.get("forced_status"):
            status = inst["forced_status"]
        elif inst["behaviour"] == "offline":
            status = "offline"
        elif not inst["ssh_port"]:  # its container is still being started (or its creator died doing so): Vast says loading
            status = "loading"
        elif not self._container_running(inst["container"]):
            status = "exited"
        elif inst["behaviour"] == "never_running" or time.time() - inst["start_date"] < loading_s:
            status = "loading"
        else:
            status = "running"
        port = str(inst["ssh_port"])
        return {
            "id": inst["id"],
            "actual_status": status,
            "cur_state": "running" if status != "exited" else "stopped",
            "intended_status": "running",
            "next_state": "running",
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
            "dph_total": inst["dph_total"],
            "reliability2": offer["reliability"],
            "machine_id": offer["machine_id"],
            "status_msg": inst.get("status_msg") or f"{status}",
            "start_date": inst["start_date"],
            "extra_env": [[k, str(v)] for k, v in inst["env"].items()],
            "inet_up": offer["inet_up"],
            "inet_down": offer["inet_down"],
            "geolocation": offer["geolocation"],
        }

    def instance(self, instance_id: int) -> dict | None:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            loading_s = s["faults"]["loading_s"]
        if not inst or inst.get("destroyed"):
            return None
        return self.row(inst, loading_s)

    def instances(self) -> list[dict]:
        with self.store() as s:
            live = [i for i in s["instances"].values() if not i.get("destroyed")]
            loading_s = s["faults"]["loading_s"]
        return [self.row(i, loading_s) for i in live]

    def destroy(self, instance_id: int) -> bool:
        with self.store() as s:
            inst = s["instances"].get(str(instance_id))
            if not inst or inst.get("destroyed"):
                return False
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
