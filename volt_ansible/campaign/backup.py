"""Bringing the jobs' files home (playbooks/backup.yml) and recording what is home in the state."""

from __future__ import annotations

import time

from volt_ansible import home
from volt_ansible import state as state_mod
from volt_ansible.campaign.context import Progress, backup_dir, required, run_ok, run_playbook
from volt_ansible.state import Home


def backup(on_task=None):
    """Pull finished checkpoints, outputs and logs home (playbooks/backup.yml); return the run and what is home."""
    local = backup_dir()
    result = run_playbook("backup", {"backup_local_dir": str(local)}, on_task=on_task)
    return result, home.summary(local, required())


def backup_now(progress: Progress, stable_s: int | None = None) -> dict:
    """Run the backup and record what is home in the state; return home.summary."""
    extra: dict = {"backup_local_dir": str(backup_dir())}
    if stable_s is not None:
        extra["backup_stable_s"] = stable_s
    run_ok("backup", extra, progress, "run `volt-ansible backup` to see why; nothing was destroyed")
    summary = home.summary(backup_dir(), required())
    state = state_mod.load()
    newest = home.newest_epoch_checkpoint(backup_dir(), verify=False)
    job = None
    if newest:
        entry = home.load(backup_dir())["files"].get(str(newest[1].relative_to(backup_dir().absolute())), {})
        job = entry.get("job")
    state.home = Home(at=time.time(), files=summary["files"], bytes=summary["bytes"], missing=summary["missing"],
                      newest_epoch={"job": job, "epoch": newest[0], "path": str(newest[1])} if newest else None)
    state_mod.save(state)
    return summary
