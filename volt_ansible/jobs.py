"""Watch the training jobs on the instance: state, progress, ETA, GPU and CPU, warnings; logs; loss data.

The jobs are those of group_vars/all.yml (volt_phase03, volt_curriculum) as volt_ansible.curriculum resolves them
and roles/training_tmux runs them: each appends its output to its log and keeps `<status_dir>/<job>.status` (key=value lines) up to date.
Everything here (and in joblog, the parsing) is a pure function of text read from the instance, except the few that run ssh
(`snapshot`, `fetch_logs`, `read_remote`) with the campaign's key and pinned host key (volt_ansible.ssh).

    lay = layout(root)                                  # what to look at: group_vars, resolved
    snap = snapshot(volt_dir, host, port, lay)          # one ssh round trip -> Snapshot
    print("\\n".join(format_snapshot(snap)))
    os.execvp(*logs_command(volt_dir, host, port, "stage1", follow=True, layout=lay)[:1], ...)
    plot.write_png(fetch_logs(volt_dir, host, port, lay), Path("loss.png"), lay)
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from volt_ansible import ssh
from volt_ansible.errors import VoltError
from volt_ansible.joblayout import HELP_DIR, JobDef, Layout, epoch_number, help_lists, layout, layout_from, resolve_job
from volt_ansible.joblog import (
    Gpu,
    LogProgress,
    eta_seconds,
    fmt_duration,
    iso_ts,
    loss_series,
    parse_gpu,
    parse_loadavg,
    parse_log,
    parse_status,
    validation_series,
)
from volt_ansible.jobsnapshot import (
    GPU_LOW_PCT,
    MARK,
    STALL_S,
    JobState,
    Snapshot,
    _sections,
    format_snapshot,
    parse_snapshot,
    remote_script,
    restart_line,
)

__all__ = ["GPU_LOW_PCT", "HELP_DIR", "MARK", "STALL_S", "Gpu", "JobDef", "JobState", "Layout", "LogProgress", "Snapshot", "check_host_key",
           "epoch_number", "eta_seconds", "fetch_logs", "fmt_duration", "format_snapshot", "help_lists", "iso_ts", "layout", "layout_from",
           "logs_command", "loss_series", "parse_gpu", "parse_loadavg", "parse_log", "parse_snapshot", "parse_status", "read_remote",
           "remote_script", "resolve_job", "restart_line", "snapshot", "validation_series"]

# --- over ssh ------------------------------------------------------------------------------------


def _ssh(volt_dir: Path, host: str, port: int) -> list[str]:
    conn = ssh.connection(volt_dir, host, port)
    return [*ssh.argv(conn, connect_timeout=10), f"{conn['user']}@{conn['host']}"]


def read_remote(volt_dir: Path, host: str, port: int, script: str, timeout: float = 60) -> str:
    """Run a sh script on the instance (campaign key, pinned host key); its stdout."""
    try:
        proc = subprocess.run([*_ssh(volt_dir, host, port), "sh -s"], input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VoltError(f"ssh to {host}:{port} did not answer within {timeout:.0f} s: is the instance up (volt-ansible status)?") from None
    if proc.returncode == 255:
        said = " | ".join(ln.strip() for ln in proc.stderr.splitlines() if ln.strip()) or "no message"  # one line: it goes into others
        raise VoltError(_refused(volt_dir, host, port, proc.stderr) or f"ssh to {host}:{port} failed: {said}")
    return proc.stdout


def _refused(volt_dir: Path, host: str, port: int, stderr: str) -> str | None:
    return ssh.host_key_line(stderr, f"the instance at {host}:{port}", ssh.known_hosts_path(volt_dir))


def check_host_key(volt_dir: Path, host: str, port: int, timeout: float = 30) -> None:
    """Before an ssh that is exec'd (`logs`): a changed host key stops here with one line instead of ssh's
    block of @s. Other failures are left to that ssh to report."""
    try:
        proc = subprocess.run([*_ssh(volt_dir, host, port), "true"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return
    line = _refused(volt_dir, host, port, proc.stderr) if proc.returncode == 255 else None
    if line:
        raise VoltError(line)


def snapshot(volt_dir: Path, host: str, port: int, lay: Layout | None = None, *, gpu_samples: int = 3,
             stall_s: float = STALL_S) -> Snapshot:
    """One ssh round trip: the state of every job, GPU (nvidia-smi, sampled gpu_samples times) and CPU load."""
    lay = lay or layout()
    text = read_remote(volt_dir, host, port, remote_script(lay, gpu_samples=gpu_samples))
    if MARK + " end" not in text:
        raise VoltError(f"could not read the training state from {host}:{port} (incomplete answer)")
    return parse_snapshot(text, lay, stall_s=stall_s)


def logs_command(volt_dir: Path, host: str, port: int, job: str | None = None, follow: bool = False, lines: int = 50,
                 lay: Layout | None = None, tty: bool = False) -> list[str]:
    """argv of `ssh ... tail -n LINES [-F] LOG` for one job, or every job's log (with headers) when job is None."""
    lay = lay or layout()
    logs = [resolve_job(lay, job).log] if job else [d.log for d in lay.jobs]
    script = (f"cd {shlex.quote(lay.dest)} || exit 1; set --; for f in {' '.join(shlex.quote(x) for x in logs)}; "
              'do [ -e "$f" ] && set -- "$@" "$f"; done; '
              f'if [ $# -eq 0 ]; then printf "no job log yet (%s): start training first\\n" {shlex.quote(" ".join(logs))} >&2; exit 1; fi; '
              f'exec tail -n {int(lines)}{" -F" if follow else ""} -- "$@"')
    cmd = _ssh(volt_dir, host, port)
    if tty:
        cmd.insert(1, "-t")
    return [*cmd, script]


def fetch_logs(volt_dir: Path, host: str, port: int, lay: Layout | None = None) -> dict[str, str]:
    """Every job's full log ({job: text}; jobs without a log yet are left out), e.g. for plot.write_png."""
    lay = lay or layout()
    script = f"cd {shlex.quote(lay.dest)} || exit 0\n" + "".join(
        f'[ -f {shlex.quote(j.log)} ] && {{ echo {shlex.quote(MARK + " log " + j.name)}; cat -- {shlex.quote(j.log)}; }}\n' for j in lay.jobs)
    text = read_remote(volt_dir, host, port, script, timeout=300)
    return {head[1]: "\n".join(body) for head, body in _sections(text) if head[:1] == ["log"] and len(head) > 1}
