"""The training inputs' record format, checked before renting: a JSONL input of a flag that its job table lists in
`input_records` ({flag: [field, ...]}, group_vars) must have those fields, or the binary fails on the instance after
renting (train-vfn: `Failed to parse JSON at line 1: missing field ...` for every file, then exit 1; codebook-init:
every record skipped, then `collected only 0 vectors`). The first record of each file is read: enough to catch data
in another format, cheap on files of tens of GB."""

from __future__ import annotations

import json
import os
import posixpath

from volt_ansible import curriculum

MAX_LINE = 64 << 20  # a first record longer than this is not read (and not judged)


def required(jobs_spec: dict) -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """{input path on the instance: [(job, binary, flag, fields)]} of every flag with input_records."""
    p03, cur = jobs_spec.get("volt_phase03"), jobs_spec.get("volt_curriculum")
    out: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    for job in curriculum.resolve(p03, cur, curriculum.settings_from(jobs_spec), check_names=False):
        for flag, fields in job["records"].items():
            for value in curriculum.flag_values(job["args"], flag):
                out.setdefault(posixpath.normpath(value), []).append((job["name"], posixpath.basename(job["bin"]), flag, fields))
    return out


def first_record(path: str) -> dict | str:
    """The first non-blank line of a JSONL file, parsed; or why it cannot be read as a record (a short text)."""
    with open(path, "rb") as f:
        for raw in iter(lambda: f.readline(MAX_LINE), b""):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n") and len(raw) >= MAX_LINE:
                return ""  # too long to judge here: left to the binary
            try:
                rec = json.loads(raw)
            except ValueError as e:
                return f"its first record is not JSON ({e})"
            return rec if isinstance(rec, dict) else f"its first record is not a JSON object ({type(rec).__name__})"
    return "it has no record"


def problems(items: list, jobs_spec: dict) -> list[str]:
    """One line per data item whose records lack a field a job's binary requires (items: datasync Items, enabled)."""
    need = required(jobs_spec)
    out = []
    for it in items:
        reqs = need.get(posixpath.normpath(it.dest))
        if not reqs:
            continue
        files = [it.src] if it.kind == "file" else sorted(
            os.path.join(d, f) for d, _, names in os.walk(it.src) for f in names if f.endswith(".jsonl"))[:1]
        for path in files:
            rec = first_record(path)
            for job, binary, flag, fields in reqs:
                if isinstance(rec, str):
                    if rec:
                        out.append(f"data item {it.name} ({path}): {rec}, but {binary} {flag} (job {job}) reads JSONL records with "
                                   f"{', '.join(fields)}: fix the file")
                    continue
                missing = [f for f in fields if f not in rec]
                if missing:
                    have = ", ".join(sorted(rec)) or "no field"
                    out.append(f"data item {it.name} ({path}): its records have no {', '.join(missing)} (they have {have}); "
                               f"{binary} {flag} (job {job}) needs {', '.join(fields)} in each: convert the data "
                               f"(or fix input_records in group_vars/all.yml)")
                    break
    return out
