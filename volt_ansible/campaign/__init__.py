"""The campaign's decisions: which offer, when an instance is usable, what to record, when to destroy. One module per
verb; everything the CLI, the tests and the benches call is here."""

from volt_ansible.campaign.backup import backup, backup_now
from volt_ansible.campaign.context import (
    Progress,
    backend_name,
    backup_dir,
    open_backend,
    project_root,
    quiet,
    reconciled,
    required,
    resolve_playbook,
    run_ok,
    run_playbook,
    volt_dir,
)
from volt_ansible.campaign.destroy import Destroyed, destroy, instance_files, not_home, not_home_on
from volt_ansible.campaign.finish import Finished, finish
from volt_ansible.campaign.provision import offers, plan, provision, rent_new, resume
from volt_ansible.campaign.recover import Recovered, health, recover
from volt_ansible.campaign.status import Status, data_track, job_lines, job_snapshot, logs_command, plot, projection, ssh_command, status
from volt_ansible.campaign.tools import (
    cache_clear,
    cache_dir,
    cache_entries,
    local_clean,
    local_competitor_leaves,
    local_image,
    local_outbid,
    local_preempt,
)
from volt_ansible.campaign.up import UpPlan, check, up, up_plan
from volt_ansible.campaign.watch import Round, watch, watch_round
from volt_ansible.campaign.watch_service import install as watch_install
from volt_ansible.campaign.watch_service import uninstall as watch_uninstall

__all__ = [
    "Destroyed", "Finished", "Progress", "Recovered", "Round", "Status", "UpPlan", "backend_name", "backup", "backup_dir", "backup_now",
    "cache_clear", "cache_dir", "cache_entries", "check", "data_track", "destroy", "finish", "health", "instance_files", "job_lines",
    "job_snapshot", "local_clean", "local_competitor_leaves", "local_image", "local_outbid", "local_preempt", "logs_command", "not_home",
    "not_home_on", "offers", "open_backend",
    "plan", "plot", "project_root", "projection", "provision", "quiet", "reconciled", "recover", "rent_new", "required",
    "resolve_playbook", "resume", "run_ok", "run_playbook", "ssh_command", "status", "up", "up_plan", "volt_dir", "watch", "watch_install",
    "watch_round", "watch_uninstall",
]
