"""An instance the API shows stopped though this campaign never stopped it: outbid (interruptible), or stopped by its
host. Its disk stays on the machine, so the cheapest way back is the same instance: the bid is raised (up to
volt_interruptible.bid_max_dph), and when it runs again its jobs restart from the newest epoch on its own disk, with
nothing sent again. Only after run_again_wait_s does the fallback rent a replacement."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from volt_ansible import jobs, recovery, rent, ssh
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.backends import Backend, is_paused
from volt_ansible.campaign.context import Progress, project_root, quiet, run_ok
from volt_ansible.campaign.status import job_snapshot
from volt_ansible.state import State

SSH_BACK_S = 120  # after the API says running again: how long sshd may take to answer before the round gives up


@dataclass
class PauseRound:
    lines: list[str] = field(default_factory=list)
    migrate: str = ""  # the reason to replace the instance now ("" to keep waiting)
    handled: bool = False  # the instance was paused or just came back: the rest of watch's round is skipped


def _ago(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def on_round(state: State, backend: Backend, live: dict | None, spec: spec_mod.Spec, progress: Progress = quiet) -> PauseRound:
    inst = state.instance
    assert inst is not None
    now = time.time()
    if is_paused(live):
        return _paused(state, backend, live or {}, spec, now)
    if inst.paused_since is not None and live is not None and live.get("actual_status") == "running":
        return _runs_again(state, spec, now, progress)
    return PauseRound()


def _paused(state: State, backend: Backend, live: dict, spec: spec_mod.Spec, now: float) -> PauseRound:
    inst = state.instance
    assert inst is not None
    out = PauseRound(handled=True)
    why = live.get("status_msg") or "stopped in the Vast API"
    entry = state.open_entry(inst.id)
    if entry is not None and (entry.changes[-1][2] if entry.changes else "") != "paused":
        entry.change(entry.storage_dph, "paused", now)  # its disk bills while it is stopped; the GPU does not
    if inst.paused_since is None:
        out.lines.append(f"instance {inst.id} was stopped by Vast ({why}): its disk and files are kept; its jobs were killed")
    rent.record(state, paused_since=inst.paused_since or now, status=live.get("actual_status") or "stopped", unreachable_since=None)
    assert state.instance is not None and state.instance.paused_since is not None
    since = state.instance.paused_since
    bid = state.instance.bid_dph
    if bid is not None and live.get("is_bid", True):
        out.lines.append(_raise_bid(state, backend, live, spec, bid))
    waited = now - since
    wait = spec.interruptible.run_again_wait_s
    if waited < wait:
        out.lines.append(f"paused since {_ago(since)}: waiting for it to run again ({waited:.0f} of {wait:g} s, "
                         f"volt_interruptible.run_again_wait_s; then: {spec.interruptible.fallback})")
        return out
    if spec.interruptible.fallback == "stop":
        out.lines.append(f"paused for {waited:.0f} s and volt_interruptible.fallback is stop: nothing is rented; it runs again by itself "
                         "when it wins its machine back, or `volt-ansible recover --force` replaces it")
        return out
    out.migrate = f"paused for {waited:.0f} s ({why}; volt_interruptible.run_again_wait_s = {wait:g})"
    return out


def _raise_bid(state: State, backend: Backend, live: dict, spec: spec_mod.Spec, bid: float) -> str:
    """Up to volt_interruptible.bid_max_dph, and no higher than the rest of the curriculum can run at within the budget."""
    inst = state.instance
    assert inst is not None
    cap, why = spec.bid_max, "volt_interruptible.bid_max_dph"
    affordable = recovery.bid_within_budget(state.total_cost(), state.remaining_h, spec.watch.budget_usd)
    if affordable is not None and affordable < cap:
        cap, why = affordable, (f"what the budget ${spec.watch.budget_usd:.2f} allows over the {state.remaining_h:.1f} h left; "
                                f"spent ${state.total_cost():.4f} (volt_watch.budget_usd)")
    winning = _float(live.get("min_bid"))
    new = recovery.next_bid(bid, winning, spec.interruptible.bid_margin, cap)
    if new is None:
        return f"the bid ${bid:.4f}/h is at its cap ${cap:.4f}/h ({why}): waiting for the competitor to leave"
    backend.change_bid(inst.id, new)
    rent.record(state, bid_dph=new)
    return f"bid raised ${bid:.4f} -> ${new:.4f}/h (the machine's winning bid ${winning or 0:.4f}/h; cap ${cap:.4f}/h, {why})"


def _runs_again(state: State, spec: spec_mod.Spec, now: float, progress: Progress) -> PauseRound:
    """Running again: the ledger back at its price, sshd awaited, then playbooks/up.yml on the same instance: nothing to
    install, build or send (all still on its disk), the jobs started again, each from its newest epoch checkpoint there."""
    inst = state.instance
    assert inst is not None and inst.paused_since is not None
    entry = state.open_entry(inst.id)
    dph = inst.bid_dph if inst.bid_dph is not None else inst.dph_total
    if entry is not None and entry.changes and entry.changes[-1][2] == "paused":
        entry.change(dph, "running", now)
    paused_s = now - inst.paused_since
    rent.record(state, status="running", dph_total=dph)  # paused_since stays until the jobs run again: a failed restart is retried
    volt_dir = state_mod.volt_dir()
    deadline = time.monotonic() + SSH_BACK_S
    while not ssh.can_login(volt_dir, inst.ssh_host, inst.ssh_port):
        jobs.check_host_key(volt_dir, inst.ssh_host, inst.ssh_port)  # the same disk keeps its host key: anything else is refused
        if time.monotonic() > deadline:
            return PauseRound([f"instance {inst.id} runs again but SSH does not answer after {SSH_BACK_S} s: tried again next round"], handled=True)
        time.sleep(2)
    restart_jobs(progress)
    rent.record(state_mod.load(), paused_since=None)
    return PauseRound([f"instance {inst.id} runs again after {paused_s:.0f} s paused (${dph:.4f}/h): its jobs restarted from the "
                       "newest epoch checkpoint on its own disk, nothing sent again"], handled=True)


def restart_jobs(progress: Progress = quiet) -> None:
    """playbooks/up.yml on the campaign's instance: what is installed, built and sent is found there; the jobs that had
    started and do not run now start again (each from its newest epoch checkpoint on the disk), finished ones are
    skipped, and none that was never started is started here."""
    snap = job_snapshot()
    started = {j.name for j in snap.jobs if j.state != "pending"}
    lay = jobs.layout(project_root())
    stages = [j.name for j in lay.stages if j.name in started]
    run_ok("up", {"stage": "all" if stages else "none", "phase03": lay.jobs[0].name in started}, progress, "watch tries again next round")


def _float(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
