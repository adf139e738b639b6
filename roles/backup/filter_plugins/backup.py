"""The backup role's view of the campaign, built on the controller from the installed volt_ansible package.

    backup_jobs  volt_phase03, volt_curriculum (+ training_tmux settings that differ from its defaults)
                 -> what backup_scan needs of each job (volt_ansible.curriculum: the one reading of the job tables)
    backup_ssh   the inventory's connection {host, port, user, key, args} -> rsync's -e command (volt_ansible.ssh.argv)
"""

from __future__ import annotations

import shlex

from volt_ansible import curriculum, ssh

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported outside Ansible (unit tests)
    AnsibleFilterError = ValueError


def backup_jobs(phase03, curriculum_table, settings=None) -> list[dict]:
    """[{name, output, log, status, epoch: {dir, prefix, suffix, owner, archive_dir} or None}] of every job, in order."""
    try:
        s = curriculum.settings_from(None, {**curriculum.role_defaults(), **(settings or {})})
        jobs = curriculum.resolve(phase03 or None, curriculum_table or None, s, check_names=False)
        return curriculum.backup_jobs(jobs, s)
    except curriculum.CurriculumError as e:
        raise AnsibleFilterError(f"backup: {e}") from None


def backup_ssh(conn: dict) -> str:
    """One string for rsync -e: the campaign's ssh command line, quoted (rsync splits it on spaces, honouring quotes)."""
    clean = {**conn, "args": [str(a) for a in conn.get("args") or [] if a]}
    return shlex.join(ssh.argv(clean))


class FilterModule:
    def filters(self):
        return {"backup_jobs": backup_jobs, "backup_ssh": backup_ssh}
