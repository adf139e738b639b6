"""Replacing a lost instance: the same spec rented again, prepared, fed the data and the newest verified epoch
checkpoint, and training resumed."""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from volt_ansible import datasync, jobs, recovery, rent, ssh
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.backends import Backend
from volt_ansible.campaign import rescue
from volt_ansible.campaign.context import Progress, backup_dir, open_backend, project_root, quiet, reconciled, run_ok
from volt_ansible.campaign.provision import rent_new, resume
from volt_ansible.campaign.status import job_snapshot
from volt_ansible.errors import VoltError
from volt_ansible.state import Instance, Recovery, State

RESCUE_TIMEOUT_S = 3600  # a paused disk of hundreds of GB, host to host


class _NoRetry(VoltError):
    """A failure that trying again would make worse."""


def _retrying(what: str, fn, progress: Progress):
    """Vast API calls of a recovery: a few tries with a pause, then one clear error."""
    w = spec_mod.load().watch
    for attempt in range(1, w.api_retries + 1):
        try:
            return fn()
        except _NoRetry:
            raise
        except VoltError as e:
            if attempt == w.api_retries:
                raise VoltError(f"{what} failed {attempt} times (last: {e})") from None
            progress(f"{what} failed ({e}); trying again in {w.api_retry_delay_s:g} s")
            time.sleep(w.api_retry_delay_s)
    raise AssertionError("unreachable")


def health(state: State, backend: Backend) -> tuple[str, dict | None]:
    """(why the instance is lost or "", its API row); records when SSH started failing."""
    inst = state.instance
    assert inst is not None
    live, now = backend.show(inst.id), time.time()
    if live is not None and live.get("actual_status") == "running" and inst.ssh_port:
        ok = ssh.can_login(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port)
        if not ok:  # a changed host key is no outage: say so every round, never rent a replacement over it
            jobs.check_host_key(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port)
        if ok != (inst.unreachable_since is None):
            rent.record(state, unreachable_since=None if ok else now)
    return recovery.lost_reason(live, state.instance.unreachable_since, spec_mod.load().watch.ssh_replace_s, now), live


def _rescue(state: State, rec: Recovery, data: dict, progress: Progress) -> None:
    """Fill the replacement from the lost instance's disk (paused, or running out of reach), host to host: the repository
    (its built binaries and build stamp, the epoch checkpoints, the logs) and the data root. A failure is said, and home
    fills what it can."""
    assert state.instance is not None and rec.rescue_from is not None
    paths = sorted({str(data.get("repo_build_dest") or "/root/volt-x"), str((data.get("volt_data") or {}).get("root_remote") or "/root/volt-x")})
    paths = [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]  # a path inside another goes with it
    try:
        with open_backend(rec.backend) as backend:
            for path in paths:
                r = rescue.copy_disk(backend, rec.rescue_from, state.instance, path, RESCUE_TIMEOUT_S, progress)
                progress(f"copied {path} from instance {rec.rescue_from}: {r.bytes / 1e6:.1f} MB in {r.seconds:.0f} s, host to host")
                rec.rescued_bytes += r.bytes
    except VoltError as e:
        progress(f"the copy from instance {rec.rescue_from} failed ({e}): home provides what it holds")
        return
    rec.rescued = True
    state.recovery = rec
    state_mod.save(state)


def _destroy_rescued(state: State, rec: Recovery, progress: Progress) -> None:
    """The replacement runs the jobs with what the lost instance held: that one (billing storage while paused, its GPU
    while it runs out of reach) goes."""
    try:
        with open_backend(rec.backend) as backend:
            backend.destroy(rec.rescue_from)
    except VoltError as e:
        progress(f"destroying instance {rec.rescue_from} failed ({e}): `volt-ansible destroy` removes it later")
        return
    how = "unreachable while it ran" if rec.rescue_state == "running" else "paused"
    rent.close_ledger(state, rec.rescue_from, f"destroyed: {how}, its disk copied to its replacement")
    state.retired = [r for r in state.retired if r.id != rec.rescue_from]


def _from_copied_disk(plan: recovery.Restore, lay: jobs.Layout, state: State) -> None:
    """After a rescue the first unfinished stage started from the epochs copied from the lost disk (the newest one that
    matches its digest), not from home's: the plan says what the job itself reports (resumed, or restarted from epoch 1
    with that many epochs to train again)."""
    stages = plan.stages(lay)
    try:
        j = next(j for j in job_snapshot().jobs if stages and j.name == stages[0])
    except (VoltError, StopIteration):
        return
    if j.status.get("resumed_epoch"):
        plan.owner, plan.resume_epoch = j.name, int(j.status["resumed_epoch"])
    elif j.status.get("restarted_after"):
        job = lay.job(j.name)
        plan.owner, plan.resume_epoch = "", None
        plan.restart = recovery.restart_cost(j.name, posixpath.basename(job.bin), job.resume_flag or "resume option",
                                             int(j.status["restarted_after"]), state.epoch_s.get(j.name),
                                             state.instance.dph_total if state.instance else None)


@dataclass
class Recovered:
    lost_id: int
    reason: str
    new: Instance
    restore: recovery.Restore
    seconds: float  # from the start of this command to the jobs started again


def recover(from_scratch: bool = False, force: bool = False, progress: Progress = quiet, reason: str = "",
            pricing: str | None = None) -> Recovered:
    """Replace a lost instance: rent the same spec, prepare it, send the data the unfinished jobs need, push
    back what is home (finished outputs, the newest verified epoch checkpoint) and resume training.
    reason: the caller's (watch, for an instance paused too long) instead of asking its health; pricing: the
    replacement's (volt_interruptible.fallback) when not the spec's."""
    t0 = time.monotonic()
    root, spec, (state, _) = project_root(), spec_mod.load(), reconciled()
    volt_dir, local = state_mod.volt_dir(), backup_dir()
    lay = jobs.layout(root)
    again = "run `volt-ansible recover` again: it continues where it stopped"
    if state.recovery is None:
        if state.instance is None:
            raise VoltError("no instance is recorded and no recovery is under way: nothing to recover (`volt-ansible provision` starts one)")
        inst = state.instance
        with open_backend(inst.backend) as backend:
            found, live = _retrying(f"reading instance {inst.id}", lambda: health(state, backend), progress)
        reason = reason or found
        if not reason:
            if not force:
                raise VoltError(f"instance {inst.id} is running and answers SSH: nothing to recover (`volt-ansible status` shows its jobs; "
                                "`recover --force` replaces it anyway)")
            reason = "replaced on request (--force)"
        plan = recovery.plan(lay, local, state.resume, state.epoch_s, inst.dph_total)
        rescuable = recovery.rescue_source(live)  # its disk is there: the replacement is filled from it, host to host
        if not plan.pending:
            raise VoltError(f"every output is home in {local}: nothing to resume; `volt-ansible finish` destroys instance {inst.id}")
        if not plan.files and not plan.restart and not from_scratch and not rescuable:  # (a stage that cannot resume starts over anyway)
            raise VoltError(f"instance {inst.id} is lost ({reason}) and {local} holds no backup of this campaign (no output, no epoch "
                            "checkpoint): a replacement would train from zero; run `volt-ansible recover --from-scratch` to accept that")
        progress(f"instance {inst.id} lost: {reason}")
        if not rescuable:  # a paused one bills its storage, a running one its GPU, until it is destroyed after the rescue copy
            rent.close_ledger(state, inst.id, f"lost: {reason}")
        datasync.stop_driver(volt_dir / "data-sync" / f"volt-{inst.id}.json")  # the replacement gets its own transfer
        if live is not None:  # still in the API: its disk may hold newer files; finish/destroy removes it
            state.retired.append(inst.model_copy(update={"status": live.get("actual_status") or "lost"}))
        ssh.forget_host(volt_dir, inst.ssh_host, inst.ssh_port)
        state.instance = None
        state.recovery = Recovery(reason=reason, backend=inst.backend, lost_id=inst.id, pricing=pricing,
                                  rescue_from=inst.id if rescuable else None, rescue_state=rescuable, avoid_machine=inst.machine_id)
        state_mod.save(state)
    rec = state.recovery

    def replace() -> Instance:
        if state.instance is not None:  # a half-made replacement that could not be destroyed: never rent over it
            raise _NoRetry(f"instance {state.instance.id} was created but could not be brought up nor destroyed: "
                           "`volt-ansible destroy --force` it, then recover again")
        wanted = spec
        if rec.pricing and rec.pricing != spec.instance.pricing:
            wanted = spec.model_copy(update={"instance": spec.instance.model_copy(update={"pricing": rec.pricing})})
        return rent_new(rec.backend, wanted, state, progress=progress, avoid_machine=rec.avoid_machine)

    if state.instance is None:
        progress(f"renting a replacement for instance {rec.lost_id}")
        try:
            _retrying("renting a replacement", replace, progress)
        except VoltError as e:
            kept = f"; instance {rec.lost_id} is kept (not destroyed)" if any(r.id == rec.lost_id for r in state.retired) else ""
            raise VoltError(f"{e}{kept}; {again}") from None
    elif not state.instance.ready:  # an earlier recover was interrupted while renting
        resume(spec, state, progress)
    assert state.instance is not None
    if rec.rescue_from is not None and not rec.rescued:
        _rescue(state, rec, spec_mod.read(), progress)
        if not rec.rescued and not recovery.plan(lay, local).files and not from_scratch:
            raise VoltError(f"the copy from instance {rec.rescue_from} failed and {local} holds no backup of this campaign: a "
                            f"replacement would train from zero; {again}, or `volt-ansible recover --from-scratch` to accept that")
    plan = recovery.plan(lay, local, state.resume, state.epoch_s, state.instance.dph_total if state.instance else None)
    progress(plan.describe())
    items = recovery.data_items(spec_mod.read().get("volt_data") or {}, plan.pending)
    phase03 = lay.jobs[0].name in plan.pending
    # one playbook (playbooks/recover.yml): prepare, the data, the files from home, the jobs
    extravars: dict = {"stage": "all" if plan.stages(lay) else "none", "phase03": phase03}
    if items:
        extravars |= {"recover_sync": True, "data_sync_items": items}
    if plan.files:
        extravars |= {"recover_restore": True, "backup_local_dir": str(local), "backup_restore_files": plan.files,
                      "backup_restore_epoch_owner": plan.owner, "backup_restore_epoch_owner_path": lay.epoch_owner}
    run_ok("recover", extravars, progress, again)
    state = state_mod.load()
    if rec.rescued and rec.rescue_from is not None:
        _from_copied_disk(plan, lay, state)
        _destroy_rescued(state, rec, progress)
    state.recovery = None
    state_mod.save(state)
    assert state.instance is not None
    return Recovered(rec.lost_id, rec.reason, state.instance, plan, time.monotonic() - t0)
