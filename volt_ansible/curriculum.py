"""The one reading of the job tables: group_vars' volt_phase03 + volt_curriculum, with training_tmux's settings.

Every consumer asks here (the training_tmux role's plan filter, `volt-ansible status/logs/plot` through jobs.layout,
home.required_outputs, recovery, roles/backup through its filter, datasync's guard of what jobs write):

    settings = settings_from(group_vars)            # the role's defaults file + the spec's training_tmux_* overrides
    for job in resolve(group_vars["volt_phase03"], group_vars["volt_curriculum"], settings):
        job["name"], job["kind"], job["argv"], job["inputs"], job["output"], job["epoch"], job["log"], job["status"]

Flag tables (`args`) are flag: value in command-line order; a list repeats the flag, true gives the flag alone,
null or false leaves it out. Every flag's values are read one way (flag_values): the output flag must have
exactly one; an input flag gives every value it lists.

The settings' defaults live only in roles/training_tmux/defaults/main.yml: resolve() takes them as an argument;
code without Ansible's variables reads that file through role_defaults().
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

import yaml

from volt_ansible import logformat, yamlio
from volt_ansible.errors import VoltError

EPOCH_TOKEN = "{epoch}"
SETTINGS = ("dest", "bin_dir", "session", "chain_name", "status_dir", "script_dir", "ready_dir", "ready_suffix",
            "epoch_owner_file", "epoch_archive")
ROLE_DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "roles" / "training_tmux" / "defaults" / "main.yml"


class CurriculumError(VoltError):
    """A job table that cannot be run as written (one line, naming the entry)."""


def role_defaults(path: Path | str = ROLE_DEFAULTS_FILE) -> dict:
    """training_tmux's settings as its defaults file sets them: {setting: value} (without the training_tmux_ prefix)."""
    try:
        raw = yamlio.load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CurriculumError(f"cannot read the training_tmux role's defaults ({path}): {e}") from None
    return {key: raw[f"training_tmux_{key}"] for key in SETTINGS if f"training_tmux_{key}" in raw}


def settings_from(group_vars: dict | None = None, defaults: dict | None = None) -> dict:
    """The role's defaults (role_defaults() unless given), overridden by training_tmux_<setting> values of group_vars."""
    out = dict(role_defaults() if defaults is None else defaults)
    for key in SETTINGS:
        value = (group_vars or {}).get(f"training_tmux_{key}")
        if value is not None and "{{" not in str(value):
            out[key] = value
    return out


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise CurriculumError(msg)


def one_line(value, where: str) -> str:
    """A title, path or pattern that lands in a script's comments, a log line or a status file: no newline or control
    character (a newline would start a new key=value line in a status file). Everything else is quoted where it is used."""
    text = str(value)
    _require(not any(ord(c) < 32 or ord(c) == 127 for c in text), f"{where} must be one line (no newline or control character), got {text!r}")
    return text


def plain_name(value, where: str) -> str:
    name = str(value)
    _require(bool(name) and all(c.isalnum() or c in "-_" for c in name), f"{where} must be a plain name (letters, digits, - or _), got {name!r}")
    return name


def flag_values(args, flag) -> list[str]:
    """Every value of one flag: [] when absent, null, false or true (a flag alone), each item of a list, else [value]."""
    value = args.get(flag) if isinstance(args, dict) and flag else None
    if value is None or value is False or value is True:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]  # quote a number in YAML ("1e-4") to keep its exact spelling


def argv(args, where: str = "args") -> list[str]:
    """Flag table (ordered mapping) -> argv tokens. A list repeats the flag, true gives it alone, null/false drops it."""
    _require(isinstance(args, dict), f"{where} must be a mapping of flag: value, not {type(args).__name__}")
    out: list[str] = []
    for flag, value in args.items():
        flag = str(flag)
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                _require(not (item is None or isinstance(item, dict | list)), f"{where}.{flag}: list items must be plain values, got {item!r}")
                out += [flag, str(item)]
        else:
            _require(not isinstance(value, dict), f"{where}.{flag}: a value must be a string, number, list, true or null, not a mapping")
            out += [flag, str(value)]
    return out


def _settings(settings: dict, check_names: bool) -> dict:
    missing = [k for k in SETTINGS if k != "session" and k not in settings]
    _require(not missing, f"training_tmux settings missing: {', '.join(missing)}")
    s = {key: one_line(value, f"training_tmux_{key}") for key, value in settings.items()}
    if check_names:
        for key in ("chain_name", "session"):
            if key in s:
                plain_name(s[key], f"training_tmux_{key}")
    return s


def _job(defn: dict, args: dict, where: str, kind: dict, s: dict, check_names: bool) -> dict:
    raw_name = defn.get("name", "")
    name = plain_name(raw_name, f"{where}.name") if check_names else one_line(raw_name, f"{where}.name")
    _require(bool(name), f"{where}.name (the job's name) is missing")
    _require(bool(kind.get("bin")), f"{where}: bin (the binary under {s['bin_dir']}) is missing")
    _require(bool(defn.get("log")), f"{where}.log (the job's log file) is missing")
    out_flag = kind.get("output")
    outputs = flag_values(args, out_flag) if out_flag else []
    _require(len(outputs) == 1, f"{where}: the output flag {out_flag!r} must have exactly one value, got {outputs or 'none'}")
    output = one_line(outputs[0], f"{where}: the output ({out_flag})")
    inputs = [one_line(v, f"{where}: input {flag}") for flag in kind.get("inputs", []) for v in flag_values(args, flag)]
    for flag in kind.get("inputs", []):
        _require(bool(flag_values(args, flag)), f"{where}: input flag {flag} has no value (set it in args)")
    tokens = argv(args, f"{where}.args")
    bin_path = posixpath.join(s["bin_dir"], one_line(kind["bin"], f"{where}: bin"))
    batch_flag = one_line(kind["batch_flag"], f"{where}: batch_flag") if kind.get("batch_flag") else None
    batches: list[int] = []
    if batch_flag and flag_values(args, batch_flag):
        first = int(flag_values(args, batch_flag)[0])
        batches = [first] + [int(b) for b in kind.get("oom_batch_sizes", []) if int(b) < first]
    epoch = None
    template = kind.get("epoch_checkpoint")
    if template:
        template = one_line(template, f"{where}: epoch_checkpoint")
        _require(template.count(EPOCH_TOKEN) == 1, f"{where}: epoch_checkpoint must contain {EPOCH_TOKEN} once, got {template!r}")
        stem = posixpath.splitext(posixpath.basename(output))[0]
        prefix, _, suffix = template.partition(EPOCH_TOKEN)
        try:
            prefix, suffix = prefix.format(stem=stem), suffix.format(stem=stem)
        except (KeyError, IndexError, ValueError) as e:
            raise CurriculumError(f"{where}: epoch_checkpoint {template!r} may use only {{stem}} and {EPOCH_TOKEN} ({e})") from None
        _require("/" not in prefix + suffix, f"{where}: epoch_checkpoint is a file name (written next to the output), got {template!r}")
        edir = posixpath.dirname(output) or "."
        epoch = {"dir": edir, "prefix": prefix, "suffix": suffix, "glob": posixpath.join(edir, prefix + "*" + suffix),
                 "owner": posixpath.join(edir, s["epoch_owner_file"]), "archive": posixpath.join(edir, s["epoch_archive"], name)}
    gpu = bool(kind.get("gpu", False))
    try:
        logformat.compile_patterns(kind.get("log_patterns"), where.split(".")[0])  # the table they belong to
    except VoltError as e:
        raise CurriculumError(str(e)) from None
    resume_flag = kind.get("resume_flag", "--resume")
    records = kind.get("input_records") or {}
    _require(isinstance(records, dict) and all(isinstance(f, list) and f and all(isinstance(x, str) for x in f) for f in records.values()),
             f"{where.split('.')[0]}.input_records must map an input flag to the list of fields its records need, got {records!r}")
    return {
        "name": name,
        "title": one_line(defn.get("title", name), f"{where}.title"),
        "kind": "gpu" if gpu else "cpu",
        "gpu": gpu,
        "bin": bin_path,
        "args": dict(args),
        "argv": [bin_path, *tokens],
        "command": shlex.join([bin_path, *tokens]),
        "inputs": inputs,
        "output": output,
        "log": one_line(defn["log"], f"{where}.log"),
        "status": posixpath.join(s["status_dir"], f"{name}.status"),
        "script": posixpath.join(s["script_dir"], f"{name}.sh"),
        "script_path": posixpath.join(s["dest"], s["script_dir"], f"{name}.sh"),
        "ready": posixpath.join(s["ready_dir"], name + s["ready_suffix"]),
        "batch_flag": batch_flag if batches else None,
        "batches": batches,
        "oom_pattern": one_line(kind.get("oom_pattern", ""), f"{where}: oom_pattern") if batches else "",
        "resume_flag": one_line(resume_flag, f"{where}: resume_flag") if epoch and resume_flag else None,
        "cpu_fallback": one_line(kind.get("cpu_fallback_pattern") or "", f"{where}: cpu_fallback_pattern") if gpu else "",
        "log_patterns": dict(kind.get("log_patterns") or {}),
        "records": {str(flag): list(fields) for flag, fields in records.items()},
        "epoch": epoch,
        "previous": None,
        "stage": None,
    }


def resolve(phase03: dict | None, curriculum: dict | None, settings: dict, check_names: bool = True) -> list[dict]:
    """Every job in order (Phase 0.3, then the stages), fully resolved; paths relative to settings['dest'] except
    script_path. A job: name, title, kind (cpu|gpu), gpu, bin, args (its merged flag table), argv, command, inputs,
    output, log, status, script, script_path, ready, batch_flag, batches, oom_pattern, resume_flag (None: never
    resumes), cpu_fallback (fixed text that stops a GPU job; "" for none), log_patterns (the raw regexes),
    records ({input flag: fields each JSONL record of it needs}), epoch ({dir, prefix, suffix, glob, owner, archive}
    or None), previous ({name, output} of the stage before), stage (1-based curriculum index; None for Phase 0.3).
    phase03/curriculum None: that part is absent.

    check_names=False accepts any one-line job name (readers of what is on the instance); the role's launch checks them."""
    s = _settings(settings, check_names)
    jobs: list[dict] = []
    if phase03 is not None:
        _require(isinstance(phase03, dict), "the Phase 0.3 job (volt_phase03) must be a mapping")
        jobs.append(_job(phase03, phase03.get("args") or {}, "volt_phase03", phase03, s, check_names))
    if curriculum is not None:
        _require(isinstance(curriculum, dict), "the curriculum (volt_curriculum) must be a mapping")
        common = curriculum.get("args") or {}
        _require(isinstance(common, dict), "volt_curriculum.args must be a mapping of flag: value")
        stages_in = curriculum.get("stages") or []
        _require(isinstance(stages_in, list) and len(stages_in) > 0, "volt_curriculum.stages must list at least one stage")
        previous = None
        for i, st in enumerate(stages_in, 1):
            where = f"volt_curriculum.stages[{i - 1}]"
            _require(isinstance(st, dict), f"{where} must be a mapping")
            own = st.get("args") or {}
            _require(isinstance(own, dict), f"{where}.args must be a mapping of flag: value")
            merged = dict(common)
            merged.update(own)  # a stage's value replaces the common one in place; new flags go last
            job = _job(st, merged, where, curriculum, s, check_names)
            job["stage"] = i
            if previous:
                job["previous"] = {"name": previous["name"], "output": previous["output"]}
            jobs.append(job)
            previous = job
    names = [j["name"] for j in jobs] + [s["chain_name"]]
    _require(len(set(names)) == len(names), f"job names must be unique: {names}")
    return jobs


def chain(settings: dict) -> dict:
    """The Phase 2.1 chain (one tmux window running the stages in turn): name, status, log, script, script_path."""
    s = {key: str(value) for key, value in settings.items()}
    name = s["chain_name"]
    return {"name": name, "status": posixpath.join(s["status_dir"], f"{name}.status"), "log": posixpath.join(s["status_dir"], f"{name}.log"),
            "script": posixpath.join(s["script_dir"], f"{name}.sh"), "script_path": posixpath.join(s["dest"], s["script_dir"], f"{name}.sh")}


def outputs(jobs: list[dict]) -> list[str]:
    """The jobs' results in job order, each once: what must be home before the instance may go."""
    out: list[str] = []
    for job in jobs:
        if job["output"] not in out:
            out.append(job["output"])
    return out


def backup_jobs(jobs: list[dict], settings: dict) -> list[dict]:
    """What the instance-side backup scan needs of each job: name, output, log, status, and where its epoch
    checkpoints are ({dir, prefix, suffix, owner, archive_dir: <dir>/<epoch_archive>, holding one directory per job})."""
    out = []
    for job in jobs:
        epoch = job["epoch"]
        if epoch:
            epoch = {"dir": epoch["dir"], "prefix": epoch["prefix"], "suffix": epoch["suffix"], "owner": epoch["owner"],
                     "archive_dir": posixpath.join(epoch["dir"], str(settings["epoch_archive"]))}
        out.append({"name": job["name"], "output": job["output"], "log": job["log"], "status": job["status"], "epoch": epoch})
    return out


def job_paths(jobs: list[dict], settings: dict) -> tuple[list[tuple[str, str]], set[str]]:
    """([(path or glob, what it is)], input paths) of the jobs, relative to the repository on the instance: what they
    write (outputs, epoch checkpoints, their archive and owner file, logs, status files, the chain's status and log,
    the script dir) and the binaries; the inputs they read. Paths that are absolute or leave the repository are left out."""
    out: list[tuple[str, str]] = []

    def add(path: str, what: str) -> None:
        path = posixpath.normpath(path)
        if not path.startswith("/") and path != "." and not path.startswith("../"):
            out.append((path, what))

    inputs = {posixpath.normpath(p) for job in jobs for p in job["inputs"]}
    for job in jobs:
        name = job["name"]
        add(job["bin"], f"the binary {posixpath.basename(job['bin'])}")
        add(job["log"], f"the log of job {name}")
        add(job["status"], f"the status of job {name}")
        add(job["output"], f"the output of job {name}")
        if job["epoch"]:
            e = job["epoch"]
            stem, ext = posixpath.splitext(posixpath.basename(job["output"]))
            add(posixpath.join(e["dir"], f"{stem}_epoch_*{ext}"), f"the epoch checkpoints of job {name}")
            add(e["glob"], f"the epoch checkpoints of job {name}")
            add(posixpath.join(e["dir"], str(settings["epoch_archive"])), "the archived epoch checkpoints")
            add(e["owner"], "the epoch checkpoints' owner file")
    c = chain(settings)
    add(c["status"], f"the status of the {c['name']} chain")
    add(c["log"], f"the log of the {c['name']} chain")
    add(str(settings["script_dir"]), "the job scripts")
    return out, inputs
