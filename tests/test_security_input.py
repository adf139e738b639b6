"""Issue 13, bad input: data dests that would wipe finished work, misspelt spec keys, curriculum values the binaries
cannot parse. Each is refused before renting, with one line naming the value and the fix."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from volt_ansible import datasync, spec
from volt_ansible.errors import VoltError

DEFAULTS = yaml.safe_load((REPO / "group_vars/all.yml").read_text())


def with_item(index: int = -1, **changes) -> dict:
    """The shipped spec with one volt_data item changed (default: the_stack_full, a dir item)."""
    data = copy.deepcopy(DEFAULTS)
    data["volt_data"]["items"][index].update(changes)
    return data


def refused(data: dict) -> str:
    with pytest.raises(VoltError) as e:
        datasync.parse_manifest(data["volt_data"], data)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- part 4: a data destination can wipe finished work ------------------------------------------------------------


@pytest.mark.parametrize("dest", [".", "./"])
def test_dest_that_is_the_repository_itself_is_refused(dest):
    msg = refused(with_item(dest=dest))
    assert msg.startswith(f"volt_data.items[10] (the_stack_full).dest = {dest!r} is root_remote itself (/root/volt-x)")
    assert "e.g. data/the_stack_full" in msg


@pytest.mark.parametrize("dest", ["/root/volt-x/data/stack", "data/../stack", "data/./stack"])
def test_absolute_or_dotted_dest_is_refused(dest):
    msg = refused(with_item(dest=dest))
    assert msg == (f"volt_data.items[10] (the_stack_full).dest = {dest!r}: must be a path relative to root_remote (/root/volt-x) "
                   "without . or .. parts, e.g. data/x.jsonl")


@pytest.mark.parametrize(
    ("dest", "names"),
    [
        ("checkpoints/", "contains the output of job phase03 (checkpoints/codebook_code.bin)"),
        ("logs", "contains the log of job phase03 (logs/phase03.log)"),
        ("checkpoints/epochs/stage1/", "is inside the archived epoch checkpoints (checkpoints/epochs)"),
        ("target/", "contains the binary codebook-init (target/release/codebook-init)"),
        ("checkpoints/scaled_vfn_stage1_epoch_2.safetensors", "is inside the epoch checkpoints of job stage1"),
    ],
)
def test_dir_dest_overlapping_what_the_jobs_write_is_refused(dest, names):
    msg = refused(with_item(dest=dest))
    assert msg.startswith(f"volt_data.items[10] (the_stack_full).dest = {dest.rstrip('/') + '/'!r} {names}"), msg
    assert "rsync --delete" in msg and "e.g. data/the_stack_full/" in msg


def test_file_dest_onto_an_output_is_refused_onto_an_input_is_fine():
    msg = refused(with_item(kind="file", dest="checkpoints/codebook_code.bin"))
    assert msg.startswith("volt_data.items[10] (the_stack_full).dest = 'checkpoints/codebook_code.bin' would overwrite the output "
                          "of job phase03"), msg
    m = datasync.parse_manifest(DEFAULTS["volt_data"], DEFAULTS)  # every shipped file item lands on a job's input
    assert {i.dest for i in m.items if i.kind == "file"} >= {"checkpoints/code_tokenizer.json", "data/python_sample.jsonl"}
    ok = with_item(dest="data/the_stack_full/")
    assert datasync.parse_manifest(ok["volt_data"], ok).items[-1].dest == "data/the_stack_full"


def test_check_refuses_a_wiping_dest_before_reading_any_data(project, tmp_path):
    items = copy.deepcopy(DEFAULTS["volt_data"]["items"])
    items[-1]["dest"] = "checkpoints"
    project.spec(volt_data={"items": items, "local_root": str(tmp_path / "no-data-here")})
    proc = project.cli("check", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert "volt_data.items[10] (the_stack_full).dest = 'checkpoints/' contains the output of job phase03" in line


def test_the_roles_plan_refuses_it_too():
    """`volt-ansible run sync` / `up`: roles/data_sync runs `python -m volt_ansible.datasync plan` with the job tables beside volt_data."""
    data = with_item(dest="logs/")
    request = {"volt_data": data["volt_data"], "jobs": {"volt_phase03": data["volt_phase03"], "volt_curriculum": data["volt_curriculum"]}}
    proc = subprocess.run([sys.executable, "-m", "volt_ansible.datasync", "plan", "--volt-dir", "/nonexistent"],
                          input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("volt_data.items[10] (the_stack_full).dest = 'logs/' contains the log of job phase03")
    preflight = (REPO / "roles/data_sync/tasks/preflight.yml").read_text()
    assert "'jobs': {'volt_phase03': volt_phase03" in preflight  # what the role sends


# --- part 7: misspelt keys --------------------------------------------------------------------------------------------


def test_misspelt_key_is_named_with_the_likely_one_before_the_missing_one():
    data = copy.deepcopy(DEFAULTS)
    data["volt_instance"]["cpu_ram_gb_minimum"] = data["volt_instance"].pop("cpu_ram_gb_min")
    with pytest.raises(VoltError) as e:
        spec.parse(data, "all.yml")
    assert str(e.value) == "all.yml: unknown key `volt_instance.cpu_ram_gb_minimum` (did you mean `cpu_ram_gb_min`?)"


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("volt_provision", "ssh_timeout", "unknown key `volt_provision.ssh_timeout` (did you mean `ssh_timeout_s`?)"),
        ("volt_watch", "auto_recovery", "unknown key `volt_watch.auto_recovery` (did you mean `auto_recover`?)"),
        (None, "volt_instanse", "unknown key `volt_instanse` (did you mean `volt_instance`?)"),
        (None, "volt_curiculum", "unknown key `volt_curiculum` (did you mean `volt_curriculum`?)"),
    ],
)
def test_unknown_keys_anywhere_python_reads(section, key, expected):
    data = copy.deepcopy(DEFAULTS)
    (data[section] if section else data)[key] = 1
    with pytest.raises(VoltError) as e:
        spec.parse(data, "all.yml")
    assert str(e.value) == "all.yml: " + expected


def test_provision_refuses_a_misspelt_key_before_renting(project):
    data = yaml.safe_load((project.root / "group_vars/all.yml").read_text())
    data["volt_instance"]["dph_maximum"] = data["volt_instance"].pop("dph_max")
    (project.root / "group_vars/all.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    proc = project.cli("provision", "--backend", "local", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: group_vars/all.yml: unknown key `volt_instance.dph_maximum` (did you mean `dph_max`?)"


# --- part 7: curriculum values the binaries cannot parse --------------------------------------------------------------


def bad_job(where: str, flag: str, value) -> dict:
    data = copy.deepcopy(DEFAULTS)
    if where == "phase03":
        data["volt_phase03"]["args"][flag] = value
    elif where == "common":
        data["volt_curriculum"]["args"][flag] = value
    else:
        data["volt_curriculum"]["stages"][int(where)]["args"][flag] = value
    return data


@pytest.mark.parametrize(
    ("where", "flag", "value", "expected"),
    [
        ("0", "--lr", "fast", "job stage1: --lr = 'fast' is not float (a number (e.g. 1e-4 or 0.0001)), the binary cannot parse it: "
                              "fix volt_curriculum.stages[0].args.--lr"),
        ("common", "--epochs", "ten", "job stage1: --epochs = 'ten' is not uint (a whole number >= 0 (e.g. 10)), the binary cannot "
                                      "parse it: fix volt_curriculum.args.--epochs"),
        ("2", "--batch-size", 3.5, "job stage3: --batch-size = 3.5 is not uint"),
        ("1", "--warmup", -5, "job stage2: --warmup = -5 is not uint"),
        ("phase03", "--k", "64k", "job phase03: --k = '64k' is not uint (a whole number >= 0 (e.g. 10)), the binary cannot parse it: "
                                  "fix volt_phase03.args.--k"),
        ("1", "--lr", True, "job stage2: --lr = true (the flag alone) is not float"),
    ],
)
def test_numeric_flags_must_parse(where, flag, value, expected):
    with pytest.raises(VoltError) as e:
        spec.parse(bad_job(where, flag, value), "all.yml")
    assert str(e.value).startswith("all.yml: " + expected), str(e.value)


def test_numbers_the_binaries_accept_pass():
    data = copy.deepcopy(DEFAULTS)
    data["volt_curriculum"]["stages"][0]["args"].update({"--lr": 0.0001, "--epochs": "12", "--warmup": 0})
    data["volt_curriculum"]["stages"][1]["args"]["--lr"] = "5E-5"
    data["volt_curriculum"]["args"]["--batch-size"] = 16
    assert spec.parse(data).campaign == DEFAULTS["volt_campaign"]
    data["volt_curriculum"]["numeric_flags"]["--lr"] = "double"
    with pytest.raises(VoltError, match=r"volt_curriculum.numeric_flags.--lr = 'double': use one of uint, int, float"):
        spec.parse(data)


def test_shipped_spec_declares_the_binaries_numeric_flags():
    assert DEFAULTS["volt_curriculum"]["numeric_flags"] == {"--epochs": "uint", "--batch-size": "uint", "--lr": "float", "--warmup": "uint",
                                                           "--hidden-dim": "uint", "--num-blocks": "uint"}
    assert DEFAULTS["volt_phase03"]["numeric_flags"] == {"--max-files": "uint", "--k": "uint"}


@pytest.mark.parametrize("command", [["check"], ["provision", "--backend", "local", "--plan"], ["up", "--backend", "local", "--yes"]])
def test_check_provision_and_up_refuse_a_bad_rate_before_renting(project, command):
    data = yaml.safe_load((project.root / "group_vars/all.yml").read_text())
    data["volt_curriculum"]["stages"][1]["args"]["--lr"] = "fast"
    (project.root / "group_vars/all.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    proc = project.cli(*command, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: group_vars/all.yml: job stage2: --lr = 'fast' is not float (a number (e.g. 1e-4 or 0.0001)), "
                                   "the binary cannot parse it: fix volt_curriculum.stages[1].args.--lr")
    assert not (project.volt_dir / "state.json").exists()  # nothing rented
