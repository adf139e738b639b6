"""The campaign's decisions: which offer, when an instance is usable, what to record, when to destroy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from volt_ansible import ledger, notices, reconcile, recovery, rent, ssh
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.errors import VoltError
from volt_ansible.rent import Progress
from volt_ansible.state import Home, Instance, Recovery, State
from volt_ansible.vast import Backend, Vast


def offers(backend: Backend, limit: int | None = None) -> list[dict]:
    spec = spec_mod.load()
    with Vast(backend, state_mod.volt_dir()) as vast:
        found = vast.search(spec.instance, limit)
        if not found:
            raise VoltError(f"no offer matches the spec: {vast.explain_no_match(spec.instance)}")
        return found


def plan(backend: Backend, offer_id: int | None = None) -> rent.Plan:
    spec = spec_mod.load()
    with Vast(backend, state_mod.volt_dir()) as vast:
        return rent.choose(vast, spec, offer_id)


def reconciled(always: bool = True) -> tuple[State, list[str]]:
    """The state after checking it against the account's instances (reconcile.run): always for the commands that talk to
    the API anyway, for the others only while a create is pending. Returns the lines about instances rented elsewhere."""
    state = state_mod.load()
    lines: list[str] = []
    if always or state.creating is not None:
        for backend in sorted(state.backends()):
            with Vast(backend, state_mod.volt_dir()) as vast:  # type: ignore[arg-type]
                lines += reconcile.run(state, vast, notices.say).lines()
    return state, lines


def provision(backend: Backend, offer_id: int | None = None, progress: Progress = rent.quiet) -> Instance:
    spec = spec_mod.load()
    state, _ = reconciled()
    if state.instance is not None and not state.instance.ready:  # adopted after an interrupted create, or a rent cut short
        return rent.resume(spec, state, progress)
    if state.instance is not None:
        raise VoltError(f"instance {state.instance.id} ({state.instance.backend}) is already provisioned: use it, or `volt-ansible destroy` it first")
    return rent.rent(backend, spec, state, project_root(), offer_id, progress)


@dataclass
class Status:
    state: State
    live: dict | None
    cost_usd: float
    elsewhere: list[str]  # this campaign's instances rented from another checkout


def status() -> Status:
    state, elsewhere = reconciled()
    live = None
    if state.instance is not None:
        with Vast(state.instance.backend, state_mod.volt_dir()) as vast:
            live = vast.show(state.instance.id)
        if live is not None and live.get("actual_status") and live["actual_status"] != state.instance.status:
            rent.record(state, status=live["actual_status"])
    return Status(state, live, state.total_cost(), elsewhere)


def _required() -> list[str]:
    from volt_ansible import home

    data = spec_mod.read()
    return home.required_outputs(data.get("volt_phase03"), data.get("volt_curriculum"))


def not_home() -> list[str]:
    """The campaign's outputs (codebook, every stage's) that are not home and verified yet."""
    from volt_ansible import home

    return home.missing(backup_dir(), _required())


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
    import posixpath
    import shlex

    from volt_ansible import jobs

    lay = jobs.layout(project_root())
    archive = str(spec_mod.read().get("training_tmux_epoch_archive") or "epochs")
    q = shlex.quote
    files = [j.output for j in lay.jobs if j.output] + [j.log for j in [*lay.jobs, lay.chain]]
    globs = []
    for d in sorted({posixpath.dirname(j.output) or "." for j in lay.stages if j.output}):
        globs += [f"{q(d)}/{q(lay.epoch_prefix)}*{q(lay.epoch_suffix)}", f"{q(d)}/{q(archive)}/*/{q(lay.epoch_prefix)}*{q(lay.epoch_suffix)}"]
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
    from volt_ansible import home

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
    from volt_ansible import home

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
        with Vast(inst.backend, volt_dir) as vast:
            vast.destroy(inst.id)
        rent.close_ledger(state, inst.id, reason)
        ssh.forget_host(volt_dir, inst.ssh_host, inst.ssh_port)
        if state.instance is not None and state.instance.id == inst.id:
            state.instance = None
        state.retired = [r for r in state.retired if r.id != inst.id]
        if state.instance is None and not state.retired:
            state.recovery = None  # nothing left to recover onto or from
        state_mod.save(state)
        done.append(inst.id)
    return Destroyed(done, missing, newest, note)


def ssh_command(extra: list[str]) -> list[str]:
    from volt_ansible import jobs

    state, _ = reconciled(always=False)
    if state.instance is None or not state.instance.ssh_port:
        raise VoltError("no instance to connect to: run `volt-ansible provision` first")
    jobs.check_host_key(state_mod.volt_dir(), state.instance.ssh_host, state.instance.ssh_port)
    return ssh.command(state_mod.volt_dir(), state.instance.ssh_host, state.instance.ssh_port) + extra


def project_root() -> Path:
    """The directory holding ansible.cfg and group_vars/: the current one (commands run from the project root)."""
    root = Path.cwd()
    if not (root / "ansible.cfg").exists() or not (root / "group_vars").is_dir():
        raise VoltError(f"{root} is not a volt-ansible project (no ansible.cfg + group_vars/): cd to the project root")
    return root


def run_playbook(name: str, extravars: dict | None = None, on_task=None, limit: str | None = None):
    """Run playbooks/<name>.yml (or a path) with the campaign inventory through ansible-runner."""
    from volt_ansible import playbook as pb

    root = project_root()
    reconciled(always=False)
    return pb.run(root, pb.resolve(root, name), state_mod.volt_dir(), extravars or {}, on_task=on_task, limit=limit)


def backup_dir() -> Path:
    from volt_ansible import home

    return home.default_dir(project_root(), spec_mod.load().campaign)


def backup(on_task=None):
    """Pull finished checkpoints, outputs and logs home (playbooks/backup.yml); return the run and what is home."""
    from volt_ansible import home

    local = backup_dir()
    result = run_playbook("backup", {"backup_local_dir": str(local)}, on_task=on_task)
    jobs = spec_mod.read()
    required = home.required_outputs(jobs.get("volt_phase03"), jobs.get("volt_curriculum"))
    return result, home.summary(local, required)


def _instance_endpoint() -> tuple[str, int]:
    state, _ = reconciled(always=False)
    if state.instance is None or not state.instance.ssh_port:
        raise VoltError("no instance: run `volt-ansible provision` first")
    return state.instance.ssh_host, state.instance.ssh_port


def job_lines() -> list[str]:
    """Each training job's state, GPU and CPU load, and warnings, read over one SSH round trip."""
    from volt_ansible import jobs

    return jobs.format_snapshot(job_snapshot())


def logs_command(job: str | None, follow: bool, lines: int, tty: bool) -> list[str]:
    from volt_ansible import jobs

    host, port = _instance_endpoint()
    jobs.check_host_key(state_mod.volt_dir(), host, port)
    return jobs.logs_command(state_mod.volt_dir(), host, port, job=job, follow=follow, lines=lines, lay=jobs.layout(project_root()), tty=tty)


def plot(output: str) -> Path:
    from volt_ansible import jobs
    from volt_ansible import plot as plot_mod

    host, port = _instance_endpoint()
    lay = jobs.layout(project_root())
    return plot_mod.write_png(jobs.fetch_logs(state_mod.volt_dir(), host, port, lay), Path(output), lay)


def job_snapshot():
    from volt_ansible import jobs

    host, port = _instance_endpoint()
    return jobs.snapshot(state_mod.volt_dir(), host, port, jobs.layout(project_root()))


def projection(snap) -> ledger.Projection:
    state = state_mod.load()
    dph = state.instance.dph_total if state.instance else 0.0
    return ledger.Projection(state.total_cost(), ledger.remaining_hours(snap), dph)


def _run_ok(name: str, extravars: dict, progress: Progress, then: str) -> None:
    """Run a playbook; a failure becomes one line naming the task and what to do next."""
    result = run_playbook(name, extravars, on_task=lambda task, n: progress(f"{name} [{n}] {task}"))
    if result.rc != 0:
        f = next((f for f in result.failures if f.host_key), result.failures[0] if result.failures else None)
        if f and f.host_key:  # trying again would not help: the line says what to do
            raise VoltError(f.msg)
        why = f"task '{f.task}' on {f.host}: {f.msg}" if f else f"ansible-playbook exited {result.rc}"
        raise VoltError(f"{name} failed ({why}; log {result.log}); {then}")


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


def health(state: State, vast: Vast) -> tuple[str, dict | None]:
    """(why the instance is lost or "", its API row); records when SSH started failing."""
    inst = state.instance
    assert inst is not None
    live, now = vast.show(inst.id), time.time()
    if live is not None and live.get("actual_status") == "running" and inst.ssh_port:
        ok = ssh.can_login(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port)
        if not ok:  # a changed host key is no outage: say so every round, never rent a replacement over it
            from volt_ansible import jobs

            jobs.check_host_key(state_mod.volt_dir(), inst.ssh_host, inst.ssh_port)
        if ok != (inst.unreachable_since is None):
            rent.record(state, unreachable_since=None if ok else now)
    return recovery.lost_reason(live, state.instance.unreachable_since, spec_mod.load().watch.ssh_dead_s, now), live


@dataclass
class Recovered:
    lost_id: int
    reason: str
    new: Instance
    restore: recovery.Restore
    seconds: float  # from the start of this command to the jobs started again


def recover(from_scratch: bool = False, force: bool = False, progress: Progress = rent.quiet) -> Recovered:
    """Replace a lost instance: rent the same spec, prepare it, send the data the unfinished jobs need, push
    back what is home (finished outputs, the newest verified epoch checkpoint) and resume training."""
    from volt_ansible import jobs

    t0 = time.monotonic()
    root, spec, (state, _) = project_root(), spec_mod.load(), reconciled()
    volt_dir, local = state_mod.volt_dir(), backup_dir()
    lay = jobs.layout(root)
    again = "run `volt-ansible recover` again: it continues where it stopped"
    if state.recovery is None:
        if state.instance is None:
            raise VoltError("no instance is recorded and no recovery is under way: nothing to recover (`volt-ansible provision` starts one)")
        inst = state.instance
        with Vast(inst.backend, volt_dir) as vast:
            reason, live = _retrying(f"reading instance {inst.id}", lambda: health(state, vast), progress)
        if not reason:
            if not force:
                raise VoltError(f"instance {inst.id} is running and answers SSH: nothing to recover (`volt-ansible status` shows its jobs; "
                                "`recover --force` replaces it anyway)")
            reason = "replaced on request (--force)"
        plan = recovery.plan(lay, local)
        if not plan.pending:
            raise VoltError(f"every output is home in {local}: nothing to resume; `volt-ansible finish` destroys instance {inst.id}")
        if not plan.files and not from_scratch:
            raise VoltError(f"instance {inst.id} is lost ({reason}) and {local} holds no backup of this campaign (no output, no epoch "
                            "checkpoint): a replacement would train from zero; run `volt-ansible recover --from-scratch` to accept that")
        progress(f"instance {inst.id} lost: {reason}")
        rent.close_ledger(state, inst.id, f"lost: {reason}")
        if live is not None:  # still in the API: its disk may hold newer files; finish/destroy removes it
            state.retired.append(inst.model_copy(update={"status": live.get("actual_status") or "lost"}))
        ssh.forget_host(volt_dir, inst.ssh_host, inst.ssh_port)
        state.instance = None
        state.recovery = Recovery(reason=reason, backend=inst.backend, lost_id=inst.id)
        state_mod.save(state)
    rec = state.recovery

    def replace() -> Instance:
        if state.instance is not None:  # a half-made replacement that could not be destroyed: never rent over it
            raise _NoRetry(f"instance {state.instance.id} was created but could not be brought up nor destroyed: "
                           "`volt-ansible destroy --force` it, then recover again")
        return rent.rent(rec.backend, spec, state, root, progress=progress)

    if state.instance is None:
        progress(f"renting a replacement for instance {rec.lost_id}")
        try:
            _retrying("renting a replacement", replace, progress)
        except VoltError as e:
            kept = f"; instance {rec.lost_id} is kept (not destroyed)" if any(r.id == rec.lost_id for r in state.retired) else ""
            raise VoltError(f"{e}{kept}; {again}") from None
    elif not state.instance.ready:  # an earlier recover was interrupted while renting
        rent.resume(spec, state, progress)
    plan = recovery.plan(lay, local)
    progress(plan.describe())
    _run_ok("prepare", {}, progress, again)
    items = recovery.data_items(spec_mod.read().get("volt_data") or {}, plan.pending)
    if items:
        _run_ok("sync", {"data_sync_items": items}, progress, again)
    if plan.files:
        _run_ok("restore", {"backup_local_dir": str(local), "backup_restore_files": plan.files, "backup_restore_epoch_owner": plan.owner,
                            "backup_restore_epoch_owner_path": lay.epoch_owner}, progress, again)
    phase03 = lay.jobs[0].name in plan.pending
    _run_ok("train", {"stage": "all" if plan.stages(lay) else "none", "phase03": phase03}, progress, again)
    state = state_mod.load()
    state.recovery = None
    state_mod.save(state)
    assert state.instance is not None
    return Recovered(rec.lost_id, rec.reason, state.instance, plan, time.monotonic() - t0)


@dataclass
class Finished:
    destroyed: list[int]
    lines: list[str]


def _backup_now(progress: Progress, stable_s: int | None = None) -> dict:
    """Run the backup and record what is home in the state; return home.summary."""
    from volt_ansible import home

    extra: dict = {"backup_local_dir": str(backup_dir())}
    if stable_s is not None:
        extra["backup_stable_s"] = stable_s
    _run_ok("backup", extra, progress, "run `volt-ansible backup` to see why; nothing was destroyed")
    summary = home.summary(backup_dir(), _required())
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


def finish(progress: Progress = rent.quiet) -> Finished:
    """Everything home and verified -> destroy the instance (and any kept after a preemption), print the summary."""
    from volt_ansible import home

    state, _ = reconciled()
    if state.instance is None and not state.retired:
        raise VoltError("no instance to finish: nothing is rented (`volt-ansible status`)")
    live = None
    if state.instance is not None:
        with Vast(state.instance.backend, state_mod.volt_dir()) as vast:
            live = vast.show(state.instance.id)
    if live is not None and live.get("actual_status") == "running":
        running = [j.name for j in job_snapshot().jobs if j.state in ("running", "waiting", "queued")]
        if running:
            raise VoltError(f"still running: {', '.join(running)}; finish once they are done (`volt-ansible watch` does it automatically)")
        _backup_now(progress, stable_s=0)  # nothing is being written: take the last files now
    local = backup_dir()
    missing = [p for p in _required() if not home.is_home(local, p, verify=True)]
    if missing:
        raise VoltError(f"not finished: {', '.join(missing)} not home and verified in {local}; nothing was destroyed "
                        "(`volt-ansible status` shows the jobs; `volt-ansible recover` after a preemption)")
    gone = destroy(reason="finished")
    state = state_mod.load()
    hours = sum(((e.ended_at or time.time()) - e.started_at) / 3600 for e in state.ledger)
    files = home.load(local)["files"]
    lines = [f"campaign {state.campaign} finished: instance(s) {', '.join(map(str, gone.ids))} destroyed",
             f"{len(state.ledger)} instance(s) rented, {hours:.2f} h billed, cost ${state.total_cost():.4f}",
             *(f"home: {p} ({files[p]['size'] / 1e6:.1f} MB, {files[p]['digest'][:19]}...)" for p in _required()),
             f"everything is in {local} (home.json lists each file with its digest)"]
    return Finished(gone.ids, lines)


@dataclass
class Round:
    lines: list[str]
    done: str = ""  # why watch stops; "" to go on


def watch_round(auto_recover: bool, auto_finish: bool, interval_min: float, progress: Progress = rent.quiet) -> Round:
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
    with Vast(inst.backend, state_mod.volt_dir()) as vast:
        try:
            reason, _ = health(state, vast)
        except VoltError as e:
            return Round([f"warning: {e} (checked again next round)"])
    if reason:
        if not auto_recover:
            return Round([f"instance {inst.id} is lost ({reason}): run `volt-ansible recover`"], done="auto recovery is off")
        return _recover_round(progress)
    if state_mod.load().instance.unreachable_since is not None:
        return Round([f"warning: instance {inst.id} is running but SSH fails (lost after volt_watch.ssh_dead_s = {spec.watch.ssh_dead_s:g} s)"])
    try:
        snap = job_snapshot()
    except VoltError as e:
        return Round([f"warning: reading the jobs failed: {e}"])
    from volt_ansible import jobs

    out += jobs.format_snapshot(snap)
    all_done = all(j.state == "done" for j in snap.jobs)
    home_at = state.home.at if state.home else 0.0
    if all_done or time.time() - home_at >= interval_min * 60:
        try:
            s = _backup_now(progress, stable_s=0 if all_done else None)  # all done: nothing is being written
            out.append(f"backup: {s['files']} file(s) home, {s['bytes'] / 1e6:.1f} MB; missing: {', '.join(s['missing']) or 'nothing'}")
        except VoltError as e:
            out.append(f"warning: {e}")
    proj = projection(snap)
    out.append(proj.line())
    over = ledger.over_budget(proj, spec.watch.budget_usd)
    if over:
        _backup_now(progress)  # files still being written stay out: a torn checkpoint must never count as home
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


def _recover_round(progress: Progress) -> Round:
    """A recovery inside watch: a failure is reported and tried again next round, never the end of watch."""
    try:
        r = recover(progress=progress)
    except VoltError as e:
        return Round([f"warning: recovery failed: {e}"])
    return Round([f"recovered: instance {r.new.id} replaces {r.lost_id} ({r.reason}) in {r.seconds:.0f} s; {r.restore.describe()}"])


def watch(auto_recover: bool, auto_finish: bool, interval_min: float | None = None, once: bool = False, progress: Progress = rent.quiet):
    """Rounds of watch_round, every volt_watch.poll_s, until the campaign is finished or stopped (or once)."""
    w = spec_mod.load().watch
    interval = interval_min if interval_min is not None else w.backup_interval_min
    while True:
        r = watch_round(auto_recover, auto_finish, interval, progress)
        yield r
        if r.done or once:
            return
        time.sleep(w.poll_s)


@dataclass
class UpPlan:
    instance: Instance | None  # already rented: `up` continues on it
    offer: dict | None
    dph: float
    data: object  # datasync.Report of the jobs to run
    first_bytes: int  # what the first GPU job needs
    estimate_s: float

    def lines(self) -> list[str]:
        from volt_ansible.datasync import human

        if self.instance is not None:
            head = f"continuing on instance {self.instance.id} ({self.instance.gpu_name}, ${self.instance.dph_total:.3f}/h): nothing new is rented"
        else:
            o = self.offer or {}
            head = (f"rent offer {o.get('id')}: {o.get('num_gpus')}x {o.get('gpu_name')}, {o.get('cpu_cores')} cores, "
                    f"${self.dph:.3f}/h = ${self.dph * 24:.2f}/day")
        return [head, f"data: {human(self.data.total_bytes)} to check and send if missing ({human(self.first_bytes)} before the first GPU job)",
                f"estimated time to GPU busy: ~{self.estimate_s / 60:.1f} min (the build and the first job's data in parallel)"]


def _selected_jobs(stage: str, phase03: bool) -> tuple[list[str], str]:
    """(job names `up` runs, the first curriculum job's name or "")."""
    from volt_ansible import jobs

    lay = jobs.layout(project_root())
    stages = lay.stages if stage == "all" else ([] if stage == "none" else [lay.stages[int(stage) - 1]])
    names = ([lay.jobs[0].name] if phase03 else []) + [j.name for j in stages]
    return names, stages[0].name if stages else ""


def up_plan(backend: Backend, stage: str, phase03: bool, progress: Progress = rent.quiet) -> UpPlan:
    """Pre-flight the data (before renting anything) and say what `up` would rent, move and when the GPU is busy."""
    from volt_ansible import datasync

    stage = str(stage).lower()
    spec, (state, _) = spec_mod.load(), reconciled()
    lay_stages = spec_mod.read().get("volt_curriculum", {}).get("stages") or []
    if stage not in ("all", "none", *map(str, range(1, len(lay_stages) + 1))):
        raise VoltError(f"--stage {stage!r} is not a stage: use all, none or 1..{len(lay_stages)} (volt_curriculum.stages)")
    if stage == "none" and not phase03:
        raise VoltError("--stage none with --no-phase03 runs nothing: drop one of them")
    if state.recovery is not None:
        raise VoltError(f"a recovery is under way ({state.recovery.reason}): run `volt-ansible recover`, which continues it")
    if state.stopped:
        raise VoltError(f"this campaign was stopped ({state.stopped}): move {state_mod.path()} aside to start a new one")
    names, first = _selected_jobs(stage, phase03)
    local_root = None
    if (state.instance.backend if state.instance else backend) == "local":
        from volt_ansible.local.world import World

        local_root = World(project_root(), state_mod.volt_dir() / "local").publish_data()
    report = datasync.check(jobs=names, local_root=local_root,
                            progress=lambda done, total: progress(f"hashing data: {done / 1e9:.2f} / {total / 1e9:.2f} GB"))
    first_bytes = report.job_bytes().get(first or names[0], 0)
    offer, dph = None, 0.0
    if state.instance is None:
        chosen = plan(backend)
        offer, dph = chosen.offer, chosen.dph
    mbps = float((offer or {}).get("inet_down") or 100.0)
    build_s = spec.provision.build_estimate_min * 60
    estimate = max(build_s, first_bytes * 8 / (mbps * 1e6)) + 60  # + renting, bootstrap, toolchain
    return UpPlan(state.instance, offer, dph, report, first_bytes, estimate)


def up(backend: Backend, stage: str, phase03: bool, progress: Progress = rent.quiet, on_task=None):
    """Rent (unless this campaign already has an instance), then playbooks/up.yml: data, build and CUDA check
    in parallel, each job started as soon as it can. Safe to interrupt and run again: it continues."""
    state = state_mod.load()
    if state.instance is None:
        provision(backend, progress=progress)
    elif not state.instance.ready:  # an earlier `up` was interrupted while renting
        rent.resume(spec_mod.load(), state, progress)
    return run_playbook("up", {"stage": str(stage).lower(), "phase03": phase03}, on_task=on_task)


def data_track() -> str:
    """The background transfer's progress for `up`'s display ("" before it started)."""
    from volt_ansible import datasync

    state = state_mod.load()
    if state.instance is None:
        return ""
    path = state_mod.volt_dir() / "data-sync" / f"volt-{state.instance.id}.json"
    if not path.exists():
        return ""
    st = datasync.status(path, None)
    return f"{st['state']}: {st['summary']}" if st.get("summary") else st["state"]
