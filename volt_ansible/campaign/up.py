"""`up`: the data checked and the plan shown before anything is rented, then the rent and playbooks/up.yml, which
runs the data transfer, the build and the CUDA check in parallel and starts each job as soon as it can."""

from __future__ import annotations

from dataclasses import dataclass

from volt_ansible import backends, datasync, jobs
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.campaign.context import Progress, project_root, quiet, reconciled, run_playbook
from volt_ansible.campaign.provision import plan, provision, resume
from volt_ansible.datasync import human
from volt_ansible.errors import VoltError
from volt_ansible.state import Instance


def check(names: list[str] | None = None, progress: Progress = quiet) -> datasync.Report:
    """Pre-flight of the data sources, before renting: every one exists and is readable; sizes and digests cached."""
    return datasync.check(jobs=names or None, progress=lambda done, total: progress(f"{done / 1e9:.2f} / {total / 1e9:.2f} GB"))


@dataclass
class UpPlan:
    instance: Instance | None  # already rented: `up` continues on it
    offer: dict | None
    dph: float
    data: object  # datasync.Report of the jobs to run
    first_bytes: int  # what the first GPU job needs
    estimate_s: float
    resume: str = ""  # what a lost instance costs the stages: resume from the newest epoch, or restart them
    pricing: str = ""  # interruptible: the bid, the on-demand price, the projected saving

    def lines(self) -> list[str]:
        if self.instance is not None:
            head = f"continuing on instance {self.instance.id} ({self.instance.gpu_name}, ${self.instance.dph_total:.3f}/h): nothing new is rented"
        else:
            o = self.offer or {}
            head = (f"rent offer {o.get('id')}: {o.get('num_gpus')}x {o.get('gpu_name')}, {o.get('cpu_cores')} cores, "
                    f"${self.dph:.3f}/h = ${self.dph * 24:.2f}/day")
        return [head, f"data: {human(self.data.total_bytes)} to check and send if missing ({human(self.first_bytes)} before the first GPU job)",
                f"estimated time to GPU busy: ~{self.estimate_s / 60:.1f} min (the build and the first job's data in parallel)",
                *([self.pricing] if self.pricing else []), *([self.resume] if self.resume else [])]


def resume_line(stages: list[jobs.JobDef], known: dict[str, bool], epoch_s: dict[str, float], interruptible: bool) -> str:
    """One line for the plan: can the stages resume after a preemption (their binary's --help, recorded once read)?"""
    stages = [j for j in stages if j.epoch]
    if not stages:
        return ""
    binary, flag = stages[0].bin.rsplit("/", 1)[-1], stages[0].resume_flag or "resume option"
    if all(known.get(s.name) for s in stages):
        return f"resume: {binary} takes {flag}: a lost instance costs at most the epoch in progress"
    cost = f"up to {max(s.epochs or 0 for s in stages)} epochs"
    timed = [(s.epochs or 0) * epoch_s[s.name] / 3600 for s in stages if s.name in epoch_s]
    if timed:
        cost += f" (~{max(timed):.1f} GPU-hours)"
    why = (f"{binary} has no {flag} (its --help)" if any(known.get(s.name) is False for s in stages)
           else f"{binary}'s --help is read after the build (Volt-X's train-vfn at main has no {flag})")
    line = f"resume: {why}: without it a lost instance restarts its stage from epoch 1, {cost} trained again"
    if interruptible:
        line += "; pricing interruptible: expect that repeated work after every preemption"
    return line


def _selected_jobs(stage: str, phase03: bool) -> tuple[list[str], str]:
    """(job names `up` runs, the first curriculum job's name or "")."""
    lay = jobs.layout(project_root())
    stages = lay.stages if stage == "all" else ([] if stage == "none" else [lay.stages[int(stage) - 1]])
    names = ([lay.jobs[0].name] if phase03 else []) + [j.name for j in stages]
    return names, stages[0].name if stages else ""


def up_plan(backend: str, stage: str, phase03: bool, progress: Progress = quiet) -> UpPlan:
    """Pre-flight the data (before renting anything) and say what `up` would rent, move and when the GPU is busy."""
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
    local_root = backends.kind(state.instance.backend if state.instance else backend).data_root(project_root(), state_mod.volt_dir())
    report = datasync.check(jobs=names, local_root=local_root,
                            progress=lambda done, total: progress(f"hashing data: {done / 1e9:.2f} / {total / 1e9:.2f} GB"))
    first_bytes = report.job_bytes().get(first or names[0], 0)
    offer, dph, pricing = None, 0.0, ""
    if state.instance is None:
        chosen = plan(backend)
        offer, dph, pricing = chosen.offer, chosen.dph, chosen.pricing
    mbps = float((offer or {}).get("inet_down") or 100.0)
    build_s = spec.provision.build_estimate_min * 60
    estimate = max(build_s, first_bytes * 8 / (mbps * 1e6)) + 60  # + renting, bootstrap, toolchain
    lay = jobs.layout(project_root())
    chosen_stages = [j for j in lay.stages if j.name in names]
    resume = resume_line(chosen_stages, state.resume, state.epoch_s, spec.instance.pricing == "interruptible")
    return UpPlan(state.instance, offer, dph, report, first_bytes, estimate, resume, pricing)


def up(backend: str, stage: str, phase03: bool, progress: Progress = quiet, on_task=None):
    """Rent (unless this campaign already has an instance), then playbooks/up.yml: data, build and CUDA check
    in parallel, each job started as soon as it can. Safe to interrupt and run again: it continues."""
    state = state_mod.load()
    if state.instance is None:
        provision(backend, progress=progress)
    elif not state.instance.ready:  # an earlier `up` was interrupted while renting
        resume(spec_mod.load(), state, progress)
    return run_playbook("up", {"stage": str(stage).lower(), "phase03": phase03}, on_task=on_task)
