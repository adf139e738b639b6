"""What every campaign verb shares: the project root, the backup directory, the state checked against the account,
a backend by name, and running a playbook."""

from __future__ import annotations

from pathlib import Path

from volt_ansible import backends, home, notices, reconcile
from volt_ansible import playbook as pb
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.backends import Backend
from volt_ansible.errors import VoltError
from volt_ansible.rent import Progress, quiet
from volt_ansible.state import State

# Progress and quiet: the progress callback every verb takes (rent's), re-exported for the verbs.
__all__ = ["Progress", "backend_name", "backup_dir", "instance_endpoint", "open_backend", "project_root", "quiet", "reconciled", "required",
           "resolve_playbook", "run_ok", "run_playbook", "volt_dir"]


def project_root() -> Path:
    """The directory holding ansible.cfg and group_vars/: the current one (commands run from the project root)."""
    root = Path.cwd()
    if not (root / "ansible.cfg").exists() or not (root / "group_vars").is_dir():
        raise VoltError(f"{root} is not a volt-ansible project (no ansible.cfg + group_vars/): cd to the project root")
    return root


def volt_dir() -> Path:
    return state_mod.volt_dir()


def backup_dir() -> Path:
    return home.default_dir(project_root(), spec_mod.load().campaign)


def required() -> list[str]:
    """The outputs the campaign must bring home (the codebook, every stage's)."""
    data = spec_mod.read()
    return home.required_outputs(data.get("volt_phase03"), data.get("volt_curriculum"))


def backend_name(value: str) -> str:
    """A --backend value, checked."""
    return backends.named(value)


def open_backend(name: str) -> Backend:
    return backends.open_backend(name, state_mod.volt_dir())


def reconciled(always: bool = True) -> tuple[State, list[str]]:
    """The state after checking it against the account's instances (reconcile.run): always for the commands that talk to
    the API anyway, for the others only while a create is pending. Returns the lines about instances rented elsewhere."""
    state = state_mod.load()
    lines: list[str] = []
    if always or state.creating is not None:
        for name in sorted(state.backends()):
            with open_backend(name) as backend:
                lines += reconcile.run(state, backend, notices.say).lines()
    return state, lines


def resolve_playbook(name: str) -> Path:
    """`prepare`, `prepare.yml` or a path: the playbook file, or a one-line error listing what exists."""
    return pb.resolve(project_root(), name)


def run_playbook(name: str, extravars: dict | None = None, on_task=None, limit: str | None = None) -> pb.Result:
    """Run playbooks/<name>.yml (or a path) with the campaign inventory through ansible-runner."""
    root = project_root()
    reconciled(always=False)
    return pb.run(root, pb.resolve(root, name), state_mod.volt_dir(), extravars or {}, on_task=on_task, limit=limit)


def run_ok(name: str, extravars: dict, progress: Progress, then: str) -> None:
    """Run a playbook; a failure becomes one line naming the task and what to do next."""
    result = run_playbook(name, extravars, on_task=lambda task, n: progress(f"{name} [{n}] {task}"))
    if result.rc != 0:
        f = next((f for f in result.failures if f.host_key), result.failures[0] if result.failures else None)
        if f and f.host_key:  # trying again would not help: the line says what to do
            raise VoltError(f.msg)
        why = f"task '{f.task}' on {f.host}: {f.msg}" if f else f"ansible-playbook exited {result.rc}"
        raise VoltError(f"{name} failed ({why}; log {result.log}); {then}")


def instance_endpoint() -> tuple[str, int]:
    state, _ = reconciled(always=False)
    if state.instance is None or not state.instance.ssh_port:
        raise VoltError("no instance: run `volt-ansible provision` first")
    return state.instance.ssh_host, state.instance.ssh_port
