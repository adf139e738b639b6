"""What to watch on the instance: the training jobs of group_vars/all.yml (volt_phase03, volt_curriculum) as
volt_ansible.curriculum resolves them and roles/training_tmux runs them, with the paths and log formats to read."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from volt_ansible import curriculum, logformat, yamlio
from volt_ansible.errors import VoltError

HELP_DIR = ".volt-help"   # roles/repo_build's repo_build_help_dir: each binary's --help, saved after the build


@dataclass
class JobDef:
    name: str
    title: str
    log: str
    status: str
    output: str
    script: str                 # absolute path of the job's script (its process is `bash <script>`)
    gpu: bool
    stage: int | None = None    # 1-based curriculum index; None for Phase 0.3
    epochs: int | None = None   # the configured --epochs, when the job has epoch checkpoints
    epoch: dict | None = None   # where its epoch checkpoints are (volt_ansible.curriculum: dir, prefix, suffix, glob, owner, archive)
    bin: str = ""               # the binary, relative to dest
    help: str = ""              # its --help output as saved after the build (roles/repo_build)
    patterns: dict = field(default_factory=dict)  # compiled log_patterns (volt_ansible.logformat)
    oom_pattern: str = ""
    cpu_fallback: str = ""      # fixed text of the binary's "falling back to CPU" line ("" for a CPU job)
    resume_flag: str | None = None


@dataclass
class Layout:
    dest: str
    session: str
    jobs: list[JobDef]
    chain: JobDef
    epoch_owner: str = "checkpoints/.volt-epochs"
    epoch_archive: str = "epochs"  # a finished job's epoch checkpoints: <its epoch dir>/<epoch_archive>/<job>/

    def job(self, name: str) -> JobDef:
        for j in [*self.jobs, self.chain]:
            if j.name == name:
                return j
        raise KeyError(name)

    @property
    def stages(self) -> list[JobDef]:
        return [j for j in self.jobs if j.stage is not None]


def layout_from(group_vars: dict, settings: dict | None = None) -> Layout:
    """The jobs and paths to watch, from group_vars (volt_phase03, volt_curriculum, training_tmux_* overrides) and
    training_tmux's settings (default: the role's defaults file, volt_ansible.curriculum.role_defaults)."""
    s = curriculum.settings_from(group_vars, settings)
    try:
        p03, cur = group_vars["volt_phase03"], group_vars["volt_curriculum"]
        cur["stages"]
    except (KeyError, TypeError) as e:
        raise VoltError(f"group_vars/all.yml has no training jobs ({e} missing): add volt_phase03 and volt_curriculum") from None
    resolved = curriculum.resolve(p03, cur, s, check_names=False)
    help_dir = str(group_vars.get("repo_build_help_dir") or HELP_DIR)
    jobs = []
    for j in resolved:
        epochs = curriculum.flag_values(j["args"], "--epochs")[:1] if j["epoch"] else []
        table = "volt_phase03" if j["stage"] is None else "volt_curriculum"
        bin_dir, bin_name = posixpath.split(j["bin"])
        jobs.append(JobDef(j["name"], j["title"], j["log"], j["status"], j["output"], j["script_path"], j["gpu"], j["stage"],
                           int(epochs[0]) if epochs and epochs[0].isdigit() else None, j["epoch"], j["bin"],
                           posixpath.join(bin_dir, help_dir, f"{bin_name}.txt"), logformat.compile_patterns(j["log_patterns"], table),
                           j["oom_pattern"], j["cpu_fallback"], j["resume_flag"]))
    c = curriculum.chain(s)
    chain = JobDef(c["name"], "Phase 2.1 chain", c["log"], c["status"], "", c["script_path"], False)
    lay = Layout(str(s["dest"]), str(s["session"]), jobs, chain, epoch_archive=str(s["epoch_archive"]))
    epoch = next((j.epoch for j in jobs if j.epoch), None)
    if epoch:
        lay.epoch_owner = epoch["owner"]
    return lay


def epoch_number(job: JobDef, path: str) -> int | None:
    """The epoch of one of the job's epoch checkpoint files (any directory), else None."""
    if not job.epoch:
        return None
    m = re.fullmatch(re.escape(job.epoch["prefix"]) + r"(\d+)" + re.escape(job.epoch["suffix"]), posixpath.basename(path))
    return int(m[1]) if m else None


def help_lists(help_text: str, flag: str) -> bool:
    """Whether a --help text names this flag as an option (a whole token: --resume, [--resume PATH], --resume=PATH)."""
    return flag in re.split(r"[\s\[\](){}<>|,=]+", help_text)


def layout(root: Path | None = None) -> Layout:
    """layout_from(group_vars/all.yml of the project at root)."""
    root = root or Path.cwd()
    gv = root / "group_vars" / "all.yml"
    try:
        data = yamlio.load(gv.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise VoltError(f"cannot read {gv}: {e}: run from the project root") from None
    return layout_from(data)


def resolve_job(lay: Layout, job: str) -> JobDef:
    """A job by name (phase03, stage1), stage number (1), log name (phase21_stage1) or the chain's name."""
    j = str(job).strip()
    for d in [*lay.jobs, lay.chain]:
        if j in (d.name, Path(d.log).stem) or (d.stage is not None and j == str(d.stage)):
            return d
    names = ", ".join([d.name for d in lay.jobs] + [lay.chain.name])
    raise VoltError(f"no job {job!r}: choose one of {names} (or a stage number)")
