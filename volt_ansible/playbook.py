"""Run a playbook through ansible-runner: a fresh private_data_dir per run, events turned into progress."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from volt_ansible.errors import VoltError


@dataclass
class Failure:
    task: str
    host: str
    msg: str


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


def _message(res: dict) -> str:
    msg = res.get("msg") or res.get("reason") or ""
    if res.get("stderr"):
        msg = f"{msg}: {res['stderr'].strip().splitlines()[-1]}" if msg else res["stderr"]
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
    import ansible_runner

    failures: list[Failure] = []
    tasks_seen = 0

    def handler(event: dict) -> bool:
        nonlocal tasks_seen
        kind, data = event.get("event"), event.get("event_data", {})
        if kind == "playbook_on_task_start" and on_task:
            tasks_seen += 1
            on_task(data.get("task", ""), tasks_seen)
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.append(Failure(data.get("task", "?"), data.get("host", "?"), _message(data.get("res", {}))))
        return True

    logs = volt_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{playbook.stem}.log"
    env = {"VOLT_DIR": str(volt_dir), "ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
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
            event_handler=handler,
            quiet=True,
        )
        stdout = Path(pdd, "artifacts", r.config.ident, "stdout")
        if stdout.exists():
            shutil.copyfile(stdout, log)
        return Result(rc=r.rc, status=r.status, stats=r.stats or {}, failures=failures, log=log)
    finally:
        shutil.rmtree(pdd, ignore_errors=True)
