"""Destroying: what is not home yet (on the instance, or by the spec's outputs) and the refusal that protects it."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from volt_ansible import datasync, home, jobs, rent, ssh
from volt_ansible import state as state_mod
from volt_ansible.campaign.context import backup_dir, open_backend, project_root, reconciled, required
from volt_ansible.errors import VoltError
from volt_ansible.state import Instance, State


def not_home() -> list[str]:
    """The campaign's outputs (codebook, every stage's) that are not home and verified yet."""
    return home.missing(backup_dir(), required())


@dataclass
class Destroyed:
    ids: list[int]
    lost: list[str]  # what existed and was not home (destroy --force): files on the instance, or the spec's outputs
    newest_epoch: dict | None
    note: str = ""  # how `lost` was judged when the instance could not be read


def instance_files(inst: Instance) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime s)} of what the jobs wrote on the instance and backup brings home (outputs, epoch
    checkpoints live and archived, the jobs' and the chain's logs), relative to the repository, in one ssh round trip.
    Raises VoltError when the instance cannot be read."""
    lay = jobs.layout(project_root())
    archive = lay.epoch_archive
    q = shlex.quote
    files = [j.output for j in lay.jobs if j.output] + [j.log for j in [*lay.jobs, lay.chain]]
    globs = []
    for e in [j.epoch for j in lay.jobs if j.epoch]:
        names = f"{q(e['prefix'])}*{q(e['suffix'])}"
        globs += [f"{q(e['dir'])}/{names}", f"{q(e['dir'])}/{q(archive)}/*/{names}"]
    script = "\n".join([
        f"M={q(jobs.MARK)}",
        f'cd {q(lay.dest)} 2>/dev/null || {{ echo "$M end"; exit 0; }}',  # no repository: nothing was ever written
        'echo "$M files"',
        f'for f in {" ".join([*map(q, files), *globs])}; do [ -f "$f" ] && stat -c "%s %Y %n" "$f"; done',
        'echo "$M end"',
    ]) + "\n"
    text = jobs.read_remote(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port, script, timeout=30)
    if f"{jobs.MARK} end" not in text:
        raise VoltError("incomplete answer")
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        size, _, rest = line.partition(" ")
        mtime, _, path = rest.partition(" ")
        if size.isdigit() and mtime.isdigit() and path:
            found[posixpath.normpath(path)] = (int(size), int(mtime))
    return found


def not_home_on(files: dict[str, tuple[int, int]]) -> list[str]:
    """The instance's files (instance_files) that are not home: no entry in home.json for that instance path (the
    backup's src, or its path at home), on disk with the same size and the same modification time."""
    held: dict[str, set[tuple[int, int]]] = {}
    for e in home.entries(backup_dir()):
        key = (e.get("size"), int(e.get("mtime_ns") or 0) // 10**9)
        for p in {e.get("src"), e.get("path")} - {None}:
            held.setdefault(str(p), set()).add(key)
    return [p for p, key in sorted(files.items()) if key not in held.get(p, set())]


def _at_risk(state: State) -> tuple[list[str], str]:
    """(what destroying would lose, "" or how that was judged when the instance could not be read)."""
    inst = state.instance
    if inst is not None and inst.ssh_port:
        try:
            return not_home_on(instance_files(inst)), ""
        except VoltError as e:
            why = f"instance {inst.id} cannot be read over ssh ({e})"
    else:
        why = "no reachable instance is recorded"
    return not_home(), f"{why}: judged by the spec's outputs instead"


def _listed(paths: list[str], n: int = 6) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def destroy(force: bool = False, reason: str = "destroyed") -> Destroyed:
    """Destroy the instance and any kept after a preemption. Refused while something the jobs wrote on the instance
    (outputs, epoch checkpoints, logs) is not home, unless force; when the instance cannot be read, while the spec's
    outputs are not home."""
    state, _ = reconciled()
    targets = state.owned()
    if not targets:
        raise VoltError(f"no instance to destroy: {state_mod.path()} records none (see `volt-ansible status`)")
    missing, note = _at_risk(state)
    if missing and not force:
        where = f"{note}: " if note else "on the instance, "
        raise VoltError(
            f"not destroying instance {targets[0].id}: {where}{_listed(missing)} not home yet; run `volt-ansible backup` (or "
            f"`volt-ansible finish` once training is done), or `volt-ansible destroy --force` to lose them"
        )
    newest = home.summary(backup_dir()).get("newest_epoch")
    volt_dir = state_mod.volt_dir()
    done = []
    for inst in targets:
        with open_backend(inst.backend) as backend:
            backend.destroy(inst.id)
        rent.close_ledger(state, inst.id, reason)
        datasync.stop_driver(volt_dir / "data-sync" / f"volt-{inst.id}.json")  # else it retries a gone host for data_sync_outage_s
        ssh.forget_host(volt_dir, inst.ssh_host, inst.ssh_port)
        if state.instance is not None and state.instance.id == inst.id:
            state.instance = None
        state.retired = [r for r in state.retired if r.id != inst.id]
        if state.instance is None and not state.retired:
            state.recovery = None  # nothing left to recover onto or from
        state_mod.save(state)
        done.append(inst.id)
    return Destroyed(done, missing, newest, note)
