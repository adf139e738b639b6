"""volt_ansible.curriculum: the one reading of the job tables, and every consumer agreeing with it."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from volt_ansible import curriculum, home, jobs
from volt_ansible.curriculum import CurriculumError

GV = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
DEFAULTS = yaml.safe_load((REPO / "roles/training_tmux/defaults/main.yml").read_text())
S = curriculum.settings_from(GV)


def resolve(p03=None, cur=None, settings=None, **kw):
    return curriculum.resolve(GV["volt_phase03"] if p03 is None else p03, GV["volt_curriculum"] if cur is None else cur,
                              settings or S, **kw)


def test_settings_come_from_the_role_defaults_file_and_the_spec_overrides_them():
    assert curriculum.role_defaults() == {k: DEFAULTS[f"training_tmux_{k}"] for k in curriculum.SETTINGS}
    moved = curriculum.settings_from({**GV, "training_tmux_status_dir": "state", "training_tmux_dest": "/data/x"})
    assert (moved["status_dir"], moved["dest"], moved["bin_dir"]) == ("state", "/data/x", DEFAULTS["training_tmux_bin_dir"])
    assert curriculum.settings_from({"training_tmux_dest": "{{ other }}"})["dest"] == DEFAULTS["training_tmux_dest"]  # Jinja is not ours
    with pytest.raises(CurriculumError, match="cannot read the training_tmux role's defaults"):
        curriculum.role_defaults(REPO / "no-such.yml")


def test_jobs_in_order_with_kind_argv_inputs_output_epochs_log_status():
    got = resolve()
    assert [(j["name"], j["kind"], j["stage"]) for j in got] == [("phase03", "cpu", None), ("stage1", "gpu", 1), ("stage2", "gpu", 2),
                                                                ("stage3", "gpu", 3)]
    p03, s1, s2, s3 = got
    assert p03["argv"][:3] == ["target/release/codebook-init", "--corpus", "data/python_sample.jsonl"]
    assert (p03["output"], p03["epoch"], p03["log"], p03["status"]) == ("checkpoints/codebook_code.bin", None, "logs/phase03.log",
                                                                          "logs/phase03.status")
    # a multi-valued input flag: every value, in order, in argv and in inputs alike
    data = ["data/code_training_combined.jsonl", "data/apps_introductory_train.jsonl", "data/apps_interview_train.jsonl"]
    assert s2["inputs"][:3] == data and [s2["argv"][i + 1] for i, t in enumerate(s2["argv"]) if t == "--data"] == data
    assert s3["epoch"] == {"dir": "checkpoints", "prefix": "scaled_vfn_epoch_", "suffix": ".safetensors",
                           "glob": "checkpoints/scaled_vfn_epoch_*.safetensors", "owner": "checkpoints/.volt-epochs",
                           "archive": "checkpoints/epochs/stage3"}
    assert s1["epoch"]["glob"] == "checkpoints/scaled_vfn_stage1_epoch_*.safetensors"  # {stem} of stage 1's own --output
    assert [(j["resume_flag"], j["cpu_fallback"]) for j in got] == [(None, "")] + [("--resume", "falling back to CPU")] * 3
    assert s1["previous"] is None and s3["previous"] == {"name": "stage2", "output": "checkpoints/scaled_vfn_stage2.safetensors"}
    assert s1["args"]["--lr"] == "1e-4" and s1["args"]["--epochs"] == 10  # the merged table: common args, the stage's over them
    assert curriculum.outputs(got) == ["checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors",
                                       "checkpoints/scaled_vfn_stage2.safetensors", "checkpoints/scaled_vfn.safetensors"]


@pytest.mark.parametrize(("change", "message"), [
    ({"epoch_checkpoint": "{stem}_epoch.safetensors"}, "epoch_checkpoint must contain {epoch} once"),
    ({"epoch_checkpoint": "{name}_epoch_{epoch}.safetensors"}, "may use only {stem} and {epoch}"),
    ({"epoch_checkpoint": "old/{stem}_{epoch}.safetensors"}, "is a file name"),
    ({"log_patterns": {"progress": "Step (\\d+)"}}, "volt_curriculum.log_patterns.progress = .* has no named group"),
    ({"log_patterns": {"progress": "Step (?P<step>"}}, "volt_curriculum.log_patterns.progress = .* is not a valid regex"),
    ({"log_patterns": {"speed": "x"}}, "volt_curriculum.log_patterns.speed is not a known pattern"),
])
def test_a_bad_epoch_name_or_log_pattern_is_one_line_naming_it(change, message):
    with pytest.raises(CurriculumError, match=message):
        resolve(cur={**GV["volt_curriculum"], **change})


def test_without_a_resume_flag_no_job_resumes():
    got = resolve(cur={**GV["volt_curriculum"], "resume_flag": None})
    assert [j["resume_flag"] for j in got] == [None] * 4 and all(j["epoch"] for j in got[1:])


def test_flag_values_one_way():
    args = {"--a": ["x", 1], "--b": "y", "--c": True, "--d": None, "--e": False, "--f": 0.5}
    assert [curriculum.flag_values(args, f) for f in ("--a", "--b", "--c", "--d", "--e", "--f", "--none")] == [
        ["x", "1"], ["y"], [], [], [], ["0.5"], []]
    assert curriculum.argv(args) == ["--a", "x", "--a", "1", "--b", "y", "--c", "--f", "0.5"]


def test_an_output_flag_with_several_values_is_refused_everywhere():
    """The tables were read four ways: a one-item list counted as the output in some, not in others. Now: exactly one value."""
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["stages"][0]["args"]["--output"] = ["checkpoints/a.safetensors"]
    assert resolve(cur=cur)[1]["output"] == "checkpoints/a.safetensors"
    assert home.required_outputs(GV["volt_phase03"], cur)[1] == "checkpoints/a.safetensors"
    assert jobs.layout_from({**GV, "volt_curriculum": cur}).job("stage1").output == "checkpoints/a.safetensors"
    cur["stages"][0]["args"]["--output"] = ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]
    msg = r"volt_curriculum.stages\[0\]: the output flag '--output' must have exactly one value"
    with pytest.raises(CurriculumError, match=msg):
        resolve(cur=cur)
    with pytest.raises(CurriculumError, match=msg):
        home.required_outputs(GV["volt_phase03"], cur)
    with pytest.raises(CurriculumError, match=msg):
        jobs.layout_from({**GV, "volt_curriculum": cur})


def test_names_are_checked_for_the_launch_and_only_one_line_for_readers():
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["stages"][0]["name"] = "s 1"
    with pytest.raises(CurriculumError, match=r"volt_curriculum.stages\[0\].name must be a plain name"):
        resolve(cur=cur)
    assert resolve(cur=cur, check_names=False)[1]["status"] == "logs/s 1.status"
    cur["stages"][0]["name"] = "s\n1"
    with pytest.raises(CurriculumError, match="must be one line"):
        resolve(cur=cur, check_names=False)
    with pytest.raises(CurriculumError, match="training_tmux settings missing: script_dir"):
        curriculum.resolve(GV["volt_phase03"], GV["volt_curriculum"], {k: v for k, v in S.items() if k != "script_dir"})


def test_absent_tables_resolve_to_no_jobs():
    assert curriculum.resolve(None, None, S) == [] and home.required_outputs(None, None) == []
    assert [j["name"] for j in curriculum.resolve(GV["volt_phase03"], None, S)] == ["phase03"]


def test_layout_is_the_resolved_jobs():
    lay = jobs.layout_from(GV)
    resolved = resolve()
    assert [(j.name, j.output, j.log, j.status, j.gpu, j.stage, j.epoch) for j in lay.jobs] == [
        (j["name"], j["output"], j["log"], j["status"], j["gpu"], j["stage"], j["epoch"]) for j in resolved]
    assert [j.script for j in lay.jobs] == [j["script_path"] for j in resolved]
    assert (lay.chain.status, lay.chain.log, lay.chain.script) == ("logs/phase21.status", "logs/phase21.log", "/root/volt-x/.volt-train/phase21.sh")
    assert (lay.epoch_owner, lay.epoch_archive) == ("checkpoints/.volt-epochs", "epochs")
    # each stage's epoch files are named after its own --output (the real train-vfn: <output stem>_epoch_<e>)
    assert [(j.epoch["prefix"], j.epoch["suffix"]) for j in lay.stages] == [
        ("scaled_vfn_stage1_epoch_", ".safetensors"), ("scaled_vfn_stage2_epoch_", ".safetensors"), ("scaled_vfn_epoch_", ".safetensors")]
    assert jobs.epoch_number(lay.job("stage1"), "x/scaled_vfn_stage1_epoch_12.safetensors") == 12
    assert jobs.epoch_number(lay.job("stage1"), "checkpoints/scaled_vfn_epoch_12.safetensors") is None  # stage 3's, not stage 1's
    assert [(j.bin, j.help) for j in lay.stages[:1]] == [("target/release/train-vfn", "target/release/.volt-help/train-vfn.txt")]


def test_job_paths_what_the_jobs_read_and_write():
    guarded, inputs = curriculum.job_paths(resolve(), S)
    paths = {p for p, _ in guarded}
    assert paths == {"target/release/codebook-init", "target/release/train-vfn", ".volt-train", "logs/phase21.status", "logs/phase21.log",
                     "checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors", "checkpoints/scaled_vfn_stage2.safetensors",
                     "checkpoints/scaled_vfn.safetensors", "checkpoints/scaled_vfn_epoch_*.safetensors",
                     "checkpoints/scaled_vfn_stage1_epoch_*.safetensors", "checkpoints/scaled_vfn_stage2_epoch_*.safetensors",
                     "checkpoints/epochs", "checkpoints/.volt-epochs", "logs/phase03.log", "logs/phase21_stage1.log", "logs/phase21_stage2.log",
                     "logs/phase21_stage3.log", "logs/phase03.status", "logs/stage1.status", "logs/stage2.status", "logs/stage3.status"}
    assert ("checkpoints/codebook_code.bin", "the output of job phase03") in guarded
    assert inputs == {"data/python_sample.jsonl", "checkpoints/code_tokenizer.json", "checkpoints/code_encoder.safetensors",
                      "checkpoints/code_decoder.safetensors", "data/code_training_combined.jsonl", "data/apps_introductory_train.jsonl",
                      "data/apps_interview_train.jsonl", "data/apps_competition_train.jsonl"}
    p03 = copy.deepcopy(GV["volt_phase03"])
    p03["args"]["--output"] = "/abs/codebook.bin"  # not the repository's: not guarded
    assert "/abs/codebook.bin" not in {p for p, _ in curriculum.job_paths(resolve(p03=p03), S)[0]}
