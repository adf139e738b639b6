"""Run a playbook through ansible-runner: a fresh private_data_dir per run, events turned into progress."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from volt_ansible import notices, runlock, ssh
from volt_ansible.backends.vast import take_secrets
from volt_ansible.errors import VoltError


@dataclass
class Failure:
    task: str
    host: str
    msg: str
    host_key: bool = False  # msg is ssh.host_key_line's: the whole story in one line, nothing ran on the host


@dataclass
class Result:
    rc: int
    status: str
    stats: dict
    failures: list[Failure] = field(default_factory=list)
    log: Path | None = None

    @property
    def changed(self) -> int:
        return sum((self.stats or {}).get("changed", {}).values())


def resolve(root: Path, name: str) -> Path:
    """`prepare`, `prepare.yml` or a path: the playbook file, or a one-line error listing what exists."""
    candidates = [Path(name), root / name, root / "playbooks" / name, root / "playbooks" / f"{name}.yml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = ", ".join(sorted(p.stem for p in (root / "playbooks").glob("*.yml")))
    raise VoltError(f"no playbook {name!r}: choose one of {known} (from playbooks/) or give a path")


def _failure(task: str, host: str, res: dict, known_hosts: Path) -> Failure:
    """A failed or unreachable task; ssh's refusal of a changed host key becomes ssh.host_key_line's one line."""
    texts = [res.get(k) or "" for k in ("msg", "stderr", "stdout", "module_stderr", "module_stdout")]
    texts += [r.get("msg") or "" for r in res.get("results") or [] if isinstance(r, dict)]
    line = ssh.host_key_line("\n".join(map(str, texts)), host, known_hosts)
    return Failure(task, host, line, True) if line else Failure(task, host, _message(res))


SSH_CLOSED = re.compile(r"^Shared connection to \S+ closed\.$")  # ssh's own line after a raw command, not the command's


def _message(res: dict) -> str:
    msg = res.get("msg") or res.get("reason") or ""
    stderr = [ln for ln in str(res.get("stderr") or "").strip().splitlines() if not SSH_CLOSED.match(ln)]
    if not stderr and res.get("stdout"):  # raw runs under a tty: the command's own words are in stdout
        stderr = str(res["stdout"]).strip().splitlines()[-1:]
    if stderr:
        msg = f"{msg}: {stderr[-1]}" if msg else "\n".join(stderr)
    if not msg and res.get("results"):
        msg = next((r.get("msg", "") for r in res["results"] if r.get("failed")), "")
    return " ".join(str(msg).split())[:800]


def run(
    root: Path,
    playbook: Path,
    volt_dir: Path,
    extravars: dict | None = None,
    on_task: Callable[[str, int], None] | None = None,
    limit: str | None = None,
) -> Result:
    """Run `playbook` with the project's ansible.cfg and dynamic inventory.

    Extra vars go to a throwaway private_data_dir (ansible-runner reads env/extravars back
    on a later run in the same dir); secrets never go there.
    """
    failures: list[Failure] = []
    tasks_seen = 0

    def handler(event: dict) -> bool:
        nonlocal tasks_seen
        kind, data = event.get("event"), event.get("event_data", {})
        if kind == "playbook_on_task_start" and on_task:
            tasks_seen += 1
            on_task(data.get("task", ""), tasks_seen)
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.append(_failure(data.get("task", "?"), data.get("host", "?"), data.get("res", {}), ssh.known_hosts_path(volt_dir)))
        return True

    logs = volt_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{playbook.stem}.log"
    # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless it is given: the pinned host key would then
    # only warn (Ansible's `StrictHostKeyChecking=no` comes first on the ssh command line).
    env = {"VOLT_DIR": str(volt_dir), "ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "True"}
    take_secrets()  # ansible-runner copies os.environ whole into the run (and its artifacts): never the Vast API key
    with runlock.held(volt_dir, playbook.stem, notices.say) as token:
        pdd = tempfile.mkdtemp(prefix="volt-runner-")
        try:
            r = ansible_runner.run(
                private_data_dir=pdd,
                project_dir=str(root),
                playbook=str(playbook),
                inventory=str(root / "inventory"),
                extravars=extravars or {},
                envvars={**env, "PATH": os.environ.get("PATH", "")},
                limit=limit,
                cmdline=f"-e {runlock.TOKEN_VAR}={token}",  # lets the next run find and end it if this process dies
                event_handler=handler,
                quiet=True,
            )
            stdout = Path(pdd, "artifacts", r.config.ident, "stdout")
            if stdout.exists():
                shutil.copyfile(stdout, log)
            return Result(rc=r.rc, status=r.status, stats=r.stats or {}, failures=failures, log=log)
        finally:
            shutil.rmtree(pdd, ignore_errors=True)
