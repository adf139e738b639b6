"""The bench's projects and instances: a throwaway project (tests/conftest.py's), its local instance after
`volt-ansible provision` (container, ssh/scp argv, the shaped link), and a watcher for a file inside it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

from conftest import Project, make_project

from volt_ansible import ssh as ssh_mod
from volt_ansible.local import aptcache, podman
from volt_ansible.local.link import Model, Veth
from volt_ansible.local.world import World

DEST = "/root/volt-x"



def new_project(root: Path) -> Project:
    """What tests/conftest.py's `project` fixture makes, with its .volt/ already there."""
    p = make_project(root)
    (root / ".volt").mkdir(mode=0o700)
    return p


def publish(p: Project, python_sample: Path) -> Path:
    """The local world's data root of this project, with the bench's Stack Python in place (before provision,
    World.publish_data() only fills what is absent: the fixture's checkpoints and small JSONL)."""
    root = p.volt_dir / "local" / "data" / "VoltData"
    dst = root / "phase0/the_stack_sample/python/python_sample.jsonl"
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(python_sample, dst)
    return World(p.root, p.volt_dir / "local").publish_data()


class Instance:
    """The instance of a project after `volt-ansible provision`: its container, ssh/scp argv, shaped link."""

    def __init__(self, p: Project, rate_mbit: float):
        st = p.state()["instance"]
        self.id, self.port, self.host_vars = st["id"], st["ssh_port"], st.get("host_vars") or {}
        vast = json.loads((p.volt_dir / "local" / "vast.json").read_text())
        self.container = vast["instances"][str(self.id)]["container"]
        opts = [*ssh_mod.options(p.volt_dir), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
        self.ssh = ["ssh", *opts, "-p", str(self.port), "root@127.0.0.1"]
        self.scp = ["scp", "-q", *opts, "-P", str(self.port)]
        self.link = Veth(self.container)
        self.link.shape(Model(rate_mbit=rate_mbit), exempt=aptcache.endpoint())  # the package mirror is next to the instance

    def dst(self, path: str) -> str:
        return f"root@127.0.0.1:{path}"

    def exec(self, cmd: str, timeout: float = 60) -> str:
        """A look inside the container (not over the shaped link): measuring, not part of a method."""
        return podman.run("exec", self.container, "sh", "-c", cmd, check=False, timeout=timeout).stdout.decode(errors="replace")

    def job_states(self) -> dict[str, str]:
        out = self.exec(f"cd {DEST}/logs 2>/dev/null && grep -H '^state=' *.status 2>/dev/null")
        return {ln.split(".status:")[0]: ln.split("state=", 1)[1] for ln in out.splitlines() if ".status:state=" in ln}


class Watch:
    """Polls a file inside the container until it is non-empty, or until a line of it matches `pattern` (a Perl regex,
    grep -P); `at` is the container's clock then (= the host's)."""

    def __init__(self, inst: Instance, path: str, pattern: str | None = None):
        self.inst, self.at, self.bytes = inst, None, None
        until = f"grep -qaP {shlex.quote(pattern)} {shlex.quote(path)} 2>/dev/null" if pattern else f"[ -s {shlex.quote(path)} ]"
        cmd = f"until {until}; do sleep 0.1; done; date +%s.%N"
        self.proc = subprocess.Popen([podman.require(), "exec", inst.container, "sh", "-c", cmd], env=podman.env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        out, _ = self.proc.communicate()
        if out.strip():
            self.bytes = self.inst.link.tx_bytes()
            self.at = float(out.strip())

    def wait(self, timeout: float) -> float | None:
        self.thread.join(timeout)
        return self.at

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def timed(argv: list[str], what: str, timeout: float = 1800, stdin=None) -> tuple[float, str]:
    """Seconds a command took and its stdout; a failure raises with the end of what it said."""
    t = time.time()
    proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")
    return time.time() - t, proc.stdout


def provision(p: Project, rate_mbit: float, rtt_ms: float, image: str = "bare") -> tuple[Instance, float, int]:
    """Rent the local instance rtt_ms away (volt_ansible/local/link.py: the same for the guide's way and the product's)."""
    p.cli("provision", "--backend", "local", timeout=300, VOLT_LOCAL_RTT_MS=f"{rtt_ms:g}", VOLT_LOCAL_IMAGE=image)
    t0 = time.time()  # sshd accepts the campaign key: "instance running"
    inst = Instance(p, rate_mbit)
    return inst, t0, inst.link.tx_bytes()


def destroy(p: Project, inst: Instance | None) -> None:
    if inst is not None:
        inst.link.unshape()
    if (p.volt_dir / "state.json").exists() and p.state().get("instance"):
        p.cli("destroy", "--yes", "--force", check=False, timeout=120)
