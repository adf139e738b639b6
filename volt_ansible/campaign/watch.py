"""The long-running loop: health (recover when lost), backups, jobs, cost and budget, finish when done."""

from __future__ import annotations

import time
from dataclasses import dataclass

from volt_ansible import ledger, recovery, watchbeat
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.campaign import pause, price_increase
from volt_ansible.campaign.backup import backup_now
from volt_ansible.campaign.context import Progress, open_backend, quiet, reconciled
from volt_ansible.campaign.destroy import destroy
from volt_ansible.campaign.finish import finish
from volt_ansible.campaign.recover import health, recover
from volt_ansible.campaign.status import job_lines, job_snapshot, projection
from volt_ansible.errors import VoltError


@dataclass
class Round:
    lines: list[str]
    done: str = ""  # why watch stops; "" to go on


def watch_round(auto_recover: bool, auto_finish: bool, interval_min: float, progress: Progress = quiet) -> Round:
    """One look at the campaign: health (recover when lost), backup when due, jobs, cost and budget, finish when done."""
    spec = spec_mod.load()
    try:
        state, out = reconciled()
    except VoltError as e:
        return Round([f"warning: {e} (checked again next round)"])
    if state.stopped:
        return Round([], done=f"the campaign was stopped: {state.stopped}")
    if state.recovery is not None or state.instance is None:
        if state.recovery is None:
            return Round([], done="no instance is rented: nothing to watch")
        if not auto_recover:
            return Round([f"a recovery is under way ({state.recovery.reason}): run `volt-ansible recover`"], done="auto recovery is off")
        return _recover_round(progress)
    inst = state.instance
    with open_backend(inst.backend) as backend:
        try:
            reason, live = health(state, backend)
            paused = pause.on_round(state, backend, live, spec, progress) if not reason else pause.PauseRound()
        except VoltError as e:
            return Round([f"warning: {e} (checked again next round)"])
    if paused.migrate:  # paused past volt_interruptible.run_again_wait_s: a replacement (the fallback's pricing)
        if not auto_recover:
            return Round([*paused.lines, f"instance {inst.id} {paused.migrate}: run `volt-ansible recover --force`"], done="auto recovery is off")
        fallback = spec.interruptible.fallback  # a bid's replacement; an on-demand instance's stays on demand
        pricing = fallback if inst.bid_dph is not None and fallback != "stop" else None
        return _recover_round(progress, paused.lines, reason=paused.migrate, pricing=pricing)
    if paused.handled:
        return Round(paused.lines)
    if reason:
        if not auto_recover:
            return Round([f"instance {inst.id} is lost ({reason}): run `volt-ansible recover`"], done="auto recovery is off")
        return _recover_round(progress)
    since = state_mod.load().instance.unreachable_since
    if since is not None:
        return Round([recovery.silence_warning(inst.id, since, spec.watch.ssh_dead_s, spec.watch.ssh_replace_s, time.time())])
    try:
        snap = job_snapshot()
    except VoltError as e:
        return Round([f"warning: reading the jobs failed: {e}"])
    out += job_lines(snap)
    killed = [j.name for j in snap.jobs if j.state == "interrupted"]
    if killed and auto_recover:
        # their processes are gone while the instance runs (stopped and started again while nobody watched, a reboot):
        # started again on it, each from its newest epoch checkpoint there
        try:
            pause.restart_jobs(progress)
        except VoltError as e:
            return Round(out + [f"warning: restarting {', '.join(killed)} failed: {e}"])
        return Round(out + [f"restarted {', '.join(killed)} on instance {inst.id} (their processes were gone), each from its newest "
                            "epoch checkpoint there"])
    all_done = all(j.state == "done" for j in snap.jobs)
    home_at = state.home.at if state.home else 0.0
    if all_done or time.time() - home_at >= interval_min * 60:
        try:
            s = backup_now(progress, stable_s=0 if all_done else None)  # all done: nothing is being written
            out.append(f"backup: {s['files']} file(s) home, {s['bytes'] / 1e6:.1f} MB; missing: {', '.join(s['missing']) or 'nothing'}")
        except VoltError as e:
            out.append(f"warning: {e}")
    proj = projection(snap)
    out.append(proj.line())
    if proj.remaining_h is not None:
        st = state_mod.load()
        st.remaining_h = proj.remaining_h
        state_mod.save(st)
    try:
        with open_backend(inst.backend) as backend:
            out += price_increase.answer(state_mod.load(), backend, spec, proj.spent_usd, proj.remaining_h)
    except VoltError as e:
        out.append(f"warning: pending price increases: {e} (checked again next round)")
    over = ledger.over_budget(proj, spec.watch.budget_usd)
    if over:
        backup_now(progress)  # files still being written stay out: a torn checkpoint must never count as home
        gone = destroy(force=True, reason=f"budget: {over}")
        state = state_mod.load()
        state.stopped = f"budget: {over}"
        state_mod.save(state)
        lost = f"; not home: {', '.join(gone.lost)}" if gone.lost else ""
        return Round(out + [f"budget: {over}: backed up, instance(s) {', '.join(map(str, gone.ids))} destroyed{lost}"], done=state.stopped)
    if all_done and auto_finish:
        try:
            f = finish(progress)
        except VoltError as e:
            return Round(out + [f"warning: finishing failed: {e} (tried again next round)"])
        return Round(out + f.lines, done="finished")
    return Round(out)


def _recover_round(progress: Progress, lines: list[str] | None = None, reason: str = "", pricing: str | None = None) -> Round:
    """A recovery inside watch: a failure is reported and tried again next round, never the end of watch."""
    try:
        r = recover(progress=progress, reason=reason, pricing=pricing)
    except VoltError as e:
        return Round([*(lines or []), f"warning: recovery failed: {e}"])
    return Round([*(lines or []), f"recovered: instance {r.new.id} replaces {r.lost_id} ({r.reason}) in {r.seconds:.0f} s; {r.restore.describe()}"])


def watch(auto_recover: bool | None = None, auto_finish: bool | None = None, interval_min: float | None = None, once: bool = False,
          progress: Progress = quiet):
    """Rounds of watch_round, every volt_watch.poll_s, until the campaign is finished or stopped (or once). None: the
    spec's volt_watch setting."""
    w = spec_mod.load().watch
    auto_recover = w.auto_recover if auto_recover is None else auto_recover
    auto_finish = w.auto_finish if auto_finish is None else auto_finish
    interval = interval_min if interval_min is not None else w.backup_interval_min
    with watchbeat.hold(state_mod.volt_dir()):
        while True:
            r = watch_round(auto_recover, auto_finish, interval, progress)
            watchbeat.beat(state_mod.volt_dir(), r.lines + ([f"done: {r.done}"] if r.done else []))
            yield r
            if r.done or once:
                return
            time.sleep(w.poll_s)
