"""Decisions of the training_tmux role, kept here so they are plain Python and unit-testable.

    training_tmux_plan     the group_vars job tables + the role's knobs -> every job, fully resolved
                           (argv, inputs, output, log, status file, ready marker, epoch checkpoints, batch ladder)
    training_tmux_decide   plan + the instance's probe + the request (stage, phase03, force, GPU fact)
                           -> what to start, what to report, and every problem that stops the launch
    training_tmux_argv     one job's flag table -> argv tokens (flag: value / list repeats / true alone / null out)

The job tables are read by volt_ansible.curriculum (the one resolver every consumer shares); this file adds what
only the launch needs: the chain, the launcher, training_tmux_env, and the decisions.

Job names are the data_sync contract: phase03, stage1, stage2, ... (<ready_dir>/<job>.ready).
"""

from __future__ import annotations

import posixpath
import re

from volt_ansible import curriculum

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported outside Ansible (unit tests)
    AnsibleFilterError = ValueError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a shell accepts after `export` (fullmatch)
# The keys of a job in the plan (volt_ansible.curriculum resolves more: kind, args, stage).
PLAN_KEYS = ("name", "title", "gpu", "bin", "argv", "command", "inputs", "output", "log", "status", "script", "script_path", "ready",
             "batch_flag", "batches", "oom_pattern", "cpu_fallback", "resume_flag", "epoch", "previous")


def training_tmux_argv(args, where: str = "args") -> list[str]:
    """Flag table (ordered mapping) -> argv tokens. A list repeats the flag, true gives it alone, null/false drops it."""
    try:
        return curriculum.argv(args, where)
    except curriculum.CurriculumError as e:
        raise AnsibleFilterError(str(e)) from None


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise AnsibleFilterError(f"training_tmux: {msg}")


def _env(env) -> list[list[str]]:
    """training_tmux_env -> [[name, value]]: each name is checked, since it is written unquoted after `export`."""
    _require(isinstance(env, dict), f"training_tmux_env must be a mapping of NAME: value, not {type(env).__name__}")
    for key in env:
        _require(isinstance(key, str) and bool(ENV_NAME.fullmatch(key)),
                 f"training_tmux_env key {key!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*): rename it")
    return [[key, str(value)] for key, value in env.items()]


def training_tmux_plan(phase03: dict, curriculum_table: dict, settings: dict, env=None) -> dict:
    """The group_vars tables + knobs (+ training_tmux_env) -> {'phase03': job, 'stages': [job, ...], 'chain': {...},
    'launcher': path, 'dirs': [path], 'env': [[name, value]]} (job paths relative to dest)."""
    _require(isinstance(phase03, dict), "the Phase 0.3 job (volt_phase03) must be a mapping")
    _require(isinstance(curriculum_table, dict), "the curriculum (volt_curriculum) must be a mapping")
    try:
        jobs = curriculum.resolve(phase03, curriculum_table, settings)
    except curriculum.CurriculumError as e:
        raise AnsibleFilterError(f"training_tmux: {e}") from None
    p03, *stages = [{key: job[key] for key in PLAN_KEYS} | ({"index": job["stage"]} if job["stage"] else {}) for job in jobs]
    s = {key: str(value) for key, value in settings.items()}
    launcher = posixpath.join(s["dest"], s["script_dir"], "launch.sh")
    dirs = [posixpath.join(s["dest"], s["script_dir"]), posixpath.join(s["dest"], s["status_dir"])]
    return {"phase03": p03, "stages": stages, "chain": curriculum.chain(settings), "launcher": launcher, "dirs": dirs, "env": _env(env or {})}


def training_tmux_probe_job(job: dict) -> dict:
    """What files/probe.py needs to know about one job (or the chain)."""
    return {
        "name": job["name"],
        "status": job["status"],
        "script": job["script_path"],
        "output": job.get("output"),
        "bin": job.get("bin"),
        "needs": [job["bin"], *job["inputs"], job["ready"]] if "bin" in job else [],
        "previous_output": (job.get("previous") or {}).get("output"),
        "epoch": job.get("epoch"),
    }


def _done(job: dict, probe: dict) -> bool:
    """Finished: its output exists and its status says done (or there is no status: the output came from elsewhere)."""
    state = (probe.get("status") or {}).get("state", "")
    return bool(probe.get("output")) and state in ("done", "")


def _since(probe: dict) -> str:
    st = probe.get("status") or {}
    return f"pid {st.get('pid', '?')}, since {st.get('started', '?')}"


def _needs(job: dict, probe: dict, gpu, require_gpu: bool, require_ready: bool, alone: bool) -> list[str]:
    """Everything missing before this job may start (the guide's Step 3, per job)."""
    missing = set(probe.get("missing") or [])
    out = []
    if job["bin"] in missing:
        out.append(f"{job['bin']} is missing or not executable (build it: playbooks/prepare.yml)")
    out += [f"{p} is missing" for p in job["inputs"] if p in missing]
    if require_ready and job["ready"] in missing:
        out.append(f"{job['ready']} is missing (data_sync has not verified {job['name']}'s inputs)")
    if alone and job.get("previous") and not probe.get("previous_output"):
        prev = job["previous"]
        out.append(f"{prev['output']} ({prev['name']}'s output) is missing: run {prev['name']} first, or -e stage=all")
    if job["gpu"] and require_gpu:
        count = int((gpu or {}).get("count", 0) or 0) if isinstance(gpu, dict) else 0
        if count < 1:
            out.append("no GPU visible (cuda_check_gpu reports none: run the cuda_check role first, as playbooks/train.yml does)")
    epochs, owner = probe.get("epochs") or [], probe.get("owner") or ""
    if job.get("epoch") and epochs and owner and owner != job["name"]:
        out.append(f"{job['epoch']['glob']} ({len(epochs)} files, newest epoch {max(epochs)}) belong to {owner} "
                   f"({job['epoch']['owner']}), not {job['name']}: finish {owner} first or move them away")
    return [f"{job['name']}: {m}" for m in out]


def training_tmux_decide(plan: dict, probe: dict, stage, phase03: bool, force: bool, gpu=None,
                         require_gpu: bool = True, require_ready: bool = True, session: str = "training") -> dict:
    """What to do now: {'start': [unit], 'report': [line], 'problems': [line]}. A unit is one tmux window."""
    jobs = probe.get("jobs") or {}
    problems: list[str] = []
    if not probe.get("dest"):
        problems.append(f"{probe.get('dest_path', 'the repository')} does not exist (run playbooks/prepare.yml first)")
    if not probe.get("tmux"):
        problems.append("tmux is not installed (the bootstrap role installs it)")
    start, report = [], []

    def state_of(name: str) -> dict:
        return jobs.get(name) or {}

    if phase03:
        job = plan["phase03"]
        pr = state_of(job["name"])
        if pr.get("alive"):
            report.append(f"{job['name']}: running ({_since(pr)}): not started again")
        elif _done(job, pr) and not force:
            report.append(f"{job['name']}: done ({job['output']} exists): not repeated (-e force=true runs it again)")
        else:
            problems += _needs(job, pr, gpu, require_gpu, require_ready, alone=True)
            start.append({"window": job["name"], "script": job["script_path"], "args": [], "status": job["status"],
                          "jobs": [job["name"]], "log": job["log"]})
            report.append(f"{job['name']}: started in tmux window {session}:{job['name']} (log {job['log']})")

    stage = str(stage).strip().lower()
    if stage != "none":
        stages = plan["stages"]
        targets = stages if stage == "all" else [stages[int(stage) - 1]]
        chain = plan["chain"]
        alive = [j["name"] for j in stages if state_of(j["name"]).get("alive")]
        if state_of(chain["name"]).get("alive") or alive:
            who = f"{chain['name']} chain ({_since(state_of(chain['name']))})" if state_of(chain["name"]).get("alive") else ""
            now = ", ".join(f"{n} ({_since(state_of(n))})" for n in alive)
            report.append(f"phase 2.1: running: {' / '.join(x for x in (who, now) if x)}: nothing started again")
        else:
            pending = [j for j in targets if force or not _done(j, state_of(j["name"]))]
            for j in targets:
                if j not in pending:
                    report.append(f"{j['name']}: done ({j['output']} exists): not repeated (-e force=true runs it again)")
            if pending:
                first = pending[0]
                # alone: stage N without the chain needs N-1's output; in a chain the first pending stage's
                # predecessor is done (or it would be pending), later ones are waited for by the chain script.
                problems += _needs(first, state_of(first["name"]), gpu, require_gpu, require_ready, alone=True)
                if stage == "all":
                    start.append({"window": chain["name"], "script": chain["script_path"], "args": ["--force"] if force else [],
                                  "status": chain["status"], "jobs": [j["name"] for j in pending], "log": first["log"]})
                    report.append(f"phase 2.1: chain {' -> '.join(j['name'] for j in pending)} started in tmux window "
                                  f"{session}:{chain['name']} (logs {', '.join(j['log'] for j in pending)})")
                else:
                    start.append({"window": first["name"], "script": first["script_path"], "args": [], "status": first["status"],
                                  "jobs": [first["name"]], "log": first["log"]})
                    report.append(f"{first['name']}: started in tmux window {session}:{first['name']} (log {first['log']})")
    if problems:
        start = []
    # The GPU's job first: each launch waits training_tmux_start_grace_s to see its job live, and the GPU is what bills
    # (Phase 0.3 runs on the CPU for hours; seconds later changes nothing for it).
    start.sort(key=lambda unit: unit["window"] == plan["phase03"]["name"])
    return {"start": start, "report": report, "problems": problems}


class FilterModule:
    def filters(self):
        return {
            "training_tmux_argv": training_tmux_argv,
            "training_tmux_plan": training_tmux_plan,
            "training_tmux_decide": training_tmux_decide,
            "training_tmux_probe_job": training_tmux_probe_job,
        }
