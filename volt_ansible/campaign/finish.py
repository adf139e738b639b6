"""The end of a campaign: everything home and verified, then every instance destroyed and the summary."""

from __future__ import annotations

import time
from dataclasses import dataclass

from volt_ansible import home
from volt_ansible import state as state_mod
from volt_ansible.campaign.backup import backup_now
from volt_ansible.campaign.context import Progress, backup_dir, open_backend, quiet, reconciled, required
from volt_ansible.campaign.destroy import destroy
from volt_ansible.campaign.status import job_snapshot
from volt_ansible.errors import VoltError


@dataclass
class Finished:
    destroyed: list[int]
    lines: list[str]


def finish(progress: Progress = quiet) -> Finished:
    """Everything home and verified -> destroy the instance (and any kept after a preemption), print the summary."""
    state, _ = reconciled()
    if state.instance is None and not state.retired:
        raise VoltError("no instance to finish: nothing is rented (`volt-ansible status`)")
    live = None
    if state.instance is not None:
        with open_backend(state.instance.backend) as backend:
            live = backend.show(state.instance.id)
    if live is not None and live.get("actual_status") == "running":
        running = [j.name for j in job_snapshot().jobs if j.state in ("running", "waiting", "queued")]
        if running:
            raise VoltError(f"still running: {', '.join(running)}; finish once they are done (`volt-ansible watch` does it automatically)")
        backup_now(progress, stable_s=0)  # nothing is being written: take the last files now
    local = backup_dir()
    missing = [p for p in required() if not home.is_home(local, p, verify=True)]
    if missing:
        raise VoltError(f"not finished: {', '.join(missing)} not home and verified in {local}; nothing was destroyed "
                        "(`volt-ansible status` shows the jobs; `volt-ansible recover` after a preemption)")
    gone = destroy(reason="finished")
    state = state_mod.load()
    hours = sum(((e.ended_at or time.time()) - e.started_at) / 3600 for e in state.ledger)
    files = home.load(local)["files"]
    lines = [f"campaign {state.campaign} finished: instance(s) {', '.join(map(str, gone.ids))} destroyed",
             f"{len(state.ledger)} instance(s) rented, {hours:.2f} h billed, cost ${state.total_cost():.4f}",
             *(f"home: {p} ({files[p]['size'] / 1e6:.1f} MB, {files[p]['digest'][:19]}...)" for p in required()),
             f"everything is in {local} (home.json lists each file with its digest)"]
    return Finished(gone.ids, lines)
