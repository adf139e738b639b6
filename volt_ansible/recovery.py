"""After a preemption: is the instance lost, and what goes back onto its replacement."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from volt_ansible import home
from volt_ansible.backends.base import DEAD_STATUSES, is_paused
from volt_ansible.jobs import Layout
from volt_ansible.rent import bid_down, bid_up


def lost_reason(live: dict | None, unreachable_since: float | None, ssh_replace_s: float, now: float) -> str:
    """Why the instance counts as lost ("" while it does not): exited/offline/gone in the API, or SSH dead for
    ssh_replace_s while the API still says it runs. A shorter SSH silence is no loss: Vast's SSH proxies fail while the
    instance trains on, and a replacement rented over one would bill two GPUs and train twice (watch warns instead)."""
    if live is None:
        return "gone from the Vast API"
    status = live.get("actual_status")
    if status in DEAD_STATUSES:
        return f"{status} in the Vast API ({live.get('status_msg') or 'no message'})"
    if unreachable_since is not None and now - unreachable_since >= ssh_replace_s:
        return f"SSH has failed for {now - unreachable_since:.0f} s while the Vast API says {status} (volt_watch.ssh_replace_s = {ssh_replace_s:g})"
    return ""


def next_bid(current: float, winning: float | None, margin: float, cap: float) -> float | None:
    """The bid that should win the machine back: the lowest winning bid the API shows plus the margin, at least a margin
    above the current bid, at most the cap; None when the current bid is at the cap already."""
    if current >= cap:
        return None
    want = max(current * (1 + margin), (winning or 0.0) * (1 + margin))
    return min(cap, bid_up(want))


def rescue_source(live: dict | None) -> str:
    """Whether a lost instance's disk can fill its replacement host to host (copy_direct needs no SSH of ours): "paused"
    (stopped in the API, its disk kept), "running" (the API says it runs: SSH silent past ssh_replace_s, or replaced on
    request; it bills its GPU on, so it is destroyed once the replacement runs), "" (exited, offline, gone: home
    provides)."""
    if is_paused(live):
        return "paused"
    if live is not None and live.get("actual_status") == "running":
        return "running"
    return ""


def bid_within_budget(spent_usd: float, remaining_h: float | None, budget_usd: float | None) -> float | None:
    """The highest $/h the rest of the curriculum can run at and end within the budget (rounded down to 1/100 cent); None
    when there is no budget, or no timed epoch yet to say how many hours are left."""
    if budget_usd is None or not remaining_h:
        return None
    return max(0.0, bid_down((budget_usd - spent_usd) / remaining_h))


def silence_warning(instance_id: int, unreachable_since: float, ssh_dead_s: float, ssh_replace_s: float, now: float) -> str:
    """watch's line for an instance the API says runs while SSH fails: louder after ssh_dead_s, never a rent before ssh_replace_s."""
    for_s = now - unreachable_since
    head = f"warning: instance {instance_id} runs in the Vast API but SSH has failed for {for_s:.0f} s"
    if for_s < ssh_dead_s:
        return f"{head} (checked again next round)"
    return (f"{head}: nothing is rented over it while the API says it runs (a replacement after volt_watch.ssh_replace_s = "
            f"{ssh_replace_s:g} s); check it at https://cloud.vast.ai/instances/; `volt-ansible recover --force` replaces it now")


@dataclass
class Restore:
    """What a replacement instance gets from home, and which jobs it still has to run."""

    files: list[dict] = field(default_factory=list)  # {path (under the backup dir), dest (under the repo), digest "<algo>:<hex>"}
    pending: list[str] = field(default_factory=list)  # jobs whose output is not home, in spec order
    owner: str = ""  # the stage whose newest epoch checkpoint is restored
    resume_epoch: int | None = None
    epoch_dest: str = ""  # where the restored epoch checkpoint goes (training_tmux's live epoch name)
    restart: str = ""  # the stage that restarts from epoch 1 (its binary cannot resume), and what that costs

    def stages(self, lay: Layout) -> list[str]:
        return [j.name for j in lay.stages if j.name in self.pending]

    def describe(self) -> str:
        done = [f["dest"] for f in self.files if f["dest"] != self.epoch_dest]
        resume = f"{self.owner} resumes from epoch {self.resume_epoch}" if self.owner else (self.restart or "no epoch checkpoint to resume from")
        return f"to run: {', '.join(self.pending) or 'nothing'}; {resume}; outputs pushed back: {', '.join(done) or 'none'}"


def restart_cost(stage: str, binary: str, flag: str, epochs: int, epoch_s: float | None, dph: float | None) -> str:
    """One line: a stage that cannot resume restarts from epoch 1, and the work done before that is trained again."""
    cost = f"{epochs} finished epoch(s)"
    if epoch_s:
        hours = epochs * epoch_s / 3600
        cost += f", ~{hours:.2f} GPU-hours" + (f" (~${hours * dph:.2f})" if dph else "")
    return f"{stage} restarts from epoch 1 ({binary} has no {flag} in its --help): {cost} trained again"


def plan(lay: Layout, local_dir: Path, resume: dict[str, bool] | None = None, epoch_s: dict[str, float] | None = None,
         dph: float | None = None) -> Restore:
    """From home.json: every finished job's output goes back (a chained stage is skipped only when its output
    exists), the first unfinished stage resumes from its newest verified epoch checkpoint, put where that stage's
    epoch checkpoints live (the layout's jobs: volt_ansible.curriculum). Digests go as home.json records them
    (their algorithm named), so the instance verifies each with the same algorithm.

    resume: {job: its binary can resume} as recorded from the binaries' --help. A stage known not to resume gets no
    epoch checkpoint (it would be bytes sent for nothing): it restarts from epoch 1, and `restart` says what that
    costs (epoch_s: its epoch time seen, dph: the price). Not known: the checkpoint goes, the job decides at launch."""
    local_dir = Path(local_dir).absolute()
    files = home.load(local_dir)["files"]
    out = Restore()
    for job in lay.jobs:
        if job.output and home.is_home(local_dir, job.output, verify=True):
            entry = files[job.output]
            out.files.append({"path": job.output, "dest": entry.get("src") or job.output, "digest": entry["digest"]})
        else:
            out.pending.append(job.name)
    stages = out.stages(lay)
    if stages:
        newest = home.newest_epoch_checkpoint(local_dir, job=stages[0], verify=True)
        job = lay.job(stages[0])
        if newest and job.epoch and (resume or {}).get(job.name) is False:
            out.restart = restart_cost(job.name, posixpath.basename(job.bin), job.resume_flag or "resume option", newest[0],
                                       (epoch_s or {}).get(job.name), dph)
        elif newest and job.epoch:
            epoch, path = newest
            rel = str(path.relative_to(local_dir))
            e = job.epoch
            out.epoch_dest = posixpath.join(e["dir"], f"{e['prefix']}{epoch}{e['suffix']}")
            out.files.append({"path": rel, "dest": out.epoch_dest, "digest": files[rel]["digest"]})
            out.owner, out.resume_epoch = stages[0], epoch
    return out


def data_items(volt_data: dict, pending: list[str]) -> list[dict]:
    """The enabled data items some pending job reads: a replacement gets nothing a finished job needed."""
    return [i for i in (volt_data or {}).get("items") or [] if i.get("enabled", True) and set(i.get("jobs") or []) & set(pending)]
