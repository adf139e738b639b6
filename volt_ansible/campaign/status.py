"""Reading the campaign: the instance and its cost, the jobs over SSH, their logs and loss plot, the transfer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volt_ansible import datasync, jobs, ledger, rent, ssh, watchbeat
from volt_ansible import plot as plot_mod
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.campaign import watch_service
from volt_ansible.campaign.context import instance_endpoint, open_backend, project_root, reconciled
from volt_ansible.errors import VoltError
from volt_ansible.state import State


@dataclass
class Status:
    state: State
    live: dict | None
    cost_usd: float
    elsewhere: list[str]  # this campaign's instances rented from another checkout
    watch: str = ""  # whether a `watch` is running, and when its last round was
    pricing: str = ""  # interruptible: bid vs on demand, time paused, saving so far


def status() -> Status:
    state, elsewhere = reconciled()
    live = None
    if state.instance is not None:
        with open_backend(state.instance.backend) as backend:
            live = backend.show(state.instance.id)
        if live is not None and live.get("actual_status") and live["actual_status"] != state.instance.status:
            rent.record(state, status=live["actual_status"])
    entry = state.open_entry(state.instance.id) if state.instance else None
    pricing = ledger.interruptible_line(entry, state.instance.bid_dph) if entry and state.instance and state.instance.bid_dph else ""
    return Status(state, live, state.total_cost(), elsewhere, watchbeat.read(state_mod.volt_dir()).line() + watch_service.installed_note(),
                  pricing)


def ssh_command(extra: list[str]) -> list[str]:
    state, _ = reconciled(always=False)
    if state.instance is None or not state.instance.ssh_port:
        raise VoltError("no instance to connect to: run `volt-ansible provision` first")
    jobs.check_host_key(state_mod.volt_dir(), state.instance.ssh_host, state.instance.ssh_port)
    return ssh.command(state_mod.volt_dir(), state.instance.ssh_host, state.instance.ssh_port) + extra


def job_snapshot() -> jobs.Snapshot:
    """The jobs over one SSH round trip; what their binaries accept (resume) and their epoch times are recorded in the
    state, for a recovery that can no longer ask the lost instance."""
    host, port = instance_endpoint()
    snap = jobs.snapshot(state_mod.volt_dir(), host, port, jobs.layout(project_root()), stall_s=spec_mod.load().watch.stall_min * 60)
    resume = snap.resume()
    epoch_s = {j.name: sum(t) / len(t) for j in snap.jobs if (t := j.progress.epoch_seconds)}
    state = state_mod.load()
    if {**state.resume, **resume} != state.resume or {**state.epoch_s, **epoch_s} != state.epoch_s:
        state.resume, state.epoch_s = {**state.resume, **resume}, {**state.epoch_s, **epoch_s}
        state_mod.save(state)
    return snap


def job_lines(snap: jobs.Snapshot | None = None) -> list[str]:
    """Each training job's state, GPU and CPU load, and warnings (read over one SSH round trip unless given)."""
    return jobs.format_snapshot(snap if snap is not None else job_snapshot())


def projection(snap: jobs.Snapshot) -> ledger.Projection:
    state = state_mod.load()
    dph = state.instance.dph_total if state.instance else 0.0
    return ledger.Projection(state.total_cost(), ledger.remaining_hours(snap), dph, ledger.epochs_done(snap))


def logs_command(job: str | None, follow: bool, lines: int, tty: bool) -> list[str]:
    host, port = instance_endpoint()
    jobs.check_host_key(state_mod.volt_dir(), host, port)
    return jobs.logs_command(state_mod.volt_dir(), host, port, job=job, follow=follow, lines=lines, lay=jobs.layout(project_root()), tty=tty)


def plot(output: str) -> Path:
    host, port = instance_endpoint()
    lay = jobs.layout(project_root())
    return plot_mod.write_png(jobs.fetch_logs(state_mod.volt_dir(), host, port, lay), Path(output), lay)


def data_track() -> str:
    """The background transfer's progress for `up`'s display ("" before it started)."""
    state = state_mod.load()
    if state.instance is None:
        return ""
    path = state_mod.volt_dir() / "data-sync" / f"volt-{state.instance.id}.json"
    if not path.exists():
        return ""
    st = datasync.status(path, None)
    return f"{st['state']}: {st['summary']}" if st.get("summary") else st["state"]
